"""Two supervisors of one project watch the same attempts (two `serve`s, or `serve` beside a cron `jobs tick`):
an attempt's end is recorded once (found by bench/cloud_drill.py --project-faults: both supervisors ended the
same outbid attempt, the second settling it again at its own time and re-marking the job preempted while its
relaunch ran)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from planner.plan import budget
from planner.records import Attempt, Job
from planner.run.supervisor import Supervisor
from pricing.db import session_factory
from tests.test_supervisor_faults import Account, Cloud, add_job, place


class Watched(Cloud):
    """The account's backend, with a hook run inside a poll (before its answer reaches the supervisor)."""

    def __init__(self, account: Account, during_poll=lambda: None):
        super().__init__(account)
        self.during_poll = during_poll

    def poll(self, handle):
        answer = super().poll(handle)
        self.during_poll()
        return answer


def test_an_attempt_ended_by_another_supervisor_meanwhile_is_not_ended_again(db_url):
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "bag")
    other = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    hooked = [False]

    def the_other_ticks_first():  # its poll and ours saw the same lost instance; it records the end first
        if not hooked[0]:
            hooked[0] = True
            other.tick()

    late = Watched(account)
    skew = timedelta(minutes=3)
    this = Supervisor(sessions, {"runpod": late}, place(), budget=budget.Ledger(),
                      clock=lambda: other._database_clock() + skew)
    assert this.tick().launched == ["bag"]
    account.instances.clear()  # the host died: both will see the attempt lost
    late.during_poll = the_other_ticks_first
    report = this.tick()

    assert report.relaunching == [] and report.faults == {}  # theirs to relaunch, and no fault of the job
    with sessions() as session:
        [attempt] = session.scalars(select(Attempt)).all()
        recorded = session.get(Job, "bag").state, attempt.outcome, attempt.ended_at, attempt.dollars
    assert recorded[:2] == ("preempted", "lost")
    assert recorded[2] <= other._database_clock() + timedelta(seconds=30)  # the other's end, not ours 3 min ahead

    assert other.tick().launched == ["bag"] and this.tick().relaunching == []
    with sessions() as session:
        first, second = session.scalars(select(Attempt).order_by(Attempt.number)).all()
        assert (first.ended_at, first.dollars) == recorded[2:] and second.outcome == "running"
        assert session.get(Job, "bag").state == "running"
    assert account.created == ["pod-1", "pod-2"] and list(account.instances) == ["pod-2"]


def test_a_launch_whose_claim_lapsed_while_placing_is_left_to_the_supervisor_that_took_it(db_url):
    """Placing outlasted the launch claim (a store that hangs on the corpus, retried for minutes): another
    supervisor took the job and launched it; the first must not launch a second attempt beside it."""
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "bag")
    other = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    placed = place()

    def slow_place(session, job, context):
        with sessions() as elsewhere:  # the claim lapses meanwhile; the other supervisor claims and launches
            elsewhere.execute(update(Job).values(lease_until=other._database_clock() - timedelta(seconds=1)))
            elsewhere.commit()
        assert other.tick().launched == ["bag"]
        return placed(session, job, context)

    this = Supervisor(sessions, {"runpod": Cloud(account)}, slow_place, budget=budget.Ledger())
    report = this.tick()
    assert report.launched == [] and report.faults == {}
    with sessions() as session:
        assert session.scalars(select(Attempt.outcome)).all() == ["running"]
        assert session.get(Job, "bag").state == "running"
    assert account.created == ["pod-1"]
