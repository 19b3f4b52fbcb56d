"""What the planner hands the supervisor: where the next attempt runs, or why it cannot run yet."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.orm import Session

from jobs.protocol import CHECKPOINT_MINUTES
from jobs.spec import JobSpec
from planner.plan.choose import Traffic
from planner.records import Job
from pricing.offer import Offer


@dataclass(frozen=True)
class Placement:
    """Where the next attempt runs: the planner's winner, or why there is none."""

    backend: str
    offer: Offer | None
    spot: bool
    usd_per_hour: float  # whole instance
    worst_case_usd: float  # reserved against the budget before launch
    expected_usd: float = 0.0
    billing_seconds: int = 1
    ranks: int = 1  # processes on the box: every GPU of the offer for a data-parallel job
    spec_params: dict = field(default_factory=dict)  # chosen for this offer, e.g. the gradient-cache chunk
    mini_batch: int | None = None  # the gradient-cache chunk the attempt runs with (None: not chunked)
    planned_vram_gb: float | None = None  # per GPU at that chunk, and host RAM: what the attempt records
    planned_ram_gb: float | None = None
    traffic: Traffic | None = None  # bandwidth billed per byte: the attempt's planned GB and the offer's $/GB

    @property
    def max_hours(self) -> float | None:
        """How long the reservation pays for at this price: the longest the attempt may run, after its billed
        traffic (the download and outputs, and a checkpoint pushed per interval while it runs)."""
        if self.usd_per_hour <= 0:
            return None
        if self.traffic is None:
            return self.worst_case_usd / self.usd_per_hour
        per_hour = self.usd_per_hour + self.traffic.usd_per_hour(CHECKPOINT_MINUTES / 60)
        return max(0.0, self.worst_case_usd - self.traffic.fixed_usd) / per_hour

    def apply(self, spec: JobSpec) -> JobSpec:
        """The job's spec as this attempt runs it."""
        return replace(spec, params=spec.params | self.spec_params, ranks=self.ranks)


@dataclass(frozen=True)
class NoPlacement:
    reason: str
    over_budget: bool = False
    impossible: bool = False  # the job can never be placed (cannot be sized): fail it instead of retrying


PlaceFn = Callable[[Session, Job, "PlacementContext"], "Placement | NoPlacement"]  # e.g. plans.Placer


@dataclass(frozen=True)
class PlacementContext:
    excluded_offer_keys: frozenset[str]  # offers in their post-interruption cool-down
    remaining_fraction: float  # of the job's work, from the runner's progress
    spent_usd: float  # settled over the job's attempts so far
    now: datetime
    excluded_backends: frozenset[str] = frozenset()  # backends that cannot launch now (an account out of funds)
