"""A cloud launch cut off by a dead supervisor (the instance exists, the database never learned its id) is
adopted with what the launch would have recorded: a provider's listing knows only id and label, and the
cloud backends' polls read the output URI and spot flag from the handle (found by bench/cloud_drill.py:
the restarted supervisor crashed on `handle.data["output_uri"]`), and a listing that fails meanwhile is
provider weather: looked at again next tick, never taken for "the instance does not exist"."""
from __future__ import annotations

import json
from datetime import timedelta

from jobs.spec import JobSpec
from planner.plan.placement import NoPlacement
from planner.records import Attempt, Job
from planner.run.backends.base import Backend, BackendError, Handle, PollResult, Status, instance_label
from planner.run.supervisor import Supervisor
from pricing.db import session_factory, utcnow


class ListingOnlyCloud(Backend):
    """Like RunPod and Vast: list_labeled gives id and label only; poll needs the launch's data."""

    name = "stub"

    def __init__(self, label: str, failing_listings: int = 0):
        self.label = label
        self.polled: list[dict] = []
        self.failing_listings = failing_listings

    def plan(self, *args, **kwargs):
        raise AssertionError("nothing is launched here")

    def launch(self, plan):
        raise AssertionError("nothing is launched here")

    def poll(self, handle: Handle) -> PollResult:
        self.polled.append(dict(handle.data))
        handle.data["output_uri"]  # noqa: B018 (what RunPodBackend.poll and VastBackend.poll read first)
        return PollResult(Status.RUNNING)

    def cancel(self, handle):
        pass

    def logs(self, handle, tail=200):
        return ""

    def list_labeled(self):
        if self.failing_listings > 0:
            self.failing_listings -= 1
            raise BackendError("Vast.ai: HTTP 503 on /api/v1/instances/ (gave up after 5 attempts)")
        return [Handle(backend=self.name, instance_id="i-42", label=self.label, data={})]


def cut_off_launch(db_url, output_uri: str = "s3://bucket/planner/cut-off/output"):
    sessions = session_factory(db_url)
    spec = JobSpec("cut-off", "train-bag", output_uri, {})
    with sessions() as session:
        session.add(Job(id=spec.job_id, name="train-bag", kind=spec.kind, spec=spec.to_json(), depends_on="[]",
                        state="launching", backend="stub", spot="spot", max_failures=3))
        session.flush()
        session.add(Attempt(job_id=spec.job_id, number=1, backend="stub", provider="vast", spot=True,
                            usd_per_hour=0.31, outcome="launching", launched_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    return sessions, spec


def test_a_cut_off_cloud_launch_is_adopted_with_its_output_uri(db_url):
    sessions, spec = cut_off_launch(db_url)
    backend = ListingOnlyCloud(instance_label(spec.job_id, 1))
    supervisor = Supervisor(sessions, {"stub": backend}, lambda *args: NoPlacement("none"), poll_interval_s=0.1)
    supervisor.tick()  # adopts
    supervisor.tick()  # polls the adopted instance
    with sessions() as session:
        [attempt] = session.query(Attempt).all()
        assert attempt.outcome == "running" and attempt.instance_id == "i-42"
        data = Handle.from_attempt(attempt).data
    assert data["output_uri"] == spec.output_uri and data["spot"] is True
    assert backend.polled and backend.polled[-1]["output_uri"] == spec.output_uri
    assert json.loads(json.dumps(data)) == data


def test_a_failed_listing_while_adopting_is_retried_not_taken_for_lost(db_url):
    sessions, spec = cut_off_launch(db_url)
    backend = ListingOnlyCloud(instance_label(spec.job_id, 1), failing_listings=3)  # the reaper's listing too
    supervisor = Supervisor(sessions, {"stub": backend}, lambda *args: NoPlacement("none"), poll_interval_s=0.1)
    supervisor.tick()  # the adoption's listing fails (so does the reaper's): no crash, nothing decided
    with sessions() as session:
        [attempt] = session.query(Attempt).all()
        assert attempt.outcome == "launching" and attempt.instance_id is None
    supervisor.tick()
    supervisor.tick()
    with sessions() as session:
        [attempt] = session.query(Attempt).all()
        assert attempt.outcome == "running" and attempt.instance_id == "i-42"


class FinishedBeforeTakeover(ListingOnlyCloud):
    """A box that ran its job, wrote its report and deleted itself (jobs.boxend) before the cut-off launch was
    taken over: no listing shows it any more, its report says how it ended."""

    def __init__(self, label: str, report: PollResult):
        super().__init__(label)
        self.report = report

    def list_labeled(self):
        return []

    def reported(self, label, output_uri):
        return self.report if label == self.label else None


def test_a_cut_off_launch_whose_box_already_finished_ends_as_its_report_says_not_lost(db_url, tmp_path):
    """Found by the cloud drill: a relaunched bag with three steps left finished and deleted its box inside the
    create claim; the takeover saw no instance, called it lost ($0 settled for a box that billed) and launched
    another box for a job that was done."""
    sessions, spec = cut_off_launch(db_url, str(tmp_path / "output"))
    backend = FinishedBeforeTakeover(instance_label(spec.job_id, 1), PollResult(Status.SUCCEEDED, exit_code=0))
    placed = []
    supervisor = Supervisor(sessions, {"stub": backend}, lambda *args: placed.append(args) or NoPlacement("none"),
                            poll_interval_s=0.1)
    supervisor.tick()
    with sessions() as session:
        [attempt] = session.query(Attempt).all()
        assert attempt.outcome == "succeeded" and attempt.dollars > 0  # settled from its row, 5 minutes at $0.31/h
        assert session.get(Job, spec.job_id).state == "succeeded"
    assert not placed


def test_a_cut_off_launch_whose_box_was_interrupted_is_relaunched_from_its_checkpoint(db_url, tmp_path):
    sessions, spec = cut_off_launch(db_url, str(tmp_path / "output"))
    backend = FinishedBeforeTakeover(instance_label(spec.job_id, 1), PollResult(
        Status.FAILED, exit_code=75, detail="interrupted; resumable from its checkpoint"))
    supervisor = Supervisor(sessions, {"stub": backend}, lambda *args: NoPlacement("none"), poll_interval_s=0.1)
    supervisor.tick()
    with sessions() as session:
        [attempt] = session.query(Attempt).all()
        assert attempt.outcome == "preempted" and attempt.dollars > 0
        assert session.get(Job, spec.job_id).state in ("preempted", "pending")
