"""A box never outlives its job or its reservation, with no supervisor watching: the real box script
(planner.run.backends.remote) on the simulated RunPod and Vast.ai (tests/simcloud), the jobs installed from a
locally built wheel, outputs on S3 through moto on loopback.

- a finished job's box deletes its own instance (jobs.boxend, the provider's instance-scoped key);
- at its deadline a box stops its job to checkpoint (exit 75, resumable), reports and ends itself;
- a box whose install fails ends itself after its startup window, and a poll calls it a failure, not a loss.
"""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from jobs import storage
from jobs.protocol import EXIT_DONE, EXIT_INTERRUPTED, report_uri
from jobs.spec import JobSpec
from planner.config import load_settings
from planner.plan import campaigns
from planner.run.backends.base import Status
from planner.run.backends.runpod import RunPodBackend
from planner.run.backends.vast import VastBackend
from planner.run.launching import stage_for_cloud
from pricing.db import utcnow
from pricing.offer import Offer
from pricing.providers.http import RetryPolicy
from tests.simcloud.runpod import FakeRunPod
from tests.simcloud.s3 import S3Server
from tests.simcloud.vast import FakeVast
from tests.simcloud.world import RUNPOD_KEY, VAST_KEY, build_wheel, stop_fakes

WAIT_S = 300  # a generous bound for a busy machine: the assertions are about what happened, not how fast


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("box-wheel"))


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(params=["runpod", "vast"])
def cloud(request, tmp_path, monkeypatch, s3, wheel):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    runpod, vast = FakeRunPod(RUNPOD_KEY, tmp_path / "boxes", grace_s=2.0), FakeVast(VAST_KEY, tmp_path / "boxes",
                                                                                       grace_s=2.0)
    settings = load_settings(runpod_api_key=RUNPOD_KEY, vast_api_key=VAST_KEY, runpod_url=runpod.url,
                             vast_url=vast.url, http_retry_wait_s=0.01, vast_min_interval_s=0,
                             storage_uri=f"s3://{s3.bucket()}/planner", jobs_install=f"planner @ {wheel.as_uri()}",
                             db_url=f"sqlite:///{tmp_path / 'planner.db'}")
    backend = (RunPodBackend if request.param == "runpod" else VastBackend).from_settings(
        settings, RetryPolicy.from_settings(settings))
    yield request.param, backend, runpod if request.param == "runpod" else vast, settings
    stop_fakes(runpod, vast)


def offer(provider: str) -> Offer:
    if provider == "runpod":
        return Offer(provider="runpod", offer_key="NVIDIA RTX A6000|secure", gpu_model="A6000", gpu_name_raw="A6000",
                     vram_gb=48, gpu_count=1, on_demand_usd_per_gpu_hour=0.79, spot_usd_per_gpu_hour=None,
                     tier="secure", location="US", available=True, fetched_at=utcnow())
    return Offer(provider="vast", offer_key="103", gpu_model="A6000", gpu_name_raw="RTX A6000", vram_gb=48,
                 gpu_count=1, on_demand_usd_per_gpu_hour=0.56, spot_usd_per_gpu_hour=0.34, tier="verified",
                 location="US", available=True, fetched_at=utcnow())


def train_spec(settings, model, corpus, steps: int) -> JobSpec:
    job = campaigns.train_bag_job(settings, model=str(model), data=str(corpus), fraction=0.5, seed=3, method="full",
                                  extra={"batch_size": 4, "max_steps": steps, "save_every_steps": 1})
    [job], _ = stage_for_cloud(settings, "runpod", [job])
    return job.spec


def gone(fake, instance_id: str) -> bool:
    return (instance_id not in fake.pods) if isinstance(fake, FakeRunPod) else (int(instance_id) not in fake.instances)


def wait_gone(fake, instance_id: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not gone(fake, instance_id):
        assert time.monotonic() < deadline, f"instance {instance_id} still there"
        time.sleep(0.5)


def deleted_by_itself(fake, instance_id: str) -> bool:
    """The instance was deleted with a key other than the account's: its own instance-scoped one."""
    path = f"/v2/pods/{instance_id}" if isinstance(fake, FakeRunPod) else f"/api/v0/instances/{instance_id}/"
    return any(r["method"] == "DELETE" and r["path"] == path
               and r["headers"].get("Authorization") != f"Bearer {fake.key}" for r in fake.requests)


def the_box(fake, instance_id: str):
    key = instance_id if isinstance(fake, FakeRunPod) else int(instance_id)
    return fake.boxes.get(key) or fake.gone[key]


def test_a_finished_job_ends_its_own_box(cloud, tiny_model_dir, toy_corpus):
    provider, backend, fake, settings = cloud
    spec = train_spec(settings, tiny_model_dir, toy_corpus, steps=2)
    plan = backend.plan(spec, offer(provider), attempt=1, spot=False, usd_per_hour=0.79, max_hours=2)
    handle = backend.launch(plan)
    wait_gone(fake, handle.instance_id)  # no supervisor: the box deleted itself
    report = storage.read_json(report_uri(spec.output_uri, handle.label))
    assert report["exit_code"] == EXIT_DONE and not report["deadline"]
    assert backend.poll(handle).status is Status.SUCCEEDED
    box = the_box(fake, handle.instance_id)
    assert deleted_by_itself(fake, handle.instance_id)
    assert not {"RUNPOD_API_KEY", "VAST_API_KEY", "CONTAINER_API_KEY"} & set(box.request_env)  # never sent by us


def test_a_box_at_its_deadline_checkpoints_reports_and_ends_itself(cloud, tiny_model_dir, toy_corpus):
    provider, backend, fake, settings = cloud
    spec = train_spec(settings, tiny_model_dir, toy_corpus, steps=100000)
    plan = backend.plan(spec, offer(provider), attempt=1, spot=False, usd_per_hour=0.79, max_hours=60 / 3600)
    handle = backend.launch(plan)
    wait_gone(fake, handle.instance_id)
    assert deleted_by_itself(fake, handle.instance_id)
    bill = fake.bills[handle.instance_id if provider == "runpod" else int(handle.instance_id)]
    billing_ended = bill["end"] if provider == "runpod" else bill["segments"][-1][1]
    # billed no further than the deadline: 60 s from the box script's start (the reservation), give or take the
    # moment its first line ran and the fake's own bookkeeping
    started = the_box(fake, handle.instance_id).started_at
    assert billing_ended is not None and billing_ended <= started + timedelta(seconds=60 + 10)
    try:
        report = storage.read_json(report_uri(spec.output_uri, handle.label))
    except OSError:
        report = None  # a machine so slow that the install outlasted the deadline: the watchdog ended the box
    if report is not None:
        assert report["exit_code"] == EXIT_INTERRUPTED and report["deadline"]
        assert backend.poll(handle).status is Status.FAILED  # interrupted, resumable: the supervisor relaunches


def test_a_box_whose_install_fails_ends_itself_and_is_a_failure(cloud):
    provider, backend, fake, settings = cloud
    backend.jobs_install = "planner @ file:///nonexistent/planner-0.0.0-py3-none-any.whl"
    backend.startup_s = 2.0
    spec = JobSpec(job_id="j-install", kind="merge", output_uri=f"{settings.storage_uri}/out/j-install",
                   params={"models": "s3://b/m1,s3://b/m2"})
    plan = backend.plan(spec, offer(provider), attempt=1, spot=provider == "vast", usd_per_hour=0.5, max_hours=1)
    handle = backend.launch(plan)
    box = the_box(fake, handle.instance_id)
    wait_gone(fake, handle.instance_id)  # no supervisor: it ended itself after its startup window
    lines = "\n".join(box.lines())
    assert "did not install" in lines and deleted_by_itself(fake, handle.instance_id)
    result = backend.poll(handle)
    assert result.status is Status.FAILED and "without a report" in result.detail  # counted, not relaunched freely


def test_a_job_whose_box_never_installs_costs_at_most_max_failures_boxes(cloud, tiny_model_dir, toy_corpus):
    """Supervised: each box's install fails; the supervisor ends each one at its startup window with the
    container's last lines, counts it, and fails the job after PLANNER_MAX_FAILURES boxes, naming why."""
    from planner.records import Attempt, Job
    from planner.run.launching import JobOptions, add_jobs, build_supervisor
    from pricing.db import session_factory, upgrade
    from tests.simcloud.world import write_book

    provider, _, fake, settings = cloud
    settings = settings.model_copy(update={"jobs_install": "planner @ file:///nonexistent/planner-0-py3-none-any.whl",
                                           "box_startup_minutes": 0.1, "poll_interval_s": 0.3, "max_failures": 3,
                                           # a broken box's offer cools down (like a lost one); the simulated
                                           # RunPod has two offers, so the third box waits out a short cool-down
                                           "preempted_cooldown": timedelta(seconds=2)})
    upgrade(settings.db_url)
    sessions = session_factory(settings.db_url)
    write_book(sessions)
    spec = train_spec(settings, tiny_model_dir, toy_corpus, steps=2)
    from planner.plan.campaigns import NewJob

    with sessions() as session:
        add_jobs(session, [NewJob(name="bag", spec=spec)], JobOptions(backend=provider, spot="on-demand",
                                                                     max_failures=3))
    supervisor = build_supervisor(settings, sessions)
    deadline = time.monotonic() + WAIT_S
    while True:
        supervisor.tick()
        with sessions() as session:
            job = session.get(Job, spec.job_id)
            if job.state in ("failed", "succeeded", "cancelled", "stopped-by-budget"):
                break
        assert time.monotonic() < deadline, job.state
        time.sleep(0.3)
    created = len(fake.bills)
    assert job.state == "failed" and created == 3, (job.state, created, job.error)
    assert "did not start the job" in job.error and "Could not install" in job.error  # the cause, the log's lines
    with sessions() as session:
        assert [a.outcome for a in session.query(Attempt).filter(Attempt.job_id == spec.job_id)] == ["failed"] * 3
    supervisor.tick()  # the reaper's pass
    time.sleep(1.0)
    assert fake.live() == []  # nothing left billing
