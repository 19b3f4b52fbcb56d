"""`planner serve`: the scheduled refresh, clean shutdown, and the HTTP API with its token rule."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from planner.interface.web import check_bind, create_app

LOCAL = "http://127.0.0.1"  # the Host a local browser sends; TestClient's default "testserver" is answered 421
LAN = "http://192.0.2.10:8000"  # an address of this machine's, served with `--host 0.0.0.0`
from planner.config import load_settings
from planner.run.scheduler import build_scheduler, serve
from pricing import db


@pytest.fixture
def upgraded(recorded_providers):
    """Settings (pointing at the fake providers) on an upgraded, empty database."""
    settings = load_settings()
    db.upgrade(settings.db_url)
    return settings


def test_stale_book_refreshes_at_start_else_on_cron(upgraded, recorded_providers):
    job = build_scheduler(upgraded).get_job("refresh-prices")
    assert abs(job.next_run_time - datetime.now(timezone.utc)) < timedelta(seconds=30)
    from planner.run.pricebook import refresh_book

    refresh_book(upgraded)
    job = build_scheduler(upgraded).get_job("refresh-prices")
    now = datetime.now(timezone.utc)
    assert getattr(job, "next_run_time", None) is None  # no immediate run: the cron trigger decides
    assert job.trigger.get_next_fire_time(None, now).minute == 0
    assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time > 0


def test_bad_cron_is_a_clear_error(upgraded, monkeypatch):
    monkeypatch.setenv("PLANNER_REFRESH_CRON", "every hour")
    with pytest.raises(ValueError, match="PLANNER_REFRESH_CRON='every hour' is not a crontab line"):
        build_scheduler(load_settings())


def test_serve_refreshes_stale_book_and_stops_cleanly(upgraded, recorded_providers):
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(upgraded, "127.0.0.1", 0), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:  # a failing assertion must still stop the server: its thread would keep the test run from exiting
        deadline = time.monotonic() + 30
        client = TestClient(create_app(upgraded), base_url=LOCAL)
        while time.monotonic() < deadline and not client.get("/prices").json()["offers"]:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert client.get("/prices").json()["stale_providers"] == []


@pytest.mark.parametrize("api,sig", [(False, signal.SIGTERM), (True, signal.SIGTERM), (True, signal.SIGINT)],
                         ids=["no-api-sigterm", "api-sigterm", "api-sigint"])
def test_a_signal_stops_serve_cleanly_with_exit_0(httpserver, api, sig):
    """The signal arrives in the middle of a refresh: it finishes, its leases are released, exit 0."""
    import json
    import urllib.request

    from planner.run.replay import recorded_payload
    from pricing import store

    asked = threading.Event()

    def slow_vast(request):
        from werkzeug import Response

        asked.set()
        time.sleep(1.0)
        return Response(recorded_payload("/api/v0/bundles/"), content_type="application/json")

    upgraded = load_settings()
    db.upgrade(upgraded.db_url)
    httpserver.expect_request("/rp/graphql", method="POST").respond_with_data(
        recorded_payload("/graphql"), content_type="application/json")
    httpserver.expect_request("/vast/api/v0/bundles/", method="POST").respond_with_handler(slow_vast)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PLANNER_RUNPOD_URL": httpserver.url_for("/rp"),
           "PLANNER_VAST_URL": httpserver.url_for("/vast")}
    args = ["--port", "0"] if api else ["--no-api"]
    proc = subprocess.Popen([sys.executable, "-m", "planner", "-v", "serve", "--json", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "serving" and (ready["url"] is not None) == api
        if api:
            with urllib.request.urlopen(ready["url"] + "prices", timeout=10) as response:
                assert response.status == 200
        assert asked.wait(30), "no refresh started"
        proc.send_signal(sig)
        code = proc.wait(30)
    finally:
        proc.kill()
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    assert code == 0, stderr
    assert "stopping" in stderr and "Scheduler has been shut down" in stderr
    assert json.loads(stdout.splitlines()[-1]) == {"event": "stopped"}
    with db.session_factory(upgraded.db_url)() as session:
        leases = session.query(store.RefreshLease).all()
        assert leases and all(lease.holder is None for lease in leases)
        assert {s.provider for s in session.query(store.Snapshot).filter_by(status="ok")} >= {"vast"}


def test_api_prices_history_and_dashboard(upgraded, recorded_providers):
    from planner.run.pricebook import refresh_book

    refresh_book(upgraded)
    client = TestClient(create_app(upgraded), base_url=LOCAL)
    offers = client.get("/prices", params={"min_vram": 40, "spot": True}).json()["offers"]
    assert offers and all(o["vram_gb"] >= 40 and o["spot_usd_per_gpu_hour"] is not None for o in offers)
    history = client.get("/prices/history", params={"gpu": "RTX 4090"}).json()
    assert history["rows"] and history["bucket"] == "hour"
    page = client.get("/")
    assert page.status_code == 200 and "Offers now" in page.text and "/static/uPlot.iife.min.js" in page.text
    assert "/prices" in client.get("/openapi.json").json()["paths"]
    script = client.get("/static/uPlot.iife.min.js")  # vendored, so the page works offline
    assert script.status_code == 200 and "uPlot" in script.text and "javascript" in script.headers["content-type"]
    assert client.get("/static/uPlot.LICENSE").text.startswith("The MIT License")
    assert client.get("/static/..%2Fweb.py").status_code == 404 and client.get("/static/x.js").status_code == 404
    everything = client.get("/prices", params={"limit": 500}).json()["offers"]
    two = client.get("/prices", params={"limit": 500, "gpus": 2, "sort": "vram"}).json()["offers"]
    assert two and all(o["gpu_count"] == 2 for o in two) and len(two) < len(everything)
    assert [o["vram_gb"] for o in two] == sorted((o["vram_gb"] for o in two), reverse=True)
    cheap = client.get("/prices", params={"limit": 500, "max_price": 0.3, "min_reliability": 0.9}).json()["offers"]
    assert all(o["price_usd_per_gpu_hour"] <= 0.3 and o["reliability"] >= 0.9 for o in cheap)
    assert client.get("/prices", params={"sort": "cheap"}).status_code == 422
    jobs = client.get("/jobs").json()
    assert jobs["jobs"] == [] and jobs["campaigns"] == []
    assert client.get("/jobs/nope/logs").json() == {"job": "nope", "attempt": None, "lines": []}


def test_cancel_needs_the_token_beyond_localhost_and_refuses_other_origins(upgraded, monkeypatch):
    client = TestClient(create_app(upgraded), base_url=LOCAL)  # its peer is "testclient", not a loopback address
    assert client.post("/jobs/nope/cancel").status_code == 403
    monkeypatch.setenv("PLANNER_API_TOKEN", "s3cret-token")
    client = TestClient(create_app(load_settings(), host="0.0.0.0"), base_url=LAN)
    auth = {"Authorization": "Bearer s3cret-token"}
    assert client.post("/jobs/nope/cancel").status_code == 401
    assert client.post("/jobs/nope/cancel", headers=auth).status_code == 404
    evil = client.post("/jobs/nope/cancel", headers={**auth, "Origin": "https://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.text
    assert client.post("/jobs/nope/cancel", headers={**auth, "Origin": LAN}).status_code == 404


def test_token_required_beyond_localhost(upgraded, monkeypatch):
    with pytest.raises(ValueError, match="needs a token"):
        check_bind("0.0.0.0", upgraded)
    check_bind("127.0.0.1", upgraded)
    monkeypatch.setenv("PLANNER_API_TOKEN", "s3cret-token")
    settings = load_settings()
    check_bind("0.0.0.0", settings)
    client = TestClient(create_app(settings, host="0.0.0.0"), base_url=LAN)
    assert client.get("/prices").status_code == 401
    assert client.get("/prices", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/prices", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/").status_code == 200 and "s3cret-token" not in client.get("/").text


def test_supervisor_ticks_beside_the_refresh(upgraded):
    job = build_scheduler(upgraded).get_job("supervise")
    assert job.max_instances == 1 and job.coalesce
    assert job.trigger.interval == timedelta(seconds=upgraded.poll_interval_s)


def test_api_plan_and_jobs(upgraded, recorded_providers, tiny_model_dir, toy_corpus, monkeypatch):
    from planner.plan import campaigns
    from planner.run.launching import JobOptions, add_jobs
    from planner.run.pricebook import refresh_book, sessions_for

    refresh_book(upgraded)
    outside = TestClient(create_app(upgraded), base_url=LOCAL).post(
        "/plan", json={"kind": "train-bag", "params": {"model": "Qwen/Qwen3-4B", "data": str(toy_corpus)}})
    assert outside.status_code == 422 and "only under" in outside.text  # the corpus is outside the project
    monkeypatch.chdir(toy_corpus.parent)  # the project directory: the API may read the corpus now
    client = TestClient(create_app(upgraded), base_url=LOCAL)
    plan = client.post("/plan", json={"kind": "train-bag", "params": {"model": "Qwen/Qwen3-4B", "data": str(toy_corpus),
                                                                     "fraction": 0.4, "method": "lora"},
                                      "allow_stale": True, "top": 3}).json()
    assert plan["needs"]["vram_gb"] > 3 and 1 <= len(plan["ranked"]) <= 3
    costs = [c["expected_usd"] for c in plan["ranked"]]
    assert costs == sorted(costs) and all(c["vram_gb"] >= plan["needs"]["vram_gb"] for c in plan["ranked"])
    assert client.post("/plan", json={"kind": "train-bag", "params": {"model": "nope"}}).status_code == 422

    job = campaigns.train_bag_job(upgraded, model=str(tiny_model_dir), data=str(toy_corpus), fraction=0.5, seed=0,
                                  method="full")
    with sessions_for(upgraded)() as session:
        add_jobs(session, [job], JobOptions(backend="local"))
    listing = client.get("/jobs").json()
    assert [j["id"] for j in listing["jobs"]] == [job.spec.job_id] and "no monthly budget" in listing["budget"]
    assert client.get(f"/jobs/{job.spec.job_id}").json()["jobs"][0]["attempts"] == []
    assert client.get("/jobs/missing").status_code == 404


def test_api_plan_takes_the_pins_planner_plan_takes(upgraded, recorded_providers, toy_corpus, monkeypatch):
    """POST /plan ranks under the same limits as `planner plan` (launching.JobOptions -> plans.limits_for): a GPU and
    provider pin narrow the ranking, and a pin it cannot read is a 422 naming it, as --gpu/--provider are exit 2."""
    from planner.run.pricebook import refresh_book

    refresh_book(upgraded)
    monkeypatch.chdir(toy_corpus.parent)
    client = TestClient(create_app(upgraded), base_url=LOCAL)
    job = {"kind": "train-bag", "params": {"model": "Qwen/Qwen3-0.6B", "data": str(toy_corpus), "fraction": 0.4,
                                           "method": "lora"}, "allow_stale": True, "top": 100}
    free = client.post("/plan", json=job).json()
    assert {(c["gpu"], c["provider"]) for c in free["ranked"]} > {("RTX4090", "vast")}  # more than the pin keeps
    pinned = client.post("/plan", json=job | {"gpu": "RTX 4090", "provider": "vast"}).json()
    assert pinned["ranked"] and {(c["gpu"], c["provider"]) for c in pinned["ranked"]} == {("RTX4090", "vast")}
    two = client.post("/plan", json=job | {"gpu": "RTX4090:2"}).json()
    assert two["ranked"] and all(c["gpu_count"] == 2 for c in two["ranked"])
    for bad, message in (({"gpu": "Voodoo5"}, "gpu Voodoo5: not a GPU this planner knows"),
                         ({"gpu": "H100:0"}, "a count of 1 to 64"), ({"provider": "aws"}, "provider aws: choose"),
                         ({"backend": "aws"}, "backend aws: choose")):
        answer = client.post("/plan", json=job | bad)
        assert answer.status_code == 422 and message in answer.text, answer.text


def test_a_rebound_name_an_oversized_body_and_a_foreign_origin_are_refused_before_any_endpoint(upgraded):
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example,
    and is answered 421; bodies are capped; a state change from a page of another host is refused."""
    local = TestClient(create_app(upgraded), base_url=LOCAL)
    assert local.get("/health").status_code == 200
    rebound = TestClient(create_app(upgraded), base_url="http://evil.example:8000")
    answer = rebound.get("/prices")
    assert answer.status_code == 421 and "evil.example" in answer.text
    assert TestClient(create_app(upgraded), base_url="http://app.localhost:8000").get("/health").status_code == 200
    big = local.post("/plan", content=b"{" + b" " * (70 * 1024) + b"}", headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    foreign = local.post("/jobs/nope/cancel", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "cross-origin" in foreign.text
    bound = TestClient(create_app(upgraded, host="192.0.2.10"), base_url="http://192.0.2.10:8000")
    assert bound.get("/health").status_code == 200
    assert TestClient(create_app(upgraded, host="192.0.2.10"), base_url="http://192.0.2.11").get(
        "/health").status_code == 421


def test_post_plan_fetches_nothing_the_caller_names_and_takes_only_finite_numbers(upgraded, httpserver, tmp_path,
                                                                                 monkeypatch):
    """SSRF: POST /plan once fetched any http(s) URL named as data; a FIFO starved the workers. Now only
    local files under the project and URIs under PLANNER_STORAGE_URI; NaN from a JSON body is refused."""
    monkeypatch.chdir(tmp_path)
    client = TestClient(create_app(upgraded), base_url=LOCAL)
    httpserver.expect_request("/corpus.jsonl").respond_with_data('{"query": "q", "pos": ["p"]}\n')
    for data in (httpserver.url_for("/corpus.jsonl"), "s3://someone-elses-bucket/corpus.jsonl"):
        answer = client.post("/plan", json={"kind": "train-bag", "params": {"model": "Qwen/Qwen3-4B", "data": data}})
        assert answer.status_code == 422 and "URIs only under PLANNER_STORAGE_URI" in answer.text
    assert httpserver.log == []  # nothing fetched
    os.mkfifo(tmp_path / "pipe.jsonl")
    answer = client.post("/plan", json={"kind": "train-bag", "params": {"model": "Qwen/Qwen3-4B",
                                                                       "data": str(tmp_path / "pipe.jsonl")}})
    assert answer.status_code == 422 and "not a regular file" in answer.text
    (tmp_path / "c.jsonl").write_text('{"query": "q", "pos": ["p"]}\n')
    answer = client.post("/plan", content=b'{"kind": "train-bag", "params": {"model": "Qwen/Qwen3-4B", "data": "'
                         + str(tmp_path / "c.jsonl").encode() + b'", "fraction": NaN}}',
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "finite" in answer.text


def test_a_non_ascii_bearer_token_is_refused_not_a_server_error(upgraded, monkeypatch):
    monkeypatch.setenv("PLANNER_API_TOKEN", "s3cret-token")
    client = TestClient(create_app(load_settings()), base_url=LOCAL)
    answer = client.get("/prices", headers={"Authorization": "Bearer s3cr\u00e9t".encode("utf-8")})
    assert answer.status_code == 401
