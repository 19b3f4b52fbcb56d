"""Job, attempt and campaign tables: the supervisor's state, and the history the planner learns from.

campaigns  a group of jobs with one budget (the five bags, their merge, encode, evaluation)
jobs       one unit of work with a stable id across attempts; its JobSpec JSON is what the runner gets
attempts   one launch of a job on one offer: where, at what price, how it ended, what it cost

Job states: pending -> launching -> running -> (preempted -> launching ...) -> succeeded | failed |
cancelled | stopped-by-budget. Attempt outcomes: launching, running, preempted, lost, succeeded, failed,
launch-failed (the provider refused or failed the launch), out-of-memory (CUDA's, or the host's OOM
killer: relaunched with a smaller chunk or more memory), moved (measured slow: ended to run on a clearly
cheaper offer, planner.plan.moving), cancelled, stopping (a checkpointed job that would pass a budget, asked
to save and exit: live until it has, or its grace ran out), stopped-by-budget. A job's `lease_owner`/`lease_until` make launching it a claim that
only one supervisor process can hold, so a restarted or doubled supervisor never launches twice.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column, validates

from pricing.db import Base, UTCDateTime, utcnow

JOB_STATES = ("pending", "launching", "running", "preempted", "succeeded", "failed", "cancelled",
              "stopped-by-budget")
FINAL_STATES = ("succeeded", "failed", "cancelled", "stopped-by-budget")
ATTEMPT_OUTCOMES = ("launching", "launch-failed", "running", "stopping", "preempted", "lost", "succeeded", "failed",
                    "out-of-memory", "moved", "cancelled", "stopped-by-budget")
LIVE_ATTEMPT = ("launching", "running", "stopping")


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; one of {', '.join(allowed)}")
    return value


class Project(Base):
    """This database's project: one row, made by `planner db upgrade` (migration 0008). Its id is in every
    instance label and local run the project makes, so its reaper touches only its own boxes."""

    __tablename__ = "project"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def project_id(session: Session) -> str:
    found = session.scalars(select(Project.id).order_by(Project.created_at)).first()
    if found is None:
        raise LookupError("this database has no project row; run: planner db upgrade")
    return found


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "bagging" | "incremental"
    params: Mapped[str] = mapped_column(Text)  # JSON: fractions, weights, URIs
    budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"), Index("ix_jobs_campaign", "campaign_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str | None] = mapped_column(ForeignKey("campaigns.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # a jobs.spec.KINDS name
    spec: Mapped[str] = mapped_column(Text)  # jobs.spec.JobSpec JSON
    depends_on: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of job ids
    state: Mapped[str] = mapped_column(String(24), default="pending")
    backend: Mapped[str] = mapped_column(String(16), default="auto")
    spot: Mapped[str] = mapped_column(String(16), default="any")  # spot | on-demand | any
    max_price_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    requirements: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the planner's estimate
    max_failures: Mapped[int] = mapped_column(Integer, default=3)
    pin_gpu: Mapped[str | None] = mapped_column(String(100), nullable=True)  # `--gpu NAME[:COUNT]`: only this model
    pin_gpu_count: Mapped[int | None] = mapped_column(Integer, nullable=True)  # ... with this many GPUs
    pin_provider: Mapped[str | None] = mapped_column(String(32), nullable=True)  # `--provider`: only this one
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def dependencies(self) -> list[str]:
        return json.loads(self.depends_on or "[]")

    @validates("state")
    def _known_state(self, _key: str, state: str) -> str:
        return _one_of(state, JOB_STATES, "job state")


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
        Index("ix_attempts_outcome", "outcome"),
        Index("ix_attempts_gpu", "gpu_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per job
    backend: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(32))  # runpod | vast | local
    offer_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    gpu_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    gpu_count: Mapped[int] = mapped_column(Integer, default=1)
    tier: Mapped[str | None] = mapped_column(String(32), nullable=True)
    location: Mapped[str | None] = mapped_column(String(200), nullable=True)
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    usd_per_hour: Mapped[float] = mapped_column(Float, default=0.0)  # whole instance; the bid for spot
    # what the provider said it bills for the instance (RunPod pod.cost, Vast dph_total), when it said;
    # settlement uses it over the planned usd_per_hour (migration 0005)
    billed_usd_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    billing_seconds: Mapped[int] = mapped_column(Integer, default=1)  # the provider's billing granularity
    instance_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    handle: Mapped[str] = mapped_column(Text, default="{}")  # JSON, backend-specific
    outcome: Mapped[str] = mapped_column(String(24), default="launching")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    launched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    poll_failures: Mapped[int] = mapped_column(Integer, default=0)
    dollars: Mapped[float] = mapped_column(Float, default=0.0)  # settled when the attempt ends
    progress: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the runner's progress.json
    measured_tflops: Mapped[float | None] = mapped_column(Float, nullable=True)  # achieved, per GPU
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it ended; log tail on failure
    # memory (migration 0009): the chunk it ran with and what the planner planned at it, and the peaks the
    # runner reported (jobs.memory: the largest rank's VRAM, allocated and reserved; rank 0's RSS), in GB
    mini_batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    planned_vram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    planned_ram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    ram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)  # the instance's host RAM, as offered
    peak_vram_allocated_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_vram_reserved_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_rss_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # bandwidth billed per byte (migration 0010): the offer's $/GB and the traffic planned for the attempt, in GB
    # of 1e9 bytes (planner.plan.billing.bandwidth_cost settles them)
    download_usd_per_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    upload_usd_per_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    download_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    upload_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    checkpoint_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the claim on the create (migration 0008): the launcher renews the lease (database clock) while its
    # create is in flight; recovering a cut-off launch bumps the fence, so a late answer is not recorded
    launch_fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    launch_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # a budget stop (migration 0011): when the job was asked to checkpoint and exit ("stopping"), and why
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    @validates("outcome")
    def _known_outcome(self, _key: str, outcome: str) -> str:
        return _one_of(outcome, ATTEMPT_OUTCOMES, "attempt outcome")


class Budget(Base):
    """Spending caps. The "monthly" row always exists (its usd may be NULL: no cap): reservations lock it."""

    __tablename__ = "budgets"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Reservation(Base):
    """A job's hold on the budget: what it has spent so far plus the worst case of its live attempt."""

    __tablename__ = "reservations"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    usd: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Notification(Base):
    """A notification, one row per event (`key`, e.g. "job:ID:succeeded") claimed before it is sent, so no
    tick or process sends it twice (planner.run.notify). The webhook URL is never stored: only the text
    and whether it arrived."""

    __tablename__ = "notifications"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # job-succeeded | ... | campaign-finished | orphan-reaped | ...
    subject: Mapped[str] = mapped_column(String(200))  # the job, campaign or instance it is about
    text: Mapped[str | None] = mapped_column(Text, nullable=True)  # built once, in the background
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it was not delivered (no URL in it)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the notifier delivering it
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
