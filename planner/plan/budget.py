"""Budgets that hold under concurrency: a per-job budget, a campaign's budget shared by its jobs, and a
global monthly one.

Before launching, a job reserves its spend so far plus the worst case of the attempt it is about to
start; committed money is what this month's finished attempts cost plus, for every job still holding
a reservation, the part of it not yet spent, or what its live attempt has accrued where that is more
(an attempt that outlives its worst case still counts, every tick). A reservation succeeds only if
committed + it stays within the monthly budget. The check and the write happen while holding a write lock on the
"monthly" budget row (an UPDATE first: SQLite takes its database write lock, PostgreSQL locks the
row), so concurrent launches from threads or processes on one database serialize and never overspend.
Spend itself is never stored twice: it is the sum of the attempts' settled dollars.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from planner.plan.billing import attempt_cost
from planner.records import LIVE_ATTEMPT, Attempt, Budget, Campaign, Job, Reservation
from pricing.db import utcnow

MONTHLY = "monthly"


class BudgetScope(enum.Enum):
    """Which budget refused: a job's own cannot grow by waiting; a shared one (a campaign's, the month's)
    gets room back as other jobs' reservations settle."""

    JOB = "job"
    CAMPAIGN = "campaign"
    MONTHLY = "monthly"


@dataclass(frozen=True)
class Refusal:
    scope: BudgetScope
    reason: str  # one line: what is committed, what was asked, how to raise it

    @property
    def shared(self) -> bool:
        return self.scope is not BudgetScope.JOB


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def job_spent(session: Session, job_id: str) -> float:
    return session.scalar(select(func.coalesce(func.sum(Attempt.dollars), 0.0)).where(Attempt.job_id == job_id))


def accruing(session: Session, until: datetime) -> dict[str, float]:
    """What each job's live attempt will have cost by `until` (not yet settled, so not in Attempt.dollars)."""
    costs: dict[str, float] = {}
    for attempt in session.scalars(select(Attempt).where(Attempt.outcome.in_(LIVE_ATTEMPT))):
        costs[attempt.job_id] = costs.get(attempt.job_id, 0.0) + attempt_cost(attempt, until)
    return costs


def _held(session: Session, live: dict[str, float], *, except_job: str | None = None) -> float:
    """Per job (but `except_job`): the unspent part of its reservation, or its live attempt's accrued cost
    where that is more (an attempt past its worst case), or the accrued cost of a job holding none."""
    reserved = dict(session.execute(select(Reservation.job_id, Reservation.usd)).all())
    total = 0.0
    for job_id in set(reserved) | set(live):
        if job_id != except_job:
            unspent = max(0.0, reserved[job_id] - job_spent(session, job_id)) if job_id in reserved else 0.0
            total += max(unspent, live.get(job_id, 0.0))
    return total


def unspent_reservations(session: Session, *, except_job: str | None = None) -> float:
    """The part of open reservations not yet spent: held for running attempts, it comes back as they settle."""
    rows = session.execute(select(Reservation.job_id, Reservation.usd)
                           .where(Reservation.job_id != (except_job or ""))).all()
    return sum(max(0.0, usd - job_spent(session, job_id)) for job_id, usd in rows)


def settled_this_month(session: Session, now: datetime) -> float:
    return session.scalar(select(func.coalesce(func.sum(Attempt.dollars), 0.0))
                          .where(Attempt.ended_at >= month_start(now)))


def committed(session: Session, now: datetime | None = None, *, except_job: str | None = None) -> float:
    """This month's settled spend plus, per job (but `except_job`), the unspent part of its reservation or
    what its live attempt has accrued by `now`, whichever is more."""
    now = now or utcnow()
    return settled_this_month(session, now) + _held(session, accruing(session, now), except_job=except_job)


@dataclass(frozen=True)
class MonthSpend:
    """The month at a glance (`planner budget show`, the dashboard): committed = settled + held."""

    cap_usd: float | None
    settled_usd: float  # attempts that ended this month
    accruing_usd: float  # live attempts' cost so far, not yet settled
    held_usd: float  # per job: the unspent part of its reservation or its accrued cost, whichever is more
    committed_usd: float

    @property
    def left_usd(self) -> float | None:
        return None if self.cap_usd is None else self.cap_usd - self.committed_usd


def month_spend(session: Session, now: datetime | None = None) -> MonthSpend:
    now = now or utcnow()
    live = accruing(session, now)
    settled, held = settled_this_month(session, now), _held(session, live)
    return MonthSpend(monthly_budget(session), settled, sum(live.values()), held, settled + held)


def monthly_budget(session: Session) -> float | None:
    return session.scalar(select(Budget.usd).where(Budget.scope == MONTHLY))


def set_monthly_budget(session: Session, usd: float | None) -> None:
    if usd is not None and not (math.isfinite(usd) and usd > 0):  # NaN compares false: it would mean "no cap"
        raise ValueError("the monthly budget must be a positive, finite number of dollars (or none)")
    session.execute(update(Budget).where(Budget.scope == MONTHLY).values(usd=usd, updated_at=utcnow()))
    session.commit()


def left_this_month(session: Session, now: datetime | None = None, *, for_job: str | None = None) -> float | None:
    """The month's budget less what is committed; `for_job`: the room for that job's next attempt, which
    replaces its own reservation (as Ledger.reserve counts it), so that reservation does not count."""
    cap = monthly_budget(session)
    return None if cap is None else cap - committed(session, now, except_job=for_job)


def campaign_committed(session: Session, campaign_id: str, *, excluding: str | None = None,
                       now: datetime | None = None) -> float:
    """What a campaign's jobs have spent plus, per job, the unspent part of its reservation or, given `now`,
    what its live attempt has accrued by then, whichever is more."""
    live = accruing(session, now) if now is not None else {}
    total = 0.0
    for job_id in session.scalars(select(Job.id).where(Job.campaign_id == campaign_id, Job.id != (excluding or ""))):
        spent = job_spent(session, job_id)
        reservation = session.get(Reservation, job_id)
        total += spent + max(max(0.0, reservation.usd - spent) if reservation else 0.0, live.get(job_id, 0.0))
    return total


def campaign_left(session: Session, job: Job, now: datetime | None = None) -> float | None:
    """The campaign's budget left to this job: the cap less what the other jobs committed (by `now`, their live
    attempts' accrual included) and it spent."""
    campaign = session.get(Campaign, job.campaign_id) if job.campaign_id else None
    if campaign is None or campaign.budget_usd is None:
        return None
    return (campaign.budget_usd - campaign_committed(session, campaign.id, excluding=job.id, now=now)
            - job_spent(session, job.id))


class Ledger:
    """The supervisor's view of the budgets: reserve before a launch, release when a job ends."""

    def __init__(self, clock=utcnow):
        self.clock = clock

    def reserve(self, session: Session, job: Job, worst_case_usd: float) -> Refusal | None:
        """Hold spend-so-far + `worst_case_usd` for `job`; None when held, else why not (nothing held)."""
        session.commit()  # start a fresh transaction whose first statement takes the lock
        session.execute(update(Budget).where(Budget.scope == MONTHLY).values(updated_at=self.clock()))
        spent = job_spent(session, job.id)
        wanted = spent + worst_case_usd
        if job.budget_usd is not None and spent >= job.budget_usd:
            session.rollback()
            return Refusal(BudgetScope.JOB, f"job budget of ${job.budget_usd:.2f} is spent (${spent:.2f}); raise it to go on")
        campaign_room = campaign_left(session, job, self.clock())
        if campaign_room is not None and worst_case_usd > campaign_room:
            session.rollback()
            return Refusal(BudgetScope.CAMPAIGN,
                           f"campaign budget: ${max(campaign_room, 0.0):.2f} left to this job, this attempt may cost "
                           f"up to ${worst_case_usd:.2f}; raise the campaign's --budget to go on")
        existing = session.get(Reservation, job.id)
        cap = monthly_budget(session)
        if cap is not None:
            others = committed(session, self.clock(), except_job=job.id)
            if others + worst_case_usd > cap:
                session.rollback()
                return Refusal(BudgetScope.MONTHLY,
                               f"monthly budget: ${others:.2f} of ${cap:.2f} committed, this attempt may cost up to "
                               f"${worst_case_usd:.2f}; raise it with `planner budget set --monthly USD`")
        if existing:
            existing.usd = wanted
        else:
            session.add(Reservation(job_id=job.id, usd=wanted, created_at=self.clock()))
        session.commit()
        return None

    def held_by_others(self, session: Session, job: Job) -> float:
        """The unspent part of other jobs' reservations: money that comes back as they settle."""
        return unspent_reservations(session, except_job=job.id)

    def release(self, session: Session, job: Job) -> None:
        reservation = session.get(Reservation, job.id)
        if reservation is not None:
            session.delete(reservation)
