"""The contract every backend keeps: plan / launch / poll / stop / cancel / logs, plus the reaper's listing.

`plan` is pure (an offer and a spec in, a LaunchPlan out: golden-testable). The others talk to one
place (a subprocess, a provider API). Every instance a backend creates carries a label with our
project's id, the job id and the attempt number (LABEL_PREFIX + project + job id + attempt) so the
reaper finds the instances its project owns and no live attempt does, and leaves other projects' alone.

Success is never read from a provider's status alone: a finished instance is SUCCEEDED only when the
job's DONE marker exists at its output URI (`done_marker_exists`), PREEMPTED when the provider took it
away (spot), and FAILED with the exit code otherwise.
"""
from __future__ import annotations

import enum
import json
import re
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from jobs.protocol import ATTEMPT_ENV, SPEC_ENV
from planner.config import Settings
from pricing.offer import Offer

LABEL_PREFIX = "planner-"
PROJECT_ID = re.compile(r"p[0-9a-f]{8}")  # planner.records.Project.id, as migration 0008 makes it
DEFAULT_IMAGE = Settings.model_fields["job_image"].default  # one default: PLANNER_JOB_IMAGE's


class Scope(enum.Enum):
    """What a failed launch rules out."""

    OFFER = "offer"  # this offer for a while: the job is placed again on the next candidate
    JOB = "job"  # the job: retrying anywhere sends the same bad request
    BACKEND = "backend"  # every launch on this backend until the account is put right


class BackendError(RuntimeError):
    """A backend call failed; the message is one line, secret-free, and says what to do.

    A plain BackendError from `launch` is provider weather: the offer cools down and the job is
    placed again. Two subclasses say more (the supervisor reads `scope`):
    """

    scope = Scope.OFFER


class NoCapacity(BackendError):
    """The provider has no box for this offer now (RunPod 400/403, a Vast host that no longer fits):
    the next candidate, through the failed-launch cool-down."""


class RequestRejected(BackendError):
    """The provider refused our request as malformed (RunPod 422: a field it does not know). Our bug,
    not weather: retrying elsewhere sends the same request; fail the job with this message."""

    scope = Scope.JOB


class OutOfFunds(BackendError):
    """The account cannot pay (RunPod 402): no launch on this backend can succeed until it is topped
    up; stop launching there and say so."""

    scope = Scope.BACKEND


class KeyRejected(BackendError):
    """The provider refused the API key (revoked, rotated, mistyped): nothing launches on this backend until
    the key is fixed; stop launching there and say so."""

    scope = Scope.BACKEND


class Status(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"
    LOST = "lost"


@dataclass(frozen=True)
class PollResult:
    status: Status
    exit_code: int | None = None
    detail: str | None = None  # one line: why, for the attempt record
    billed_usd_per_hour: float | None = None  # what the provider says it bills now (RunPod pod.cost, Vast dph)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one attempt, decided before any API call."""

    backend: str
    job_id: str
    attempt: int
    spot: bool
    usd_per_hour: float  # for the whole instance; for spot, the bid, because the bid is what is paid
    command: tuple[str, ...]  # run on the box, e.g. ("python", "-m", "jobs.run")
    env: dict[str, str]  # non-secret: the spec JSON, job id, attempt number
    offer: Offer | None = None
    image: str = DEFAULT_IMAGE
    setup: tuple[str, ...] = ()  # shell lines run before `command` on a fresh box, idempotent
    disk_gb: float = 50.0
    request: dict[str, Any] = field(default_factory=dict)  # the provider-side request body, as sent
    # The storage credentials the box needs (planner.run.credentials): added to the box's environment
    # only in the request a backend sends, never in `request`, `env`, a repr, a log line or the database.
    secret_env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    project: str = ""  # the project the instance belongs to (its label says so)

    @property
    def label(self) -> str:
        return instance_label(self.job_id, self.attempt, self.project)

    def box_env(self) -> dict[str, str]:
        """The box's whole environment as a backend sends it at launch: `env` plus `secret_env`."""
        return {**self.env, **self.secret_env}

    def shell_script(self) -> str:
        """The setup lines, then `exec` of the command (so it receives the container's signals), as one
        `sh -c` script for container start commands."""
        return " && ".join([*self.setup, "exec " + shlex.join(self.command)])


@dataclass(frozen=True)
class Handle:
    backend: str
    instance_id: str
    label: str
    # JSON-serializable, stored with the attempt. Cloud backends put there "output_uri", "spot",
    # "usd_per_hour" (what the attempt is recorded at) and "billed_usd_per_hour" (the rate the provider
    # said it bills at create: RunPod pod.cost, Vast dph_total; None when it said nothing)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_attempt(cls, attempt) -> Handle:
        """The handle an attempt row stored (planner.records.Attempt.handle), its columns filling gaps."""
        raw = json.loads(attempt.handle or "{}")
        return cls(backend=raw.get("backend", attempt.backend), instance_id=raw.get("instance_id", attempt.instance_id),
                   label=raw.get("label", ""), data=raw.get("data", {}))

    def to_json(self) -> str:
        """What an attempt row stores; `from_attempt` reads it back."""
        return json.dumps({"backend": self.backend, "instance_id": self.instance_id, "label": self.label,
                           "data": self.data})


def attempt_env(spec, attempt: int) -> dict[str, str]:
    """What every attempt's process gets in its environment: the spec (jobs.run reads it), no secrets."""
    return {SPEC_ENV: spec.to_json(), "PLANNER_JOB_ID": spec.job_id, ATTEMPT_ENV: str(attempt)}


def instance_label(job_id: str, attempt: int, project: str = "") -> str:
    """planner-PROJECT-JOB-aN; without a project (a plan made outside a supervisor) planner-JOB-aN, the form
    labels had before projects carried an identity."""
    return f"{LABEL_PREFIX}{project + '-' if project else ''}{job_id}-a{attempt}"


@dataclass(frozen=True)
class Label:
    project: str | None  # None: a label written before projects had an identity
    job_id: str
    attempt: int


def parse_label(label: str) -> Label | None:
    """A label we wrote, taken apart; None for anyone else's instance."""
    if not label or not label.startswith(LABEL_PREFIX) or "-a" not in label:
        return None
    rest = label[len(LABEL_PREFIX):]
    head, dash, tail = rest.partition("-")
    project = head if dash and PROJECT_ID.fullmatch(head) else None
    job_id, _, attempt = (tail if project else rest).rpartition("-a")
    return Label(project, job_id, int(attempt)) if attempt.isdigit() and job_id else None


def job_of_label(label: str) -> tuple[str, int] | None:
    """(job id, attempt) from a label we wrote, None for anyone else's instance."""
    parsed = parse_label(label)
    return None if parsed is None else (parsed.job_id, parsed.attempt)


class Backend(ABC):
    name: str
    billing_seconds: int = 1  # the provider's billing granularity, for the cost of an attempt
    project: str = ""  # whose instances it labels (planner.records.Project.id): the supervisor sets it

    # Optional: `follow_logs(handle, stop: threading.Event, tail: int = 100) -> Iterator[str]`, the last
    # `tail` lines then each new one, until `stop` is set (planner.run.logs.follow). None: followed by
    # polling `logs`.
    follow_logs = None

    @abstractmethod
    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float,
             disk_gb: float | None = None, max_hours: float | None = None) -> LaunchPlan:
        """Pure: the spec (jobs.spec.JobSpec) on this offer, as this attempt. `disk_gb` is the job's
        disk need (planner.plan.estimate.Needs.disk_gb, kept in the job's requirements); None: the
        backend's default. `max_hours` is the longest the attempt may run: its reservation (worst-case
        dollars at `usd_per_hour`); None: not known."""

    @abstractmethod
    def launch(self, plan: LaunchPlan) -> Handle: ...

    @abstractmethod
    def poll(self, handle: Handle) -> PollResult: ...

    @abstractmethod
    def cancel(self, handle: Handle) -> None:
        """Terminate the instance; succeeds quietly when it is already gone."""

    def stop(self, handle: Handle) -> bool:
        """Ask the attempt's job to stop gracefully: its processes get SIGTERM, so a checkpointing job saves
        and exits 75 (jobs.protocol); the instance itself is not deleted (a stopped cloud box still bills its
        disk: `cancel` ends it once the job has exited). True when the stop was sent; False where this backend
        has no graceful path (the caller then cancels at once), which is the default."""
        return False

    @abstractmethod
    def logs(self, handle: Handle, tail: int = 200) -> str: ...

    @abstractmethod
    def list_labeled(self) -> list[Handle]:
        """Every live instance carrying one of our labels (for the reaper)."""

    def reported(self, label: str, output_uri: str) -> PollResult | None:
        """How the attempt labelled `label` ended, from the report its box left, for an instance no listing shows
        any more (a cloud box reports, then deletes itself); None while there is none, and where this backend's
        boxes leave no report (the default)."""
        return None
