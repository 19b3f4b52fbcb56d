"""A store that cannot answer now is weather, never a fact about the data (issue 24, found by bench/drill.py):
sizing a corpus while its store is down used to fall back to the stated assumption (1 M records), so a
relaunch planned then reserved thousands of times the job's real worst case and the job was stopped by
budget, or failed, for good. The corpus's store here is a real S3 API (moto on loopback) that refuses
every request for a while, both ways a store goes away: 503 ServiceUnavailable, and the connection reset.
The model's config.json, read from the store to size a job, is held to the same rule."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from jobs import storage
from jobs.spec import JobSpec
from planner.config import load_settings
from planner.plan.budget import Ledger
from planner.plan.campaigns import NewJob
from planner.plan.estimate import StoreUnreachable, corpus_stats, model_shape
from planner.plan.plans import Placer
from planner.records import Attempt, Job, Reservation
from planner.run.launching import JobOptions, add_jobs
from planner.run.supervisor import Supervisor
from pricing.db import session_factory, utcnow
from pricing.offer import Offer
from tests.simcloud.s3 import OUTAGE_MODES, S3Server
from tests.test_supervisor_faults import Account, Cloud

THIS_MACHINE = dict(provider="local", offer_key="local", gpu_model="CPU", gpu_name_raw="CPU", vram_gb=0.0, gpu_count=1,
                    on_demand_usd_per_gpu_hour=3.6, spot_usd_per_gpu_hour=None, tier="local", location="localhost",
                    available=True, known_gpu=False, vcpus=2.0, ram_gb=16.0, tflops=0.2)


@pytest.fixture(scope="module")
def server():
    s3 = S3Server()
    yield s3
    s3.stop()


@pytest.fixture
def corpus(server, toy_corpus, monkeypatch) -> str:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's retries, cut so a refused read fails in seconds
    uri = f"s3://{server.bucket()}/data/train.jsonl"
    storage.write_bytes_atomic(uri, toy_corpus.read_bytes())
    return uri


class Here(Cloud):
    """This machine as a backend that only counts its launches (the sizing is what is tested)."""

    name = "local"


@pytest.mark.parametrize("mode", OUTAGE_MODES)
def test_a_corpus_on_a_store_that_is_down_is_not_sized_by_the_assumption(server, corpus, tiny_model_dir, mode):
    measured = corpus_stats(corpus)
    assert measured.measured and measured.records < 1000
    model = corpus.replace("data/train.jsonl", "model")
    storage.write_bytes_atomic(f"{model}/config.json", (tiny_model_dir / "config.json").read_bytes())
    shape = model_shape(model)
    server.outage(600, mode)
    try:
        with pytest.raises(StoreUnreachable) as refused:
            corpus_stats(corpus)
        with pytest.raises(StoreUnreachable):  # not "cannot size model": that fails the job for good
            model_shape(model)
    finally:
        server.outage(0)
    assert model_shape(model) == shape
    assert "\n" not in str(refused.value) and f"the store holding {corpus} is unreachable" in str(refused.value)
    assert corpus_stats(corpus) == measured  # back: sized as before
    # facts about the store stay what they were: a missing object or bucket is sized by the stated assumption
    assert not corpus_stats(corpus.replace("train.jsonl", "missing.jsonl")).measured
    assert not corpus_stats("s3://no-such-bucket-here/train.jsonl").measured
    assert not storage.is_weather(PermissionError("Access Denied")) and not storage.is_weather(FileNotFoundError())


def test_a_job_planned_while_its_store_is_down_waits_then_is_sized_correctly(db_url, server, corpus, tiny_model_dir,
                                                                             tmp_path):
    sessions = session_factory(db_url)
    account = Account()
    here = Here(account)
    placer = Placer(load_settings(db_url=db_url), {"local": here}, Offer(**THIS_MACHINE, fetched_at=utcnow()))
    supervisor = Supervisor(sessions, {"local": here}, placer, budget=Ledger(), poll_interval_s=0.05)
    spec = JobSpec("bag", "train-bag", str(tmp_path / "out"), {"model": str(tiny_model_dir), "data": corpus,
                                                              "fraction": 0.5, "seed": 0, "method": "full"})
    with sessions() as session:
        add_jobs(session, [NewJob("bag", spec)], JobOptions(backend="local", budget_usd=2.0))
        session.commit()

    server.outage(600, "503")
    try:
        report = supervisor.tick()
        supervisor.tick()
    finally:
        server.outage(0)
    with sessions() as session:
        job = session.get(Job, "bag")
        assert job.state == "pending" and job.lease_owner is None  # not stopped by budget, not failed: waiting
        assert job.error.startswith(f"waiting: the store holding {corpus} is unreachable") and "\n" not in job.error
        assert job.error.endswith("; retrying")
        assert not session.scalars(select(Attempt)).all() and session.get(Reservation, "bag") is None
    assert not account.created and not report.faults  # a wait, not a fault of the job's step

    supervisor.tick()
    with sessions() as session:
        job = session.get(Job, "bag")
        assert job.state == "running" and job.error is None, job.error
        hours = json.loads(job.requirements)["hours"]
        reserved = session.get(Reservation, "bag").usd
    assert len(account.created) == 1
    assert hours < 1.0 and reserved <= 2.0  # the toy corpus's size, measured: not a million records


def test_plan_says_in_one_line_that_the_store_is_down_and_exits_1(cli, server, corpus):
    cli("db", "upgrade")
    server.outage(600, "503")
    try:
        result = cli("plan", "train-bag", "--fraction", "0.4", "--data", corpus, code=1)
    finally:
        server.outage(0)
    said = result.stderr.strip()
    assert "\n" not in said and f"the store holding {corpus} is unreachable" in said and "Traceback" not in said
