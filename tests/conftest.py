from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.dbs import BACKENDS, fresh_database
from tests.tiny import build_tiny_model, write_toy_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# CI replays the same examples every run; HYPOTHESIS_PROFILE=explore searches fresh ones locally.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 embedder in sentence-transformers format (read-only: copy before changing)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("corpus") / "train.jsonl")


@pytest.fixture(autouse=True)
def _isolated_planner_env(tmp_path, monkeypatch):
    """Every test gets its own database and config file, and no real keys or provider URLs."""
    monkeypatch.setenv("PLANNER_DB_URL", f"sqlite:///{tmp_path / 'planner.db'}")
    monkeypatch.setenv("PLANNER_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("PLANNER_VAST_MIN_INTERVAL_S", "0")  # no 6 s spacing of fake Vast searches
    monkeypatch.setenv("PLANNER_HTTP_RETRY_WAIT_S", "0.01")
    for var in ("RUNPOD_API_KEY", "VAST_API_KEY", "PLANNER_RUNPOD_URL", "PLANNER_VAST_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _fresh_s3_clients():
    """s3fs caches a filesystem per constructor arguments, and the endpoint it reached an earlier test's S3
    server on (AWS_ENDPOINT_URL, read from the environment) is not one of them: each test starts without."""
    try:
        import s3fs
    except ImportError:
        yield
        return
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path, monkeypatch) -> str:
    """An upgraded, empty database (SQLite, and PostgreSQL when PLANNER_TEST_PG_URL is set)."""
    from pricing.db import upgrade

    with fresh_database(request.param, tmp_path) as url:
        upgrade(url)
        monkeypatch.setenv("PLANNER_DB_URL", url)
        yield url


@pytest.fixture
def recorded_providers(httpserver, monkeypatch):
    """Fake RunPod and Vast on 127.0.0.1 answering with the recorded payloads; PLANNER_*_URL point at them."""
    from planner.run.replay import recorded_payload

    monkeypatch.setenv("PLANNER_RUNPOD_URL", httpserver.url_for("/rp"))
    monkeypatch.setenv("PLANNER_VAST_URL", httpserver.url_for("/vast"))
    monkeypatch.setenv("PLANNER_VAST_DISK_GB", "50")
    httpserver.expect_request("/rp/graphql", method="POST").respond_with_data(
        recorded_payload("/graphql"), content_type="application/json")
    httpserver.expect_request("/rp/v2/catalog/gpus", method="GET").respond_with_json(v2_catalog())  # with a key
    httpserver.expect_request("/vast/api/v0/bundles/", method="POST").respond_with_data(
        recorded_payload("/api/v0/bundles/"), content_type="application/json")
    return httpserver


def v2_catalog() -> dict:
    """The recorded GraphQL gpuTypes as RunPod REST v2 `/v2/catalog/gpus?include=AVAILABILITY` answers
    (docs/providers/runpod.md, "Prices and availability": per-GPU list prices, availability upper case)."""
    import json

    from planner.run.replay import recorded_payload

    gpus = []
    for g in json.loads(recorded_payload("/graphql"))["data"]["gpuTypes"]:
        stock = (g.get("lowestPrice") or {}).get("stockStatus")
        gpus.append({"id": g["id"], "name": g.get("displayName"), "manufacturer": "NVIDIA", "memory": g["memoryInGb"],
                     "secure": bool(g.get("securePrice")), "community": bool(g.get("communityPrice")),
                     "price": {"secure": g.get("securePrice"), "community": g.get("communityPrice")},
                     "availability": stock.upper() if stock else "NONE",
                     "dataCenters": [{"id": "US-TX-3", "name": "US-TX-3", "availability": stock.upper()}] if stock else []})
    return {"gpus": gpus}


@pytest.fixture
def cli():
    """Invoke the planner CLI in-process; asserts the exit code (None: any) and returns the result."""
    from typer.testing import CliRunner

    from planner.interface.cli import app

    runner = CliRunner()

    def invoke(*args: str, code: int | None = 0):
        result = runner.invoke(app, list(args), catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, result.output + result.stderr
        return result

    return invoke


@pytest.fixture
def campaign(recorded_providers, tiny_model_dir, toy_corpus, tmp_path, monkeypatch):
    """(tests/test_report.py, the report page's browser test) A finished two-bag campaign (one bag interrupted once) with an evaluation of each bag and the merge."""
    from planner.config import load_settings
    from planner.plan import campaigns
    from planner.records import Attempt, Campaign
    from planner.run.launching import JobOptions, add_jobs
    from planner.run.pricebook import refresh_book, sessions_for
    from pricing import db
    from pricing.db import utcnow

    monkeypatch.setenv("PLANNER_RUNS_DIR", str(tmp_path / "runs"))
    settings = load_settings()
    db.upgrade(settings.db_url)
    refresh_book(settings)
    sessions = sessions_for(settings)
    merged = str(tmp_path / "merged")
    jobs = [campaigns.evaluate_job(settings, name, model, str(toy_corpus), ())
            for name, model in (("bag 0.2", str(tiny_model_dir)), ("bag 1", str(tiny_model_dir)), ("merged", merged))]
    merge = campaigns.merge_job(settings, [str(tiny_model_dir), str(tiny_model_dir)], [0.2, 1.0], (), output=merged)
    scores = {0: 0.41, 1: 0.52, 2: 0.55}
    t0 = utcnow().replace(microsecond=0) + timedelta(minutes=1)  # after the book's snapshot
    with sessions() as session:
        rows = add_jobs(session, [*jobs, merge], JobOptions(backend="vast"),
                        Campaign(id="camp-report", kind="bagging", params="{}", budget_usd=3.0, created_at=t0))
        attempts = {  # job index -> [(outcome, minutes from t0, minutes long, $/h)]
            0: [("preempted", 0, 30, 0.4), ("succeeded", 35, 60, 0.4)],
            1: [("succeeded", 0, 90, 0.6)],
            2: [("succeeded", 100, 20, 0.3)],
            3: [("launch-failed", 95, 0, 0.3), ("succeeded", 96, 3, 0.3)]}
        for index, row in enumerate(rows):
            row.state, row.finished_at = "succeeded", t0 + timedelta(minutes=120)
            row.requirements = json.dumps({"expected_usd": 0.5 + index, "hours": 1.0 + index})
            for number, (outcome, start, minutes, rate) in enumerate(attempts[index], 1):
                launched = t0 + timedelta(minutes=start)
                session.add(Attempt(job_id=row.id, number=number, backend="vast", provider="vast", gpu_model="RTX 4090",
                                    usd_per_hour=rate, outcome=outcome, launched_at=launched,
                                    ended_at=launched + timedelta(minutes=minutes), dollars=rate * minutes / 60,
                                    detail="preempted: outbid" if outcome == "preempted" else None))
        session.commit()
    for index, item in enumerate(jobs):
        out = tmp_path / "runs" / "outputs" / item.spec.job_id / "output"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"overall": {"ndcg@10": scores[index], "recall@10": 0.7,
                                                                  "mrr@10": 0.3}}))
    return settings, sessions, [*jobs, merge], t0
