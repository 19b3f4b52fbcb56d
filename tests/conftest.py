from __future__ import annotations

import os
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
