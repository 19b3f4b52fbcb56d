"""The contract every backend keeps: plan / launch / poll / cancel / logs, plus the reaper's listing.

`plan` is pure (an offer and a spec in, a LaunchPlan out: golden-testable). The others talk to one
place (a subprocess, a provider API). Every instance a backend creates carries a label with our job
id (LABEL_PREFIX + job id + attempt number) so the reaper can find instances nobody owns.

Success is never read from a provider's status alone: a finished instance is SUCCEEDED only when the
job's DONE marker exists at its output URI (`done_marker_exists`), PREEMPTED when the provider took it
away (spot), and FAILED with the exit code otherwise.
"""
from __future__ import annotations

import enum
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from jobs.spec import SPEC_ENV
from pricing.offer import Offer

LABEL_PREFIX = "planner-"
RESUMABLE_EXIT = 75  # EX_TEMPFAIL: the runner checkpointed (or kept its last checkpoint) and can resume
DEFAULT_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"


class BackendError(RuntimeError):
    """A backend call failed; the message is one line, secret-free, and says what to do."""


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

    @property
    def label(self) -> str:
        return instance_label(self.job_id, self.attempt)

    def shell_script(self) -> str:
        """The setup lines, then `exec` of the command (so it receives the container's signals), as one
        `sh -c` script for container start commands."""
        return " && ".join([*self.setup, "exec " + shlex.join(self.command)])


@dataclass(frozen=True)
class Handle:
    backend: str
    instance_id: str
    label: str
    data: dict[str, Any] = field(default_factory=dict)  # JSON-serializable, stored with the attempt


def attempt_env(spec, attempt: int) -> dict[str, str]:
    """What every attempt's process gets in its environment: the spec (jobs.run reads it), no secrets."""
    return {SPEC_ENV: spec.to_json(), "PLANNER_JOB_ID": spec.job_id, "PLANNER_ATTEMPT": str(attempt)}


def instance_label(job_id: str, attempt: int) -> str:
    return f"{LABEL_PREFIX}{job_id}-a{attempt}"


def job_of_label(label: str) -> tuple[str, int] | None:
    """(job id, attempt) from a label we wrote, None for anyone else's instance."""
    if not label or not label.startswith(LABEL_PREFIX) or "-a" not in label:
        return None
    job_id, _, attempt = label[len(LABEL_PREFIX):].rpartition("-a")
    return (job_id, int(attempt)) if attempt.isdigit() and job_id else None


class Backend(ABC):
    name: str
    billing_seconds: int = 1  # the provider's billing granularity, for the cost of an attempt

    @abstractmethod
    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float) -> LaunchPlan:
        """Pure: the spec (jobs.spec.JobSpec) on this offer, as this attempt."""

    @abstractmethod
    def launch(self, plan: LaunchPlan) -> Handle: ...

    @abstractmethod
    def poll(self, handle: Handle) -> PollResult: ...

    @abstractmethod
    def cancel(self, handle: Handle) -> None:
        """Terminate the instance; succeeds quietly when it is already gone."""

    @abstractmethod
    def logs(self, handle: Handle, tail: int = 200) -> str: ...

    @abstractmethod
    def list_labeled(self) -> list[Handle]:
        """Every live instance carrying one of our labels (for the reaper)."""
