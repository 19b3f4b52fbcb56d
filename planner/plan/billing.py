"""What an attempt costs: its rate (billed when the provider said one, else planned) times its elapsed time
rounded up to the provider's billing granularity, plus the bandwidth a provider bills per byte (Vast:
docs/providers/vast.md, "Offers"). The supervisor settles with it, the budgets count live attempts' accruing
cost with it, and the views show spend with it.

Bandwidth follows the job's traffic as planned (planner.plan.estimate.Needs, in GB of 1e9 bytes): the
download (base model, inputs, the checkpoint it resumes from) is billed from the launch, since the box pulls
it first; a checkpoint is pushed every checkpoint interval it ran; the outputs once it succeeded.
"""
from __future__ import annotations

import math
from datetime import datetime

from jobs.protocol import CHECKPOINT_MINUTES
from planner.records import Attempt

BYTES_PER_GB = 1e9  # providers bill bandwidth per decimal GB


def attempt_cost(attempt: Attempt, until: datetime) -> float:
    """Price per hour x elapsed time, rounded up to the provider's billing granularity. The price is the rate
    the provider said it bills (Attempt.billed_usd_per_hour) when it said one, else the planned one."""
    seconds = max(0.0, (until - attempt.launched_at).total_seconds())
    granularity = max(1, attempt.billing_seconds)
    billed = math.ceil(seconds / granularity) * granularity
    return attempt_rate(attempt) * billed / 3600 + bandwidth_cost(attempt, until)


def bandwidth_cost(attempt: Attempt, until: datetime) -> float:
    """The attempt's traffic at its offer's $/GB: the download, a checkpoint per interval run, the outputs
    once it succeeded; 0 where the provider does not bill bandwidth."""
    down = getattr(attempt, "download_usd_per_gb", None) or 0.0
    up = getattr(attempt, "upload_usd_per_gb", None) or 0.0
    if not down and not up:
        return 0.0
    hours = max(0.0, (until - attempt.launched_at).total_seconds()) / 3600
    pushed = (attempt.checkpoint_gb or 0.0) * math.floor(hours / (CHECKPOINT_MINUTES / 60))
    if attempt.outcome == "succeeded":
        pushed += attempt.upload_gb or 0.0
    return down * (attempt.download_gb or 0.0) + up * pushed


def attempt_rate(attempt: Attempt) -> float:
    """$/h the attempt is settled at: billed when known, else planned."""
    billed = billed_rate(getattr(attempt, "billed_usd_per_hour", None))
    return attempt.usd_per_hour if billed is None else billed


def billed_rate(value) -> float | None:
    """A billed rate worth keeping: a positive, finite number (RunPod reports 0 once a pod has exited)."""
    try:
        rate = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return rate if rate is not None and math.isfinite(rate) and rate > 0 else None


def traffic_columns(traffic) -> dict:
    """The Attempt columns for a placement's planned traffic (planner.plan.choose.Traffic; None: not billed)."""
    if traffic is None:
        return {}
    return {name: getattr(traffic, name) for name in ("download_usd_per_gb", "upload_usd_per_gb", "download_gb",
                                                      "upload_gb", "checkpoint_gb")}
