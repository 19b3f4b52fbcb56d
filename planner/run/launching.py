"""Creating jobs and campaigns in the database, and running the supervisor over them.

The CLI (`planner launch`, `planner jobs`), `planner serve` and `planner demo` all go through here:
a job is a row holding its JobSpec; the supervisor (planner.run.supervisor) does everything after that.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import storage
from jobs.spec import JobSpec
from planner.config import Settings, mask_url_secrets, untrusted_routes
from planner.plan import campaigns
from planner.plan.budget import Ledger
from planner.plan.campaigns import CampaignPlan, NewJob
from planner.plan.choose import Choice, Limits
from planner.plan.plans import Placer, limits_for, placement_for
from planner.records import FINAL_STATES, Attempt, Campaign, Job
from planner.run import funds
from planner.run.backends import cloud_backend_class
from planner.run.backends.base import BackendError
from planner.run.backends.local import LocalBackend, local_offer
from planner.run.backends.skypilot import SkyPilotBackend
from planner.run.credentials import secret_values
from planner.run.inputs import InputError, Upload, local_input_problem, stage_inputs
from planner.run.notify import Notifier
from planner.run.supervisor import Supervisor
from planner.run.tick_report import TickReport
from pricing import gpus
from pricing.providers.http import RetryPolicy
from pricing.providers.registry import PROVIDERS

log = logging.getLogger(__name__)
MAX_GPUS_PER_INSTANCE = 64  # a sanity bound on a pinned GPU count (the column is a 32-bit integer), not a market fact


@dataclass(frozen=True)
class JobOptions:
    """How a job may run: where, how it may be interrupted, what it may cost."""

    backend: str = "auto"  # auto | local | runpod | vast
    spot: str = "any"  # spot | on-demand | any
    max_price_per_hour: float | None = None
    budget_usd: float | None = None
    max_failures: int = 3
    gpu: str | None = None  # pinned canonical GPU model (`--gpu H100-SXM`), None: any that fits
    gpu_count: int | None = None  # pinned GPUs per instance (`--gpu H100-SXM:2`)
    provider: str | None = None  # pinned provider (`--provider vast`)
    ignore_balance: bool = False  # launch even where an account's balance cannot cover what the launch reserves

    def limits(self, settings: Settings, session: Session, job_id: str, *, allow_stale: bool = False) -> Limits:
        """The limits a job launched with these options would be planned under (plans.limits_for: pins, the
        job's budget, what is left of the monthly budget): `planner plan` and `POST /plan` rank with them."""
        probe = Job(id=job_id, backend=self.backend, spot=self.spot, max_price_per_hour=self.max_price_per_hour,
                    budget_usd=self.budget_usd, pin_gpu=self.gpu, pin_gpu_count=self.gpu_count,
                    pin_provider=self.provider)
        return limits_for(probe, settings, session, allow_stale=allow_stale)


def gpu_pin(text: str | None) -> tuple[str | None, int | None]:
    """A pinned GPU, `NAME[:COUNT]` (SkyPilot's --gpus H100:1), as (canonical model, count): `planner plan --gpu`
    and POST /plan's `gpu`. ValueError starting with the part it could not read."""
    if not text:
        return None, None
    name, _, count = text.rpartition(":") if ":" in text else (text, "", "")
    name = name.strip()
    # isdecimal, not isdigit: '²' is a digit to Python but not a number int() reads
    if count and not (count.isascii() and count.isdecimal()) or not name or count and not (
            0 < int(count) <= MAX_GPUS_PER_INSTANCE):
        raise ValueError(f"{text}: give a GPU model and optionally a count of 1 to {MAX_GPUS_PER_INSTANCE}, e.g. "
                         "H100-SXM or H100-SXM:2")
    spec = gpus.resolve(name)
    if spec is None:
        raise ValueError(f"{name}: not a GPU this planner knows; `planner prices show` lists the models")
    return spec.model, int(count) if count else None


def provider_pin(name: str | None) -> str | None:
    """A pinned provider: a registered one or this machine; ValueError naming the choices."""
    if name is not None and name not in (*PROVIDERS, "local"):
        raise ValueError(f"{name}: choose {', '.join(PROVIDERS)} or local")
    return name


class LaunchError(Exception):
    """A launch that cannot go ahead, in one line naming the fix; `code` 2: the user's to fix, 1: weather."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Submitted:
    campaign: str | None  # the campaign's id (None: a single job)
    jobs: list[str]
    uploads: list[Upload]


def submit(settings: Settings, sessions: sessionmaker, plan: CampaignPlan, options: JobOptions, *,
           confirm: Callable[[CampaignPlan, list[Upload]], bool] = lambda plan, uploads: True) -> Submitted | None:
    """Launch a plan: check the backend can run it, upload its local inputs under the storage URI when it
    may run in the cloud, ask `confirm` (with the jobs as they will be written), then write the campaign
    row (for more than one job) and one pending `jobs` row per job in one transaction. The supervisor does
    the rest (placing, reserving against the budgets, launching). None: `confirm` said no; nothing written.
    LaunchError: nothing written (inputs already uploaded stay: they are content-addressed)."""
    problem = cloud_problem(settings, options.backend, [item.spec for item in plan.jobs])
    if problem:
        raise LaunchError(problem)
    may_rent = options.backend not in ("local", "auto") or (
        options.backend == "auto" and storage.is_remote(settings.storage_uri or ""))  # auto: cloud needs a store
    if may_rent and (routes := untrusted_routes()):
        proposed = ", ".join(f"{key} = {mask_url_secrets(value)!r}" for key, value in routes.items())
        raise LaunchError(f"the project file sets {proposed}"
                          ": these decide where a cloud box sends your storage credentials and what runs beside "
                          "them; confirm them once with `planner config trust` (or set them in your user config)")
    if not options.ignore_balance:
        funds_problem(settings, sessions, plan, options)
    try:
        staged, uploads = stage_for_cloud(settings, options.backend, plan.jobs)
    except InputError as exc:
        raise LaunchError(str(exc)) from None
    except OSError as exc:  # the store refused or is unreachable: its message names the bucket, not a key
        raise LaunchError(f"cannot upload the inputs to {settings.storage_uri}: "
                          f"{' '.join(str(exc).split())[:300]}", code=1) from None
    plan = replace(plan, jobs=staged)
    if not confirm(plan, uploads):
        return None
    campaign = None
    if len(plan.jobs) > 1:
        campaign = Campaign(id=campaigns.new_id(plan.kind), kind=plan.kind, params=json.dumps(plan.params),
                            budget_usd=options.budget_usd)
    with sessions() as session:
        rows = add_jobs(session, plan.jobs, options, campaign)
        return Submitted(campaign.id if campaign else None, [row.id for row in rows], uploads)


def funds_problem(settings: Settings, sessions: sessionmaker, plan: CampaignPlan, options: JobOptions) -> None:
    """LaunchError (exit 1) when an account the launch would rent from cannot cover the worst case it reserves
    there (planner.run.funds); a balance that cannot be read is logged and the launch goes on."""
    backends = {name: b for name, b in build_backends(settings).items() if options.backend in (name, "auto")}
    with sessions() as session:
        needed = funds.needed_by_provider(session, [item.spec for item in plan.jobs],
                                          lambda spec: options.limits(settings, session, spec.job_id), set(backends))
    short, warnings = funds.shortfalls(backends, needed)
    for warning in warnings:
        log.warning("%s", warning)
    if short:
        raise LaunchError("; ".join(s.message() for s in short), code=1)


def add_jobs(session: Session, new_jobs: list[NewJob], options: JobOptions, campaign: Campaign | None = None) -> list[Job]:
    if campaign is not None:
        session.add(campaign)
        session.flush()
    rows = []
    for item in new_jobs:
        row = Job(id=item.spec.job_id, campaign_id=campaign.id if campaign else None, name=item.name,
                  kind=item.spec.kind, spec=item.spec.to_json(), depends_on=json.dumps(list(item.depends_on)),
                  state="pending", backend=options.backend, spot=options.spot,
                  max_price_per_hour=options.max_price_per_hour,
                  budget_usd=None if campaign is not None else options.budget_usd,  # a campaign's is shared
                  max_failures=options.max_failures, pin_gpu=options.gpu, pin_gpu_count=options.gpu_count,
                  pin_provider=options.provider)
        session.add(row)
        rows.append(row)
    session.commit()
    return rows


def build_backends(settings: Settings) -> dict:
    """Local always; each registered provider where its API key is configured; SkyPilot where its extra is installed."""
    backends = {"local": LocalBackend(settings.runs_dir)}
    retry = RetryPolicy.from_settings(settings)
    for name, provider in settings.providers.items():  # the provider backends whose API key is configured
        if provider.api_key is not None:
            backends[name] = cloud_backend_class(name).from_settings(settings, retry)
    if importlib.util.find_spec("sky") is not None:  # the optional cloud extra; SkyPilot keeps its own credentials
        backends["skypilot"] = SkyPilotBackend(image=settings.job_image, jobs_install=settings.jobs_install,
                                               catalog_offers=lambda: _book(settings))
    return backends


def _book(settings: Settings) -> list:
    from planner.plan.plans import book_offers
    from pricing.db import session_factory

    with session_factory(settings.db_url)() as session:
        return book_offers(session)


def cloud_problem(settings: Settings, backend: str, specs: list[JobSpec]) -> str | None:
    """Why jobs cannot launch on a cloud backend as configured (None: they can)."""
    need = {**{name: f"{info.key_env} in the environment or the config file" for name, info in PROVIDERS.items()},
            "skypilot": "the cloud extra (pip install 'planner[cloud]') and SkyPilot's own credentials"}.get(backend)
    if need is None:
        return None
    if backend not in build_backends(settings):
        return f"--backend {backend} needs {need}"
    if not settings.jobs_install:
        return ("cloud boxes install this project's jobs extra: set PLANNER_JOBS_INSTALL to its pip requirement, "
                "e.g. 'planner[jobs] @ git+https://HOST/REPO@COMMIT'")
    if not settings.storage_uri and (problem := local_input_problem(specs)):
        return problem
    if any(not storage.is_remote(s.output_uri) for s in specs):
        return ("a cloud box cannot reach this machine's disk: set PLANNER_STORAGE_URI (e.g. s3://bucket/planner) "
                "or pass s3://... URIs for --output and --checkpoint")
    return None


def stage_for_cloud(settings: Settings, backend: str, new_jobs: list[NewJob], *, upload_files: bool = True
                    ) -> tuple[list[NewJob], list[Upload]]:
    """The jobs with their local inputs uploaded under PLANNER_STORAGE_URI (planner.run.inputs), when they may
    run in the cloud: any backend but local, with a storage URI set (without one, auto keeps to this machine).
    `upload_files` False: the specs a launch would write, uploading nothing (a dry run)."""
    if backend == "local" or not settings.storage_uri:
        return new_jobs, []
    specs, uploads = stage_inputs([item.spec for item in new_jobs], settings.storage_uri, upload_files=upload_files)
    return [replace(item, spec=spec) for item, spec in zip(new_jobs, specs)], uploads


def skypilot_task_yaml(settings: Settings, spec: JobSpec, choice: Choice) -> str:
    """The SkyPilot task YAML a `--backend skypilot` launch would submit as `spec`'s first attempt on
    `choice`'s winner (the Placer's placement, SkyPilotBackend.plan's config). Built by our code: needs
    neither SkyPilot nor its extra. BackendError when the task cannot be built (no winner, no remote
    output, no PLANNER_JOBS_INSTALL, an offer SkyPilot does not launch)."""
    import yaml

    if choice.winner is None:
        raise BackendError(choice.explain_empty())
    backend = SkyPilotBackend(image=settings.job_image, jobs_install=settings.jobs_install, catalog_offers=list)
    placement = placement_for(spec, choice, backend.name, backend.billing_seconds)
    plan = backend.plan(placement.apply(spec), placement.offer, attempt=1, spot=placement.spot,
                        usd_per_hour=placement.usd_per_hour, disk_gb=choice.needs.disk_gb)
    return yaml.safe_dump(plan.request["task"], sort_keys=False, width=1_000_000)


def build_supervisor(settings: Settings, sessions: sessionmaker, backends: dict | None = None) -> Supervisor:
    backends = backends or build_backends(settings)
    placer = Placer(settings, backends, local_offer(settings.local_usd_per_hour, settings.local_gpus) if "local" in backends else None)
    return Supervisor(sessions, backends, placer, budget=Ledger(), poll_interval_s=settings.poll_interval_s,
                      cooldown=settings.preempted_cooldown, notifier=Notifier.from_settings(settings, sessions),
                      secrets=secret_values(settings))


def run_until_final(supervisor: Supervisor, job_ids: list[str], *, interval_s: float,
                    on_tick: Callable[[TickReport], None] | None = None, timeout_s: float | None = None) -> dict[str, str]:
    """Tick until every job in `job_ids` is final; returns their states."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        report = supervisor.tick()
        if on_tick is not None:
            on_tick(report)
        with supervisor.sessions() as session:
            states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids))).all())
        if all(state in FINAL_STATES for state in states.values()):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs still running after {timeout_s:.0f} s: "
                               + ", ".join(j for j, s in states.items() if s not in FINAL_STATES))
        time.sleep(interval_s)


def find_jobs(session: Session, ident: str) -> tuple[Campaign | None, list[Job]]:
    """A job by id, or every job of a campaign by the campaign's id."""
    job = session.get(Job, ident)
    if job is not None:
        return None, [job]
    campaign = session.get(Campaign, ident)
    if campaign is None:
        return None, []
    return campaign, list(session.scalars(select(Job).where(Job.campaign_id == ident).order_by(Job.created_at, Job.id)))


def attempts_of(session: Session, job_id: str) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))


CANCEL_WAIT_S = 30.0  # how long a cancel waits for a job another supervisor is ending


class Cancelled(list):
    """The ids a cancel ended; `not_ended`: job id -> why its box could not be ended from here (the backend's
    key is not set in this process): those stay marked, and the next supervisor that can reach it ends it."""

    def __init__(self, ids, not_ended: dict[str, str]):
        super().__init__(ids)
        self.not_ended = not_ended


def cancel_jobs(settings: Settings, sessions: sessionmaker, ident: str,
                backends: dict | None = None) -> Cancelled | None:
    """Cancel a job or every open job of a campaign: mark them, then one supervisor tick terminates
    their live instances and settles them. Returns the ids cancelled (None: no such job or campaign)."""
    with sessions() as session:
        _, jobs = find_jobs(session, ident)
        if not jobs:
            return None
        marked = [job.id for job in jobs if job.state not in FINAL_STATES]
        for job in jobs:
            if job.state not in FINAL_STATES:
                job.cancel_requested = True
        session.commit()
    # Another supervisor (`planner serve`'s, a cron tick) may end a marked job first, or hold its lease while
    # this tick runs: what counts is the state the jobs reach, whoever ended them.
    supervisor, deadline = build_supervisor(settings, sessions, backends), time.monotonic() + CANCEL_WAIT_S
    while True:
        report = supervisor.tick()
        not_ended = {job_id: why for job_id, why in report.waiting.items() if job_id in marked}
        with sessions() as session:
            states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(marked))).all())
        if all(states[j] in FINAL_STATES or j in not_ended for j in marked) or time.monotonic() > deadline:
            return Cancelled([j for j in marked if states[j] == "cancelled"], not_ended)
        time.sleep(0.2)
