"""A budget stop lets a checkpointing job save its work first (issue 24): the supervisor asks the box to stop
(SIGTERM), waits for it to checkpoint and exit 75 while the attempt is "stopping" (in the database, so a
restarted supervisor goes on waiting), then settles it and ends the job stopped-by-budget; a box that ignores the
stop is terminated once its grace has run out. The stop starts early enough that the grace fits in the budget,
and a relaunch with a raised budget resumes from the checkpoint the stop wrote.

The box is paused (SIGSTOP) once it is mid-run and the stop is asked while it is paused, so the stop lands
mid-run however fast the machine; the supervisor runs on a fake clock that reaches the budget there."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select

from jobs import storage
from jobs.checkpoint import LATEST, step_name
from jobs.spec import JobSpec
from planner.config import load_settings
from planner.interface import views
from planner.plan import budget, campaigns
from planner.plan.billing import attempt_cost
from planner.plan.placement import Placement
from planner.records import Attempt, Job
from planner.run.backends.base import Backend, Handle, LaunchPlan, PollResult, Status
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor, run_until_final, stage_for_cloud
from planner.run.supervisor import Supervisor
from pricing.db import session_factory
from tests.simcloud.runpod import FakeRunPod
from tests.simcloud.vast import FakeVast
from tests.simcloud.world import RUNPOD_KEY, VAST_KEY, simulated_cloud, stop_fakes
from tests.test_simcloud import s3, wheel  # noqa: F401 (fixtures: the object store, the jobs wheel the boxes install)

ROOT = Path(__file__).resolve().parents[1]
# save_every_steps 4: the stop's checkpoint falls between the periodic ones; a grace long enough for a busy box
TRAIN = {"batch_size": 6, "epochs": 2, "lr": 1e-3, "save_every_steps": 4, "sigterm_grace_seconds": 30}
STEP = re.compile(r"^step (\d+)/(\d+) ", re.MULTILINE)


def wait_until(predicate, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def bag_job(settings, tiny_model_dir, corpus, checkpoint=None):
    return campaigns.train_bag_job(settings, model=str(tiny_model_dir), data=str(corpus), fraction=0.5, seed=3,
                                   method="full", extra=dict(TRAIN), checkpoint=checkpoint)


def steps_logged(text: str) -> tuple[int, int]:
    """(the last finished step, the total) from a train-bag log."""
    found = STEP.findall(text)
    assert found, text[-2000:]
    return int(found[-1][0]), int(found[-1][1])


def latest_step(checkpoint_uri: str) -> int:
    return int(storage.read_bytes(storage.join(checkpoint_uri, LATEST)).decode().removeprefix("step-"))


# ---------------------------------------------------------------------------------- local, the real job


@pytest.fixture
def world(db_url, tmp_path):
    settings = load_settings(db_url=db_url, runs_dir=tmp_path / "runs", local_usd_per_hour=3.6, poll_interval_s=0.2)
    return settings, session_factory(db_url)


def test_a_budget_stop_saves_the_local_job_mid_run_and_a_raised_budget_resumes_it(world, tiny_model_dir, toy_corpus,
                                                                                 tmp_path):
    settings, sessions = world
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "jobs.train_bag", "--model", str(tiny_model_dir), "--data", str(toy_corpus),
                    "--fraction", "0.5", "--seed", "3", "--method", "full", "--output", str(reference),
                    *[f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items()]], check=True, capture_output=True,
                   cwd=ROOT)
    job = bag_job(settings, tiny_model_dir, toy_corpus)
    spec = job.spec
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="local", budget_usd=2.4))
    supervisor = build_supervisor(settings, sessions)
    start = datetime.now(timezone.utc)
    now = [start]
    supervisor.clock = lambda: now[0]
    assert supervisor.tick().launched == [spec.job_id]
    with sessions() as session:
        handle = Handle.from_attempt(attempts_of(session, spec.job_id)[0])
    log = Path(handle.data["run_dir"]) / "log"
    wait_until(lambda: log.exists() and "step 2/" in log.read_text())
    os.killpg(handle.data["pid"], signal.SIGSTOP)  # the box holds still, mid-run, however fast this machine is
    try:
        # $3.60/h: from 2375 s the next check plus the stop's grace (30 s + a poll) would pass $2.40; not from 2300 s
        now[0] = start + timedelta(seconds=2300)
        assert supervisor.tick().waiting == {}
        now[0] = start + timedelta(seconds=2375)
        report = supervisor.tick()
        assert report.finished == [] and report.waiting[spec.job_id].startswith("stopping for budget")
        with sessions() as session:
            [attempt] = attempts_of(session, spec.job_id)
            job_row = session.get(Job, spec.job_id)
            assert attempt.outcome == "stopping" and job_row.state == "running"
            assert job_row.error.startswith("stopping for budget: saving a checkpoint first: spend would reach $2.4")
            shown = views.jobs_view(session, spec.job_id)["jobs"][0]  # what `jobs show` prints
            assert shown["attempts"][0]["outcome"] == "stopping" and shown["error"].startswith("stopping for budget")
            month = budget.month_spend(session, now[0])  # what `budget show` prints
            assert month.accruing_usd == pytest.approx(2.375, abs=0.002)  # the stopping attempt still accrues
    finally:
        os.killpg(handle.data["pid"], signal.SIGCONT)  # the SIGTERM the stop sent is delivered now
    assert supervisor.backends["local"].list_labeled() != []  # a stop is not a kill: the job saves first
    states = run_until_final(supervisor, [spec.job_id], interval_s=0.1, timeout_s=180)  # the clock stays: no grace runs out
    assert states == {spec.job_id: "stopped-by-budget"}
    text = log.read_text()
    stopped_at, total = steps_logged(text)
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        assert attempt.outcome == "stopped-by-budget" and attempt.exit_code == 75
        assert attempt.dollars == pytest.approx(attempt_cost(attempt, start + timedelta(seconds=2375)))
        assert attempt.dollars <= 2.4
        error = session.get(Job, spec.job_id).error
        assert "over the job budget of $2.40" in error and f"saved its work and exited (checkpoint at step {stopped_at})" in error
        assert f"to resume, launch it again with --checkpoint {spec.checkpoint_uri} and a larger --budget" in error
    assert 2 <= stopped_at < total and "interrupted by SIGTERM" in text
    assert latest_step(spec.checkpoint_uri) == stopped_at  # no finished step lost
    assert f"checkpoint at step {stopped_at}:" in text
    assert supervisor.backends["local"].list_labeled() == []

    # the lab raises the budget and relaunches the bag on the stopped job's checkpoint (`planner launch train-bag
    # ... --checkpoint URI --budget USD`): it resumes where the stop saved it and ends as an uninterrupted run
    again = bag_job(settings, tiny_model_dir, toy_corpus, checkpoint=spec.checkpoint_uri)
    with sessions() as session:
        add_jobs(session, [again], JobOptions(backend="local", budget_usd=10.0))
    resumed = build_supervisor(settings, sessions)
    assert run_until_final(resumed, [again.spec.job_id], interval_s=0.1, timeout_s=300) == {
        again.spec.job_id: "succeeded"}
    with sessions() as session:
        [second] = attempts_of(session, again.spec.job_id)
    assert f"resuming from step {stopped_at} of {total}" in resumed.backends["local"].logs(Handle.from_attempt(second))
    mine = load_file(f"{again.spec.output_uri}/model.safetensors")
    ref = load_file(str(reference / "model.safetensors"))
    assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------------- simulated cloud


@pytest.fixture
def cloud(db_url, tmp_path, monkeypatch, s3, wheel):  # noqa: F811 (the fixtures imported above)
    """The simulated RunPod and Vast with a stop grace (SIGTERM to SIGKILL) long enough for a busy machine."""
    with simulated_cloud(db_url, tmp_path, monkeypatch, s3, wheel, grace_s=60.0) as world:
        yield world


# RunPod's pod args start with `exec` (planner.run.backends.runpod.box_args): without it the shell that runs them
# stays PID 1 and the stop's SIGTERM never reaches the job
@pytest.mark.parametrize("provider", ["runpod", "vast"])
def test_a_budget_stop_on_the_cloud_goes_through_the_providers_stop_and_deletes_the_box(
        cloud, provider, tiny_model_dir, toy_corpus):
    settings, sessions, runpod, vast = cloud
    fake = runpod if provider == "runpod" else vast
    [job], _ = stage_for_cloud(settings, provider, [bag_job(settings, tiny_model_dir, toy_corpus)])
    spec = job.spec
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend=provider, spot="on-demand"))
    supervisor = build_supervisor(settings, sessions)
    start = datetime.now(timezone.utc)
    now = [start]
    supervisor.clock = lambda: now[0]
    assert supervisor.tick().launched == [spec.job_id]
    [box] = fake.boxes.values()
    wait_until(lambda: any(line.startswith("step 2/") for line in box.lines()))
    os.killpg(box.process.pid, signal.SIGSTOP)  # mid-run on any machine
    try:
        with sessions() as session:
            [attempt] = attempts_of(session, spec.job_id)
            # the budget this run reaches 300 s (fake) after its launch: the stop starts a grace earlier
            limit = attempt_cost(attempt, attempt.launched_at + timedelta(seconds=300))
            session.get(Job, spec.job_id).budget_usd = limit
            session.commit()
            grace = 30 + settings.poll_interval_s
            now[0] = attempt.launched_at + timedelta(seconds=300 - grace)
        report = supervisor.tick()
        assert spec.job_id in report.waiting, report.lines()
        assert box.stop_reason == "stopped"  # the provider's stop reached the box: SIGTERM (SIGKILL after 60 s)
    finally:
        os.killpg(box.process.pid, signal.SIGCONT)
    route = ("POST", f"/v2/pods/{attempt.instance_id}/action") if provider == "runpod" else (
        "PUT", f"/api/v0/instances/{attempt.instance_id}/")
    stops = [r for r in fake.requests if (r["method"], r["path"]) == route and "stop" in str(r["body"])]
    assert len(stops) == 1 and stops[0]["body"] in ({"action": "stop"}, {"state": "stopped"})
    assert run_until_final(supervisor, [spec.job_id], interval_s=0.3, timeout_s=180) == {
        spec.job_id: "stopped-by-budget"}
    wait_until(lambda: fake.kept() == [], timeout=30)  # deleted, not left stopped (its disk would bill on)
    stopped_at, total = steps_logged("\n".join(box.lines()))
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        assert attempt.outcome == "stopped-by-budget" and attempt.exit_code == 75, attempt.detail
        assert attempt.dollars <= limit
        assert "saved its work and exited" in session.get(Job, spec.job_id).error
    assert 2 <= stopped_at < total and latest_step(spec.checkpoint_uri) == stopped_at
    assert storage.exists(storage.join(spec.checkpoint_uri, step_name(stopped_at)))
    assert fake.billed_usd("planner-") <= limit  # the fake bills real seconds, well inside the fake clock's
    assert fake.live() == []


# ---------------------------------------------------------------------------------- a box that ignores the stop


class Stubborn(Backend):
    """A provider whose box ignores the stop (a job that never reaches a safe point, a lost signal)."""

    name = "runpod"

    def __init__(self):
        self.instances: dict[str, str] = {}
        self.stops: list[str] = []

    def plan(self, spec, offer, *, attempt, spot, usd_per_hour, disk_gb=None, max_hours=None):
        return LaunchPlan(self.name, spec.job_id, attempt, spot, usd_per_hour, ("true",), {}, project=self.project)

    def launch(self, plan):
        instance = f"pod-{len(self.instances) + 1}"
        self.instances[instance] = plan.label
        return Handle(self.name, instance, plan.label)

    def poll(self, handle):
        return PollResult(Status.RUNNING if handle.instance_id in self.instances else Status.LOST)

    def stop(self, handle):
        self.stops.append(handle.instance_id)
        return True

    def cancel(self, handle):
        self.instances.pop(handle.instance_id, None)

    def logs(self, handle, tail=200):
        return ""

    def list_labeled(self):
        return [Handle(self.name, instance, label) for instance, label in self.instances.items()]


def add_stub_job(sessions, job_id: str, kind: str, params: dict) -> None:
    with sessions() as session:
        session.add(Job(id=job_id, name=job_id, kind=kind, backend="runpod", budget_usd=1.0,
                        spec=JobSpec(job_id, kind, f"/tmp/{job_id}", params).to_json()))
        session.commit()


def test_a_box_that_ignores_the_stop_is_terminated_once_its_grace_has_run_out_even_across_a_restart(db_url):
    sessions, cloud = session_factory(db_url), Stubborn()
    add_stub_job(sessions, "bag", "train-bag", {"sigterm_grace_seconds": 5})
    add_stub_job(sessions, "merged", "merge", {"models": ["a", "b"], "weights": [1, 1]})  # keeps no checkpoint
    place = lambda session, job, context: Placement("runpod", None, False, usd_per_hour=3.6, worst_case_usd=0.5)  # noqa: E731
    start = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)

    def supervisor_at(seconds: float) -> Supervisor:
        return Supervisor(sessions, {"runpod": cloud}, place, clock=lambda: start + timedelta(seconds=seconds),
                          poll_interval_s=10)

    assert len(supervisor_at(0).tick().launched) == 2
    # $0.001 a second against $1.00 each: the bag's stop has a grace of 5 s + a 10 s poll, so at 970 s the next
    # check plus the grace (995 s) still fits; at 980 s it would not: the stop is asked there (the merge, which a
    # stop would save nothing of, is terminated at once when its next check would pass the budget)
    assert supervisor_at(970).tick().waiting == {} and cloud.stops == []
    report = supervisor_at(980).tick()
    assert "bag" in report.waiting and report.finished == [] and cloud.stops == ["pod-1"]
    report = supervisor_at(994).tick()  # another supervisor (a restart) finds it stopping, inside its grace
    assert report.finished == [("merged", "stopped-by-budget")] and "bag" in report.waiting
    assert list(cloud.instances) == ["pod-1"]
    report = supervisor_at(995).tick()  # the grace has run out: terminated
    assert report.finished == [("bag", "stopped-by-budget")]
    assert cloud.instances == {} and cloud.stops == ["pod-1"]  # asked once; the merge never asked
    with sessions() as session:
        dollars = {a.job_id: a.dollars for a in session.scalars(select(Attempt))}
        assert dollars == {"bag": pytest.approx(0.995), "merged": pytest.approx(0.994)}
        assert all(a.outcome == "stopped-by-budget" for a in session.scalars(select(Attempt)))
        bag = session.scalars(select(Attempt).where(Attempt.job_id == "bag")).one()
        assert "did not exit within 15 s of SIGTERM: terminated" in bag.detail
        assert "over the job budget of $1.00" in session.get(Job, "bag").error


@pytest.mark.parametrize("scope", ["campaign", "monthly"])
def test_the_stop_starts_a_grace_early_against_the_campaign_and_the_monthly_budget_too(db_url, scope):
    from planner.records import Campaign

    sessions, cloud = session_factory(db_url), Stubborn()
    with sessions() as session:
        if scope == "campaign":
            session.add(Campaign(id="c1", kind="bagging", params="{}", budget_usd=1.0))
        else:
            budget.set_monthly_budget(session, 1.0)
        session.add(Job(id="bag", name="bag", kind="train-bag", backend="runpod",
                        campaign_id="c1" if scope == "campaign" else None,
                        spec=JobSpec("bag", "train-bag", "/tmp/bag", {"sigterm_grace_seconds": 5}).to_json()))
        session.commit()
    place = lambda session, job, context: Placement("runpod", None, False, usd_per_hour=3.6, worst_case_usd=0.5)  # noqa: E731
    start = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)

    def tick_at(seconds: float):
        return Supervisor(sessions, {"runpod": cloud}, place, clock=lambda: start + timedelta(seconds=seconds),
                          poll_interval_s=10).tick()

    tick_at(0)
    assert tick_at(970).waiting == {} and cloud.stops == []  # by 995 s (next check + 15 s grace): $0.995
    assert "bag" in tick_at(980).waiting and cloud.stops == ["pod-1"]  # by 1005 s it would pass $1.00
    assert tick_at(995).finished == [("bag", "stopped-by-budget")]
    with sessions() as session:
        attempt = session.scalars(select(Attempt)).one()
        assert attempt.dollars == pytest.approx(0.995) and attempt.dollars <= 1.0
        assert f"{'the campaign' if scope == 'campaign' else 'this month'}'s spend would reach $1.0" in (
            session.get(Job, "bag").error)


# ---------------------------------------------------------------------------------- the providers' stop, as documented

STUBBORN_JOB = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(75)); "
                "print('up', flush=True); time.sleep(120)")  # a job that exits 75 on SIGTERM


def test_runpods_stop_action_sigterms_the_pod_which_bills_its_disk_until_deleted(tmp_path):
    from planner.run.backends.runpod import RunPodBackend
    from pricing.providers.runpod_api import RunPodAPI

    fake = FakeRunPod(RUNPOD_KEY, tmp_path / "boxes", grace_s=30.0)
    try:
        api = RunPodAPI(fake.url, RUNPOD_KEY)
        pod = api.create_pod({"name": "planner-x-a1", "image": "img", "cloud": "COMMUNITY", "disk": 500,
                              "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
                              "args": f"exec python -c \"{STUBBORN_JOB}\""})
        box = fake.boxes[pod["id"]]
        wait_until(lambda: "up" in box.lines())
        backend, handle = RunPodBackend(api, image="img", jobs_install="x"), Handle("runpod", pod["id"], "planner-x-a1")
        assert backend.stop(handle) is True
        wait_until(lambda: not box.alive, timeout=30)
        assert box.exit_code == 75 and box.stop_reason == "stopped"  # SIGTERM, not SIGKILL
        seen = api.pod(pod["id"])
        assert seen["status"] == "EXITED" and seen["actions"] == ["start", "terminate"] and seen["cost"] == 0
        backend.stop(handle)  # a second stop is a 409 (EXITED allows no stop): quiet
        assert [r["path"] for r in fake.requests if r["method"] == "POST"].count(f"/v2/pods/{pod['id']}/action") == 2
        stopped = fake.billed_usd("planner-")
        wait_until(lambda: fake.billed_usd("planner-") > stopped, timeout=10)  # the stopped pod's disk bills on
        backend.cancel(handle)
        assert fake.kept() == [] and api.pod(pod["id"]) is None
        deleted = fake.billed_usd("planner-")
        time.sleep(1.1)
        assert fake.billed_usd("planner-") == deleted  # nothing bills once it is deleted
    finally:
        stop_fakes(fake)


def test_vasts_stop_sigterms_the_instance_which_bills_its_storage_until_destroyed(tmp_path):
    from planner.run.backends.vast import VastBackend
    from pricing.providers.vast_api import VastAPI

    fake = FakeVast(VAST_KEY, tmp_path / "boxes", grace_s=30.0)
    try:
        api = VastAPI(fake.url, VAST_KEY)
        instance = api.create(103, {"client_id": "me", "image": "img", "disk": 500, "label": "planner-x-a1",
                                    "runtype": "args", "onstart": "/bin/sh", "args": ["-c", f"exec python -c \"{STUBBORN_JOB}\""]})
        box = fake.boxes[instance]
        wait_until(lambda: "up" in box.lines())
        backend, handle = VastBackend(api, image="img", jobs_install="x"), Handle("vast", str(instance), "planner-x-a1")
        assert backend.stop(handle) is True
        row = fake.instances[instance]
        assert (row["intended_status"], row["next_state"]) == ("stopped", "stopped")  # asked; the box is stopping
        wait_until(lambda: not box.alive, timeout=30)
        assert box.exit_code == 75 and box.stop_reason == "stopped"
        [listed] = api.labelled(["planner-x-a1"])
        assert {listed["cur_state"], listed["intended_status"], listed["next_state"]} == {"stopped"}
        assert fake.bills[instance]["segments"][-1][2] == pytest.approx(0.144 * 500 / 720)  # storage only now
        backend.stop(handle)  # already stopped: quiet
        backend.cancel(handle)
        assert fake.kept() == [] and fake.bills[instance]["segments"][-1][1] is not None
    finally:
        stop_fakes(fake)
