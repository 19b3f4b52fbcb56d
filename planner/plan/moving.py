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

The supervisor asks `weigh` once per checkpoint of a running attempt (or a new throughput); a move
ends the attempt as "moved" (its instance is ended: the runner saves on SIGTERM and exits 75) and
places the job again without the offers it moved off (`moved_off`). bench/bench_market.py's
"ours+move" runs the same `decide`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.protocol import parse_progress
from jobs.spec import JobSpec
from planner.plan import kinds
from planner.plan.billing import attempt_cost
from planner.plan.budget import job_spent
from planner.plan.choose import RESTART_HOURS, Candidate, Limits, choose, interruption_rates
from planner.plan.estimate import EstimateError, Needs
from planner.plan.placement import PlaceFn, Placement, PlacementContext
from planner.records import Attempt, Job
from pricing import gpus
from pricing.offer import Offer

MOVE_MARGIN = 0.15  # move only when the best other offer finishes for at least 15 % less than staying
MAX_MOVES = 2  # per job: a third misjudged card is not worth another restart


class Elsewhere(Protocol):
    """The best other offer: a choose Candidate, or the supervisor's Placement."""

    offer: Offer
    spot: bool
    usd_per_hour: float
    expected_usd: float


@dataclass(frozen=True)
class Move:
    stay_usd: float  # expected dollars to finish where it runs
    move_usd: float  # expected dollars to finish elsewhere, restart and lost work included
    to: Elsewhere
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


def decide(stay: Candidate, elsewhere: Elsewhere | None, *, done_here: float = 0.0, moves: int = 0,
           margin: float = MOVE_MARGIN, max_moves: int = MAX_MOVES) -> Move | None:
    """Move to `elsewhere` (the best other offer for the work left after the last checkpoint), or stay
    (None). `stay` prices the same work where it runs (staying); `done_here` of it (a share) is done
    already here since the checkpoint and would be done again after a move."""
    if elsewhere is None or moves >= max_moves or stay.hours <= 0:
        return None
    done_here = max(0.0, min(done_here, 1.0))
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


def moved_off(session: Session, job_id: str) -> frozenset[str]:
    """The offers this job moved off: never placed there again (hysteresis)."""
    return frozenset(session.scalars(select(Attempt.offer_key).where(
        Attempt.job_id == job_id, Attempt.outcome == "moved", Attempt.offer_key.is_not(None))).all())


def weigh(session: Session, job: Job, attempt: Attempt, place: PlaceFn, context: PlacementContext) -> Move | None:
    """Whether the running `attempt` should move, on its own measured throughput (Attempt.measured_tflops,
    read from a progress file that has moved past where the attempt resumed) against the best offer
    `place` finds elsewhere now. `context`: as for a relaunch (cooling offers, the work left after the
    checkpoint, settled spend); the attempt's offer and those the job moved off are excluded, and the
    spend counts what the attempt has cost so far. None: stay."""
    spec = gpus.by_model(attempt.gpu_model or "")
    moves = session.scalar(select(func.count()).select_from(Attempt)
                           .where(Attempt.job_id == job.id, Attempt.outcome == "moved"))
    raw = parse_progress(attempt.progress)
    if (spec is None or not attempt.measured_tflops or not attempt.offer_key or moves >= MAX_MOVES
            or not _own_progress(session, attempt, raw)):
        return None
    job_spec = JobSpec.from_json(job.spec)
    try:
        needs = kinds.size(job_spec.kind, job_spec.params).remaining(context.remaining_fraction)
    except EstimateError:
        return None
    here = Offer(provider=attempt.provider, offer_key=attempt.offer_key, gpu_model=attempt.gpu_model,
                 gpu_name_raw=attempt.gpu_model, vram_gb=spec.vram_gb, gpu_count=attempt.gpu_count or 1,
                 on_demand_usd_per_gpu_hour=None, spot_usd_per_gpu_hour=None, tier=attempt.tier or "",
                 location=attempt.location, available=True, fetched_at=context.now, ram_gb=attempt.ram_gb)
    stay = staying(needs, here, bool(attempt.spot), attempt.billed_usd_per_hour or attempt.usd_per_hour,
                   min(1.0, attempt.measured_tflops / spec.bf16_tflops), now=context.now,
                   observed=interruption_rates(session))
    if stay is None:
        return None
    others = replace(context, excluded_offer_keys=context.excluded_offer_keys | {attempt.offer_key}
                     | moved_off(session, job.id), spent_usd=job_spent(session, job.id) + attempt_cost(attempt, context.now))
    requirements = job.requirements  # what the running attempt was placed with: a what-if must not change it
    try:
        elsewhere = place(session, job, others)
    finally:
        job.requirements = requirements
    if not isinstance(elsewhere, Placement) or elsewhere.offer is None:
        return None
    return decide(stay, elsewhere, done_here=_done_since_checkpoint(raw, context.remaining_fraction), moves=moves)


def _own_progress(session: Session, attempt: Attempt, raw: dict) -> bool:
    """Whether the progress file is this attempt's: its step has passed the last step an earlier attempt
    of the job reported (the file stays where the previous attempt left it until the new one writes)."""
    step = raw.get("step")
    if not isinstance(step, (int, float)):
        return False
    earlier = session.scalars(select(Attempt.progress).where(
        Attempt.job_id == attempt.job_id, Attempt.number < attempt.number, Attempt.progress.is_not(None))
        .order_by(Attempt.number.desc()).limit(1)).first()
    before = parse_progress(earlier).get("step")
    return not isinstance(before, (int, float)) or step > before


def _done_since_checkpoint(raw: dict, remaining_fraction: float) -> float:
    """The share of the work left after the checkpoint that the attempt has done since it."""
    step, saved, total = raw.get("step"), raw.get("checkpoint_step"), raw.get("total_steps")
    if not all(isinstance(v, (int, float)) for v in (step, saved, total)) or total <= 0 or remaining_fraction <= 0:
        return 0.0
    return max(0.0, (step - saved) / total) / remaining_fraction
