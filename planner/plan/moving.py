"""Whether a running attempt should checkpoint and move to another offer (issue 23).

A job is placed on the prior speed of a GPU model; once its attempt has measured its own throughput
(the progress file's TFLOP/s per GPU), the expected dollars to finish where it runs are known far
better than when it was placed. Compared with the best other offer now:

    stay = p_here * (h_left at the measured speed + expected rework)            no startup: it runs
    move = expected dollars to finish on the best other offer                   (choose: work, startup, rework)
           + p_here * RESTART_HOURS                                             stopping and saving here
           + the work since the last checkpoint, done again there               (lost if the save fails)

The job moves when move < (1 - MOVE_MARGIN) x stay. Hysteresis, so a job never ping-pongs: the margin
(the prior that placed it had the other offer within it, so only a clear misjudgement moves it), at
most MAX_MOVES moves per job, an offer the job moved off is never chosen for it again, and each attempt
is weighed on its own measured throughput, so a new attempt is judged only once it has measured its
own. `stay` and `move` are both choose's expected dollars (planner.plan.choose), on the same price
book and interruption rates, so the comparison has one cost model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from planner.plan.choose import RESTART_HOURS, Candidate, Limits, choose
from planner.plan.estimate import Needs
from pricing.offer import Offer

MOVE_MARGIN = 0.15  # move only when the best other offer finishes for at least 15 % less than staying
MAX_MOVES = 2  # per job: a third misjudged card is not worth another restart


@dataclass(frozen=True)
class Move:
    stay_usd: float  # expected dollars to finish where it runs
    move_usd: float  # expected dollars to finish elsewhere, restart and lost work included
    to: Candidate
    reason: str  # for `jobs show`: what it measured and what it saves


def staying(needs: Needs, offer: Offer, spot: bool, usd_per_hour: float, efficiency: float, *, now,
            observed: dict | None = None, checkpoint_hours: float = Limits().checkpoint_hours) -> Candidate | None:
    """The running attempt as choose prices it: its own offer at the rate it pays (`usd_per_hour`, whole
    instance) and the efficiency it measured (achieved / peak per GPU); None when choose cannot price it."""
    per_gpu = usd_per_hour / max(offer.gpu_count, 1)
    here = replace(offer, on_demand_usd_per_gpu_hour=None if spot else per_gpu,
                   spot_usd_per_gpu_hour=per_gpu if spot else None, available=True)
    limits = Limits(spot="spot" if spot else "on-demand", checkpoint_hours=checkpoint_hours, allow_stale=True)
    choice = choose(needs, [here], limits, now=now, observed=observed or {},
                    efficiency=lambda _model, _gpus: efficiency, memory_correction=lambda _model: 1.0)
    return choice.winner


def decide(stay: Candidate, elsewhere: Candidate | None, *, since_checkpoint_hours: float = 0.0, moves: int = 0,
           margin: float = MOVE_MARGIN, max_moves: int = MAX_MOVES) -> Move | None:
    """Move to `elsewhere` (the best other offer for the work left after the last checkpoint), or stay
    (None). `stay` prices the same work where it runs (staying); `since_checkpoint_hours` of it are
    already done here and would be done again after a move."""
    if elsewhere is None or moves >= max_moves or stay.hours <= 0:
        return None
    done_here = min(since_checkpoint_hours / stay.hours, 1.0)  # of the work left after the checkpoint
    stay_usd = stay.expected_usd - stay.breakdown["startup"] - stay.breakdown["work"] * done_here
    move_usd = elsewhere.expected_usd + stay.usd_per_hour * RESTART_HOURS
    if move_usd >= (1 - margin) * stay_usd:
        return None
    offer = elsewhere.offer
    reason = (f"moved: measured {stay.hours:.1f} h of work left here, ${stay_usd:.2f} to finish; "
              f"{offer.gpu_count}x {offer.gpu_model} on {offer.provider}"
              f"{' spot' if elsewhere.spot else ''} at ${elsewhere.usd_per_hour:.3f}/h finishes for "
              f"${move_usd:.2f} with the restart ({1 - move_usd / stay_usd:.0%} less; move {moves + 1} of {max_moves})")
    return Move(stay_usd, move_usd, elsewhere, reason)
