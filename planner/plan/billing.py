"""What an attempt costs: its rate (billed when the provider said one, else planned) times its elapsed time
rounded up to the provider's billing granularity. The supervisor settles with it, the budgets count live
attempts' accruing cost with it, and the views show spend with it.
"""
from __future__ import annotations

import math
from datetime import datetime

from planner.records import Attempt


def attempt_cost(attempt: Attempt, until: datetime) -> float:
    """Price per hour x elapsed time, rounded up to the provider's billing granularity. The price is the rate
    the provider said it bills (Attempt.billed_usd_per_hour) when it said one, else the planned one."""
    seconds = max(0.0, (until - attempt.launched_at).total_seconds())
    granularity = max(1, attempt.billing_seconds)
    billed = math.ceil(seconds / granularity) * granularity
    return attempt_rate(attempt) * billed / 3600


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
