"""The BOOM bagging campaign (tiny model: 5 bags, merge, encode, evaluate) end to end on the simulated
cloud (tests/simcloud): RunPod REST v2 and Vast.ai fakes that really run each box's command as a
subprocess with only the environment its create request carried, S3 through moto on loopback, the
jobs installed on each box from a locally built wheel. Each run ends with the merged weights bitwise
equal to the local run's, no box left running, spend within budget and the settled dollars equal to
what the simulated providers billed."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from planner.config import load_settings
from planner.plan import campaigns
from planner.records import Attempt, Job
from planner.run.launching import JobOptions, add_jobs, build_supervisor, run_until_final, stage_for_cloud
from pricing.db import session_factory
from tests.simcloud.s3 import S3Server
from tests.simcloud.world import (
    BILLING_TOLERANCE,
    RUNPOD_KEY,
    VAST_KEY,
    build_wheel,
    simulated_cloud,
    weights,
)

# a chunk every offer holds, so the local reference and each cloud box chunk alike (sorted chunks of another
# size round differently: jobs.gradcache)
TRAIN = {"batch_size": 4, "max_steps": 3, "save_every_steps": 1, "mini_batch_size": 8}
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
BUDGET = 5.0


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("simcloud-wheel"))


@pytest.fixture(scope="session")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    # query/positive as well as id/text: the planner sizes an encode from a training-format sample today
    path.write_text("".join(json.dumps({"id": i, "text": f"document number {i} about topic {i % 3}",
                                        "query": f"topic {i % 3}", "positive": f"document number {i}"}) + "\n"
                            for i in range(12)))
    return path


def campaign(settings, model, corpus, docs):
    plan = campaigns.bagging(settings, model=str(model), data=str(corpus), fractions=FRACTIONS, seed=1,
                             encode=str(docs), evaluate=str(corpus), train_extra=dict(TRAIN))
    plan.jobs = [j for j in plan.jobs if not (j.spec.kind == "evaluate" and j.name != "evaluate merged")]
    return plan


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, tiny_model_dir, toy_corpus, docs):
    """The same campaign on the local backend: the weights every cloud run must reproduce bit for bit."""
    from pricing.db import upgrade

    work = tmp_path_factory.mktemp("local-run")
    url = f"sqlite:///{work / 'planner.db'}"
    upgrade(url)
    settings = load_settings(db_url=url, runs_dir=work / "runs", poll_interval_s=0.2, storage_uri=None)
    sessions = session_factory(url)
    plan = campaign(settings, tiny_model_dir, toy_corpus, docs)
    with sessions() as session:
        add_jobs(session, plan.jobs, JobOptions(backend="local"))
    states = run_until_final(build_supervisor(settings, sessions), [j.spec.job_id for j in plan.jobs],
                             interval_s=0.2, timeout_s=600)
    with sessions() as session:
        errors = {j.id: j.error for j in session.query(Job) if j.state != "succeeded"}
    assert set(states.values()) == {"succeeded"}, errors
    merged = [j for j in plan.jobs if j.spec.kind == "merge"][0].spec.output_uri
    return weights(merged)


@pytest.fixture
def sim(db_url, tmp_path, monkeypatch, s3, wheel):
    with simulated_cloud(db_url, tmp_path, monkeypatch, s3, wheel, grace_s=3.0) as world:
        yield world


def run_campaign(sim, tiny_model_dir, toy_corpus, docs, backend, spot, on_tick=None):
    settings, sessions, runpod, vast = sim
    plan = campaign(settings, tiny_model_dir, toy_corpus, docs)
    plan.jobs, uploads = stage_for_cloud(settings, backend, plan.jobs)
    assert {Path(u.path).name for u in uploads} >= {"train.jsonl", "docs.jsonl", Path(tiny_model_dir).name}
    with sessions() as session:
        from planner.records import Campaign

        row = Campaign(id=campaigns.new_id("bagging"), kind="bagging", params="{}", budget_usd=BUDGET)
        add_jobs(session, plan.jobs, JobOptions(backend=backend, spot=spot), row)
    supervisor = build_supervisor(settings, sessions)
    ids = [j.spec.job_id for j in plan.jobs]
    deadline = time.monotonic() + 400
    while True:
        report = supervisor.tick()
        if on_tick is not None:
            on_tick(report, supervisor)
        with sessions() as session:
            states = {j.id: j.state for j in session.query(Job).filter(Job.id.in_(ids))}
        if all(s in ("succeeded", "failed", "cancelled", "stopped-by-budget") for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.3)
    return plan, states


def check_the_run(sim, plan, states, local_run):
    settings, sessions, runpod, vast = sim
    errors = {}
    with sessions() as session:
        for job in session.query(Job):
            errors[job.id] = job.error
    assert set(states.values()) == {"succeeded"}, [(j, states[j], errors[j]) for j in states if states[j] != "succeeded"]
    merged = [j for j in plan.jobs if j.spec.kind == "merge"][0].spec.output_uri
    assert merged.startswith("s3://")
    cloud = weights(merged)
    assert cloud.keys() == local_run.keys()
    assert all(cloud[k].dtype == local_run[k].dtype and bool((cloud[k] == local_run[k]).all()) for k in cloud)
    time.sleep(0.5)
    assert runpod.live() == [] and vast.live() == []  # zero orphans
    with sessions() as session:
        attempts = session.query(Attempt).all()
        settled = sum(a.dollars for a in attempts)
        dump = "\n".join(str(row) for table in ("jobs", "attempts", "campaigns")
                         for row in session.execute(text(f"SELECT * FROM {table}")))
    billed = runpod.billed_usd("planner-") + vast.billed_usd("planner-")
    assert settled <= BUDGET
    assert settled == pytest.approx(billed, **BILLING_TOLERANCE), (settled, billed)
    secret = json.loads(json.dumps(dict(__import__("os").environ)))["AWS_SECRET_ACCESS_KEY"]
    assert secret not in dump and RUNPOD_KEY not in dump and VAST_KEY not in dump
    assert RUNPOD_KEY not in runpod.everything_sent() and VAST_KEY not in vast.everything_sent()
    for fake in (runpod, vast):
        for box in [*fake.boxes.values(), *fake.gone.values()]:
            assert box.request_env.get("AWS_SECRET_ACCESS_KEY") == secret  # the store's keys reach the box
            assert not {"RUNPOD_API_KEY", "VAST_API_KEY", "PLANNER_API_TOKEN"} & set(box.request_env)
            assert all(secret.encode() not in argv for argv in box.environ_of_processes())  # never a cmdline
            site = box.dir / "site"
            assert (site / "jobs" / "run.py").exists()  # the box's install step ran from the wheel
    return attempts


def test_bagging_on_runpod(sim, tiny_model_dir, toy_corpus, docs, local_run):
    plan, states = run_campaign(sim, tiny_model_dir, toy_corpus, docs, "runpod", "on-demand")
    attempts = check_the_run(sim, plan, states, local_run)
    assert {a.provider for a in attempts} == {"runpod"}
    assert all(a.billed_usd_per_hour for a in attempts if a.outcome == "succeeded")


def test_bagging_on_vast_interruptible_with_outbids(sim, s3, tiny_model_dir, toy_corpus, docs, local_run):
    settings, sessions, runpod, vast = sim
    # two bags pinned mid-run, however fast this machine is: the store holds each one's first upload of a
    # checkpoint past step 1 (jobs.checkpoint waits for it before DONE), the test outbids the box, and the
    # resumed attempt uploads freely
    later_step = re.compile(r"/([^/]*bag[^/]*)/checkpoints/step-(\d+)/")
    pinned: list[str] = []
    outbid: set[str] = set()
    lock = threading.Lock()

    def first_two_bags_past_step_one(path: str) -> bool:
        found = later_step.search(path)
        if found is None or int(found[2]) < 2:
            return False
        with lock:
            if found[1] not in pinned and len(pinned) < 2:
                pinned.append(found[1])
            return found[1] in pinned and found[1] not in outbid

    def outbid_pinned_bags(report, supervisor):
        with sessions() as session:
            live = {a.job_id: a.instance_id for a in session.query(Attempt).filter(Attempt.outcome == "running")}
        for job_id in list(pinned):
            if job_id not in outbid and live.get(job_id):
                with lock:
                    outbid.add(job_id)
                vast.outbid(int(live[job_id]))

    s3.hold(first_two_bags_past_step_one)
    try:
        plan, states = run_campaign(sim, tiny_model_dir, toy_corpus, docs, "vast", "spot", outbid_pinned_bags)
    finally:
        s3.release_all()
    attempts = check_the_run(sim, plan, states, local_run)
    assert {a.provider for a in attempts} == {"vast"} and all(a.spot for a in attempts)
    assert len(outbid) == 2 and {a.job_id for a in attempts if a.outcome == "preempted"} == outbid


def test_bagging_auto_across_both(sim, tiny_model_dir, toy_corpus, docs, local_run):
    settings, sessions, runpod, vast = sim
    runpod.capacity[("NVIDIA GeForce RTX 4090", "COMMUNITY")] = 3  # then 400 no capacity: the rest go elsewhere
    # on-demand: RunPod's community 4090 ($0.44/h) is cheapest until its capacity runs out, then Vast's ($0.46/h)
    plan, states = run_campaign(sim, tiny_model_dir, toy_corpus, docs, "auto", "on-demand")
    attempts = check_the_run(sim, plan, states, local_run)
    assert {a.provider for a in attempts if a.outcome == "succeeded"} == {"runpod", "vast"}
