"""The RunPod and Vast.ai backends under the real supervisor and planner, against fake provider APIs on
127.0.0.1 written from docs/providers/runpod.md and docs/providers/vast.md:
RunPod on-demand only, Vast bids read just before launch, create errors mapped to what the supervisor
does, interruptions relaunched elsewhere, success only with DONE and the attempt's report, failures
with the log tail, provider logs, orphans reaped through the v1 listing, keys only in the
Authorization header."""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

import pytest
from sqlalchemy import text

from jobs import storage
from jobs.protocol import duration
from jobs.spec import JobSpec
from planner import records
from planner.config import load_settings
from planner.plan import campaigns
from planner.plan.plans import book_offers
from planner.records import Job
from planner.run.backends.base import Handle, instance_label
from planner.run.backends.remote import report_uri
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_backends, build_supervisor, cloud_problem
from pricing import store
from pricing.db import session_factory
from pricing.offer import Offer
from tests.simcloud.runpod import GPU_FIELDS, POD_FIELDS

RUNPOD_KEY, VAST_KEY = "rp-secret-key-5f1c", "vast-secret-key-9d2e"
JOBS_INSTALL = "planner[jobs] @ git+https://example.invalid/planner@0123abc"


class FakeAPI:
    """A JSON API on 127.0.0.1: `route(method, path, body)` returns (status, body[, headers]); a str body
    is sent as is (SSE), None as no body; every request is kept."""

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                api.requests.append({"method": self.command, "path": self.path, "body": body, "raw": raw.decode(),
                                     "headers": dict(self.headers)})
                if self.path.startswith("/logs/"):  # a presigned log URL: no key
                    status, answer, headers = (*api.route(self.command, self.path, body), {})[:3]
                elif self.headers.get("Authorization") != f"Bearer {api.key}":
                    status, answer, headers = 401, {"error": "unauthorized"}, {}
                else:
                    status, answer, headers = (*api.route(self.command, self.path, body), {})[:3]
                if isinstance(answer, str):
                    payload, kind = answer.encode(), headers.pop("Content-Type", "text/plain")
                else:
                    payload = b"" if answer is None else json.dumps(answer).encode()
                    kind = "application/problem+json" if isinstance(answer, dict) and "title" in answer \
                        else "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()

    def everything_sent(self) -> str:
        return "\n".join(r["raw"] + r["path"] + json.dumps({k: v for k, v in r["headers"].items()
                                                            if k.lower() != "authorization"})
                         for r in self.requests)


def problem(status: int, title: str, detail: str) -> dict:
    return {"title": title, "status": status, "detail": detail}


class FakeRunPod(FakeAPI):
    """RunPod REST v2 as docs/providers/runpod.md ("Pods", "Logs") documents it: a strict
    POST /v2/pods (422 naming an unknown field), 400 for no capacity, 402 for a low balance, 429 with
    Retry-After, RFC 9457 bodies, the status enum and `cost`, DELETE 204, a list that ignores its
    parameters, and SSE logs resumed with Last-Event-ID."""

    def __init__(self):
        super().__init__(RUNPOD_KEY)
        self.pods: dict[str, dict] = {}
        self.prices = {"NVIDIA GeForce RTX 4090": 0.69, "NVIDIA RTX A6000": 0.79}
        self.failing_deploys = 0
        self.no_capacity: set[str] = set()
        self.balance_low = False
        self.rate_limited = 0
        self.logs: dict[str, list[str]] = {}
        self.drop_logs_after: int | None = None  # events per connection before the stream drops

    def route(self, method, path, body):
        path, _, query = path.partition("?")
        if method == "POST" and path == "/v2/pods":
            if self.rate_limited:
                self.rate_limited -= 1
                return 429, problem(429, "Too Many Requests", "rate limited"), {"Retry-After": "1"}
            if self.failing_deploys:
                self.failing_deploys -= 1
                return 503, problem(503, "Service Unavailable", "upstream unavailable")
            unknown = sorted(set(body) - POD_FIELDS) + sorted(f"gpu.{k}" for k in set(body.get("gpu") or {}) - GPU_FIELDS)
            if unknown or not body.get("name") or not body.get("image") or "gpu" not in body:
                return 422, {**problem(422, "Unprocessable Entity", "request body does not match the schema"),
                             "errors": [{"location": f"body.{unknown[0] if unknown else 'name'}",
                                         "message": "unexpected property"}]}
            if self.balance_low:
                return 402, problem(402, "Payment Required", "insufficient balance: $0.12 left")
            gpu = body["gpu"]
            if gpu["id"] in self.no_capacity:
                return 400, problem(400, "Bad Request", f"no instances available for {gpu['id']} x{gpu['count']}")
            pod = {"id": f"pod{len(self.pods) + 1}", "name": body["name"], "status": "RUNNING",
                   "cost": self.prices[gpu["id"]] * gpu["count"], "gpu": {"id": gpu["id"], "count": gpu["count"]},
                   "cloud": body.get("cloud", "SECURE"), "dataCenterId": "US-TX-3", "runtime": {"uptime": 1},
                   "input": body}
            self.pods[pod["id"]] = pod
            return 201, {k: v for k, v in pod.items() if k != "input"}
        if method == "GET" and path == "/v2/pods":
            return 200, {"pods": [{k: v for k, v in p.items() if k != "input"} for p in self.pods.values()]}
        if match := re.fullmatch(r"/v2/pods/([^/]+)/logs", path):
            return self._logs(match.group(1), query)
        if match := re.fullmatch(r"/v2/pods/([^/]+)", path):
            pod = self.pods.get(match.group(1))
            if pod is None or pod["status"] == "TERMINATED":
                return 404, problem(404, "Not Found", "pod not found")
            if method == "DELETE":
                pod.update(status="TERMINATED", cost=0)
                return 204, None
            return 200, {k: v for k, v in pod.items() if k != "input"}
        return 404, problem(404, "Not Found", path)

    def _logs(self, pod_id, query):
        lines = self.logs.get(pod_id, [])
        last = self.requests[-1]["headers"].get("Last-Event-ID")
        if last is not None:
            start = int(last) + 1
        else:
            tail = int(re.search(r"tail=(\d+)", query).group(1)) if "tail=" in query else 100
            start = max(0, len(lines) - tail)
        events = list(enumerate(lines))[start:]
        if self.drop_logs_after is not None:
            events = events[:self.drop_logs_after]
        text = "".join(f"id: {i}\ndata: {json.dumps({'ts': 't', 'source': 'container', 'line': line})}\n\n"
                       for i, line in events)
        return 200, text, {"Content-Type": "text/event-stream"}

    def exit(self, pod_id: str):
        self.pods[pod_id].update(status="EXITED", runtime=None, cost=0)


class FakeVast(FakeAPI):
    """Vast.ai as docs/providers/vast.md documents it: v0 instance listing 410, the v1 listing paged by
    25 with next_token/after_token and label select_filters, creates whose error body may still carry
    a new_contract, host filters on the bundles search, request_logs with a result_url."""

    def __init__(self):
        super().__init__(VAST_KEY)
        self.instances: dict[int, dict] = {}
        self.hosts = {101: {"min_bid": 0.30, "dph_total": 0.46, "storage_cost": 0.144, "cuda_max_good": 12.8,
                            "compute_cap": 890, "disk_space": 200, "reliability2": 0.99},
                      102: {"min_bid": 0.35, "dph_total": 0.51, "storage_cost": 0.144, "cuda_max_good": 12.4,
                            "compute_cap": 890, "disk_space": 200, "reliability2": 0.97}}
        self.create_error_with_contract: set[int] = set()
        self.log_text: dict[int, str] = {}
        self.log_misses = 0

    def route(self, method, path, body):
        path, _, query = path.partition("?")
        if method == "POST" and path == "/api/v0/bundles/":
            ask = body["id"]["eq"]
            host = {"id": ask, "num_gpus": 1, **self.hosts.get(ask, {})}
            fits = ask in self.hosts and all(_passes(host.get(field), rule) for field, rule in body.items()
                                             if field in ("cuda_max_good", "compute_cap", "disk_space", "reliability2"))
            return 200, {"offers": [host] if fits else []}
        if match := re.fullmatch(r"/api/v0/asks/(\d+)/", path):
            contract = 9000 + len([c for c in self.instances if c >= 9000]) + 1
            ask = int(match.group(1))
            state = "stopped" if ask in self.create_error_with_contract else "running"
            self.instances[contract] = {"id": contract, "label": body["label"], "actual_status": state,
                                        "cur_state": state, "intended_status": state, "next_state": state,
                                        "dph_total": self.hosts[ask]["dph_total"], "ask": ask, "body": body}
            if ask in self.create_error_with_contract:
                return 400, {"success": False, "error": "invalid_price", "msg": "bid too low", "ask_id": ask,
                             "new_contract": contract}
            return 200, {"success": True, "new_contract": contract}
        if path == "/api/v0/instances/":
            return 410, {"success": False, "error": "deprecated_endpoint", "msg": "use /api/v1/instances/"}
        if path == "/api/v1/instances/":
            return self._v1(query)
        if match := re.fullmatch(r"/api/v0/instances/request_logs/(\d+)/", path):
            return 200, {"success": True, "result_url": f"{self.url}/logs/{match.group(1)}", "msg": "ok"}
        if match := re.fullmatch(r"/logs/(\d+)", path):
            if self.log_misses:
                self.log_misses -= 1
                return 404, "not yet"
            return 200, self.log_text.get(int(match.group(1)), "")
        if match := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
            instance = self.instances.get(int(match.group(1)))
            if method == "DELETE":
                if instance is None:
                    return 404, {"success": False, "error": "no_such_instance"}
                del self.instances[instance["id"]]
                return 200, {"success": True}
            return 200, {"instances": None if instance is None else self._row(instance)}
        return 404, {"error": "not_found"}

    def _v1(self, query):
        params = {k: json.loads(v[0]) if k == "select_filters" else v[0] for k, v in parse_qs(query).items()}
        rows = sorted(self.instances.values(), key=lambda i: i["id"])
        for field, rule in (params.get("select_filters") or {}).items():
            rows = [r for r in rows if _passes(r.get(field), rule)]
        start = int(params.get("after_token") or 0)
        page = rows[start:start + 25]
        more = start + 25 < len(rows)
        return 200, {"instances": [self._row(r) for r in page], "total_instances": len(rows), "label_counts": {},
                     "next_token": str(start + 25) if more else None}

    @staticmethod
    def _row(instance):
        return {k: v for k, v in instance.items() if k not in ("ask", "body")}

    def outbid(self, contract: int):
        self.instances[contract].update(actual_status="stopped", cur_state="stopped", intended_status="stopped",
                                        next_state="stopped")


def _passes(value, rule: dict) -> bool:
    op, expected = next(iter(rule.items()))
    if op == "eq" and expected == "any":  # vast-cli's form for "no filter"
        return True
    if value is None:
        return False
    if op in ("in", "notin"):
        return (value in expected) == (op == "in")
    return {"eq": lambda: value == expected, "gte": lambda: value >= expected, "lte": lambda: value <= expected,
            "lt": lambda: value < expected, "gt": lambda: value > expected, "neq": lambda: value != expected}[op]()


def book_offer(provider, key, gpu, on_demand, spot, tier):
    return Offer(provider=provider, offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=24 if "4090" in gpu
                 else 48, gpu_count=1, on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot, tier=tier,
                 location="US", available=True, fetched_at=store.utcnow(), reliability=0.99)


@pytest.fixture
def cloud(db_url, tmp_path, toy_corpus):
    runpod, vast = FakeRunPod(), FakeVast()
    settings = load_settings(db_url=db_url, runs_dir=tmp_path / "runs", runpod_url=runpod.url, vast_url=vast.url,
                             runpod_api_key=RUNPOD_KEY, vast_api_key=VAST_KEY, jobs_install=JOBS_INSTALL,
                             storage_uri=f"memory://planner-test-{uuid.uuid4().hex[:8]}", poll_interval_s=0.1,
                             http_retry_wait_s=0.01)
    sessions = session_factory(db_url)
    with sessions() as session:
        store.write_snapshot(session, "runpod", store.utcnow(), [
            book_offer("runpod", "NVIDIA GeForce RTX 4090|community", "RTX4090", 0.69, 0.20, "community"),  # stale spot
            book_offer("runpod", "NVIDIA RTX A6000|secure", "RTX-A6000", 0.79, None, "secure")])
        store.write_snapshot(session, "vast", store.utcnow(), [
            book_offer("vast", "101", "RTX4090", 0.45, 0.30 + 0.144 * 50 / 720, "verified"),
            book_offer("vast", "102", "RTX4090", 0.50, 0.35 + 0.144 * 50 / 720, "verified")])
    yield settings, sessions, runpod, vast
    runpod.close()
    vast.close()


def submit(cloud, corpus, backend, spot="any"):
    settings, sessions, *_ = cloud
    job = campaigns.train_bag_job(settings, model="Qwen/Qwen3-0.6B", data=str(corpus), fraction=0.4, seed=0,
                                  method="lora", extra={"max_steps": 50})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend=backend, spot=spot))
    return job.spec


def label_of(cloud, spec: JobSpec, attempt: int = 1) -> str:
    """planner-PROJECT-JOB-aN: the label names this database's project (the reaper's scope)."""
    with cloud[1]() as session:
        return instance_label(spec.job_id, attempt, records.project_id(session))


def finish(spec: JobSpec, label: str, code: int, log_tail: str = "", done: bool = True):
    """What jobs.run --report does on the box when the job ends."""
    if done:
        storage.write_bytes_atomic(storage.join(spec.output_uri, "DONE"), b"{}")
    storage.write_json_atomic(report_uri(spec.output_uri, label), {"exit_code": code, "log_tail": log_tail})


def pod_script(pod_input: dict) -> str:
    """The box script inside a pod's `args` (base64 decoded by sh -c)."""
    encoded = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", pod_input["args"]).group(1)
    return base64.b64decode(encoded).decode()


def test_runpod_v2_on_demand_pod_ended_without_report_is_a_counted_failure_relaunched_then_success(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod", spot="any")  # the book's stale RunPod spot price is never planned
    supervisor = build_supervisor(settings, sessions)
    assert supervisor.tick().launched == [spec.job_id]
    [pod] = runpod.pods.values()
    sent = pod["input"]  # the fake is strict: an unknown field would have been a 422
    assert sent["gpu"] == {"id": "NVIDIA GeForce RTX 4090", "count": 1, "minCudaVersion": "12.4"}
    assert sent["cloud"] == "COMMUNITY" and sent["ports"] == [] and sent["name"] == label_of(cloud, spec)
    with sessions() as session:
        needs = json.loads(session.get(Job, spec.job_id).requirements)
        [attempt] = attempts_of(session, spec.job_id)
        assert not attempt.spot and attempt.usd_per_hour == pytest.approx(0.69)
        assert json.loads(attempt.handle)["data"]["billed_usd_per_hour"] == pytest.approx(0.69)  # pod.cost
    assert sent["disk"] == max(1, math.ceil(needs["disk_gb"]))  # sized from the job, not a constant
    assert JobSpec.from_json(sent["env"]["PLANNER_JOB_SPEC"]).job_id == spec.job_id
    script = pod_script(sent)
    assert "python -m jobs.run --report" in script and "--hold" in script and sent["args"].startswith("exec sh -c ")

    runpod.exit(pod["id"])  # ended without a report: a broken box, a failure counted toward max failures
    assert supervisor.tick().relaunching == [spec.job_id]
    assert runpod.pods[pod["id"]]["status"] == "TERMINATED"  # DELETE /v2/pods/{id}
    assert supervisor.tick().launched == [spec.job_id]
    second = [p for p in runpod.pods.values() if p["id"] != pod["id"]][0]
    assert second["input"]["gpu"] == sent["gpu"]  # still the cheapest: a failure does not cool the offer down

    finish(spec, second["name"], 0)
    assert supervisor.tick().finished == [(spec.job_id, "succeeded")]
    assert second["status"] == "TERMINATED"
    with sessions() as session:
        first, last = attempts_of(session, spec.job_id)
        assert (first.outcome, last.outcome) == ("failed", "succeeded") and not first.spot and not last.spot
        dump = "\n".join(str(row) for table in ("jobs", "attempts", "snapshots")
                         for row in session.execute(text(f"SELECT * FROM {table}")))
    assert RUNPOD_KEY not in dump and RUNPOD_KEY not in runpod.everything_sent()
    assert all(r["headers"]["Authorization"] == f"Bearer {RUNPOD_KEY}" for r in runpod.requests)


def test_runpod_is_never_planned_spot(cloud, toy_corpus):
    settings, sessions, *_ = cloud
    spec = submit(cloud, toy_corpus, "runpod", spot="spot")
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    with sessions() as session:
        job = session.get(Job, spec.job_id)
        assert not attempts_of(session, spec.job_id) and job.state == "pending"  # no RunPod spot to place on


def test_runpod_create_errors_no_capacity_next_offer_422_and_402_stop(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    runpod.no_capacity.add("NVIDIA GeForce RTX 4090")  # 400: try the next candidate
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    assert not runpod.pods
    assert supervisor.tick().launched == [spec.job_id]
    [pod] = runpod.pods.values()
    assert pod["input"]["gpu"]["id"] == "NVIDIA RTX A6000"
    with sessions() as session:
        first = attempts_of(session, spec.job_id)[0]
        assert first.outcome == "launch-failed" and "HTTP 400" in first.detail and "no instances" in first.detail

    runpod.balance_low = True  # 402: stop, with the balance message
    second = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    supervisor.tick()
    with sessions() as session:
        job = session.get(Job, second.job_id)
        assert job.state == "failed" and "balance" in job.error and "HTTP 402" in job.error
    assert len(runpod.pods) == 1


def test_a_runpod_multi_gpu_offer_is_priced_and_launched_as_one_pod_of_that_many_gpus(cloud, toy_corpus):
    """Issue 21: a RunPod offer of N GPUs (its catalog prices them per GPU) is ranked at N x the price and
    launched as one pod with `gpu.count` N (docs/providers/runpod.md, "Pods"), billed at N x the price."""
    settings, sessions, runpod, _ = cloud
    pair = dataclasses.replace(book_offer("runpod", "NVIDIA GeForce RTX 4090|community|2", "RTX4090", 0.69, None,
                                          "community"), gpu_count=2)
    with sessions() as session:
        store.write_snapshot(session, "runpod", store.utcnow(), [pair])
    job = campaigns.train_bag_job(settings, model="Qwen/Qwen3-0.6B", data=str(toy_corpus), fraction=0.4, seed=0,
                                  method="lora", extra={"max_steps": 50})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="runpod", spot="on-demand", gpu_count=2))
    supervisor = build_supervisor(settings, sessions)
    assert supervisor.tick().launched == [job.spec.job_id]
    [pod] = runpod.pods.values()
    assert pod["input"]["gpu"] == {"id": "NVIDIA GeForce RTX 4090", "count": 2, "minCudaVersion": "12.4"}
    with sessions() as session:
        [attempt] = attempts_of(session, job.spec.job_id)
        assert attempt.gpu_count == 2 and attempt.offer_key == pair.offer_key
        assert 2 * 0.69 <= attempt.usd_per_hour < 2 * 0.69 + 0.05  # both GPUs, and the container disk
        assert attempt.billed_usd_per_hour == pytest.approx(2 * 0.69)  # the pod's cost: what RunPod bills


def test_runpod_422_is_our_bug_and_fails_loudly(cloud, toy_corpus):
    from planner.run.backends.base import RequestRejected

    settings, sessions, runpod, _ = cloud
    backend = build_backends(settings)["runpod"]
    spec = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    with sessions() as session:
        offer = next(o for o in book_offers(session) if o.provider == "runpod")
    plan = backend.plan(spec, offer, attempt=1, spot=False, usd_per_hour=0.69, disk_gb=20)
    bad = dataclasses.replace(plan, request={**plan.request, "pod": {**plan.request["pod"], "bidPerGpu": 0.2}})
    with pytest.raises(RequestRejected, match="HTTP 422.*body.bidPerGpu.*planner bug"):
        backend.launch(bad)
    assert not runpod.pods


def test_runpod_429_on_create_waits_retry_after_and_rents_once(cloud, toy_corpus, monkeypatch):
    settings, sessions, runpod, _ = cloud
    waits = []
    monkeypatch.setattr("pricing.providers.http.RetryPolicy.from_settings",
                        classmethod(lambda cls, s: cls(attempts=3, initial_wait_s=0.01, sleep=waits.append)))
    spec = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    runpod.rate_limited = 1
    assert build_supervisor(settings, sessions).tick().launched == [spec.job_id]
    assert waits == [1.0] and len(runpod.pods) == 1


def test_runpod_logs_stream_and_resume_with_last_event_id(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    [pod] = runpod.pods.values()
    runpod.logs[pod["id"]] = [f"step {i}" for i in range(6)]
    runpod.drop_logs_after = 2  # every connection drops after two events
    backend = supervisor.backends["runpod"]
    with sessions() as session:
        handle = Handle.from_attempt(attempts_of(session, spec.job_id)[0])
    assert backend.logs(handle, tail=3) == "step 3\nstep 4"  # the last 3 from step 3: two events, then the drop

    stop, got = threading.Event(), []
    for line in backend.follow_logs(handle, stop, tail=4, idle_timeout_s=0.5):
        got.append(line)
        if len(got) == 4:
            stop.set()
    assert got == ["step 2", "step 3", "step 4", "step 5"]  # each once, across two dropped connections
    resumed = [r["headers"].get("Last-Event-ID") for r in runpod.requests if r["path"].startswith(
        f"/v2/pods/{pod['id']}/logs")]
    assert "3" in resumed


def test_vast_outbid_then_a_failure_with_its_log_tail_and_orphans_reaped(cloud, toy_corpus):
    settings, sessions, _, vast = cloud
    with sessions() as session:
        project = records.project_id(session)
    ghost = instance_label("ghost-1234", 1, project)  # this project's, of no live attempt: an orphan
    vast.instances[5000] = {"id": 5000, "label": ghost, "actual_status": "running"}
    vast.instances[5001] = {"id": 5001, "label": "my-notebook", "actual_status": "running"}  # not ours at all
    vast.instances[5002] = {"id": 5002, "label": instance_label("ghost-1234", 1, "p0123abcd"),  # another project's
                            "actual_status": "running"}
    for n in range(30):  # more than one v1 page (25 rows)
        vast.instances[6000 + n] = {"id": 6000 + n, "label": f"other-{n}", "actual_status": "running"}
    vast.instances[6100] = {"id": 6100, "label": instance_label("ghost-5678", 2, project), "actual_status": "running"}
    spec = submit(cloud, toy_corpus, "vast", spot="spot")
    supervisor = build_supervisor(settings, sessions)
    assert supervisor.tick().launched == [spec.job_id]
    assert 5000 not in vast.instances and 6100 not in vast.instances  # page 2 too
    assert 5001 in vast.instances and 5002 in vast.instances
    assert any("after_token=25" in r["path"] for r in vast.requests)  # the reaper walked the pages
    assert not any(r["path"].startswith("/api/v0/instances/?") or r["path"] == "/api/v0/instances/"
                   for r in vast.requests)  # v0 listing answers 410
    [contract] = [c for c in vast.instances if c >= 9000]
    created = vast.instances[contract]
    assert created["ask"] == 101 and created["body"]["price"] == pytest.approx(0.30 * 1.05, abs=1e-4)
    body = created["body"]
    assert body["label"] == label_of(cloud, spec) and body["runtype"] == "args"
    assert body["onstart"] == "/bin/sh" and body["args"][0] == "-c" and "jobs.run" in body["args"][1]
    assert body["disk"] >= 8 and all(len(k) + 1 + len(v) <= 256 for k, v in body["env"].items())
    search = next(r["body"] for r in vast.requests if r["path"] == "/api/v0/bundles/")
    assert search["type"] == "bid" and search["cuda_max_good"] == {"gte": 12.4}
    assert search["compute_cap"] == {"lt": 1000} and search["reliability2"] == {"gte": 0.9}
    assert search["disk_space"] == {"gte": body["disk"]}
    polls = [r["path"] for r in vast.requests if r["path"].startswith("/api/v1/instances/?select_filters")]
    assert polls == [] or all("label" in unquote(p) for p in polls)

    vast.outbid(contract)
    assert supervisor.tick().relaunching == [spec.job_id]
    assert contract not in vast.instances  # destroyed: a stopped instance still bills storage
    assert any(label_of(cloud, spec) in unquote(r["path"]) for r in vast.requests
               if r["path"].startswith("/api/v1/instances/"))  # polled through a label-filtered v1 page
    supervisor.tick()
    [second] = [c for c in vast.instances if c >= 9000]
    assert vast.instances[second]["ask"] == 102

    finish(spec, vast.instances[second]["label"], 1, "Traceback ...\nRuntimeError: CUDA error: out of memory",
           done=False)
    supervisor.tick()
    with sessions() as session:
        attempts = attempts_of(session, spec.job_id)
        assert [a.outcome for a in attempts] == ["preempted", "failed"]
        assert attempts[1].exit_code == 1 and "CUDA error: out of memory" in attempts[1].detail
        assert session.get(Job, spec.job_id).state == "pending"  # a bounded number of retries
    assert VAST_KEY not in vast.everything_sent()


def test_vast_create_error_with_new_contract_is_destroyed_and_a_host_that_no_longer_fits_skipped(cloud, toy_corpus):
    settings, sessions, _, vast = cloud
    vast.create_error_with_contract.add(101)  # a losing bid: a stopped instance exists anyway
    vast.hosts[102]["cuda_max_good"] = 12.2  # its driver is older than the image's CUDA 12.4
    spec = submit(cloud, toy_corpus, "vast", spot="spot")
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    assert not [c for c in vast.instances if c >= 9000]  # destroyed at once
    supervisor.tick()
    assert not [c for c in vast.instances if c >= 9000]  # 102's host does not fit: never created
    with sessions() as session:
        first, second = attempts_of(session, spec.job_id)[:2]
        assert first.outcome == second.outcome == "launch-failed"
        assert "invalid_price" in first.detail and "no longer fits" in second.detail and "cuda_max_good" in second.detail


def test_vast_logs_through_request_logs_and_the_result_url(cloud, toy_corpus):
    settings, sessions, _, vast = cloud
    spec = submit(cloud, toy_corpus, "vast", spot="on-demand")
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    [contract] = [c for c in vast.instances if c >= 9000]
    vast.log_text[contract] = "pulling image\nstep 1\nstep 2\n"
    vast.log_misses = 2  # the result is not uploaded yet
    backend = supervisor.backends["vast"]
    backend.api.sleep = lambda s: None
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        handle = Handle.from_attempt(attempt)
        assert json.loads(attempt.handle)["data"]["billed_usd_per_hour"] == pytest.approx(0.46)  # dph_total
    assert backend.logs(handle, tail=2) == "step 1\nstep 2"
    stop = threading.Event()
    stop.set()
    assert list(backend.follow_logs(handle, stop, tail=5)) == ["pulling image", "step 1", "step 2"]
    assert all(VAST_KEY not in json.dumps(r["headers"]) for r in vast.requests if r["path"].startswith("/logs/"))


def test_cloud_launches_need_a_reachable_output_and_the_jobs_install(cloud, toy_corpus):
    settings = cloud[0]
    remote = submit(cloud, toy_corpus, "runpod")
    assert cloud_problem(settings, "runpod", [remote]) is None
    local = JobSpec("j1", "merge", "/tmp/out", {"models": ["a", "b"], "weights": [1, 1]})
    assert "PLANNER_STORAGE_URI" in cloud_problem(settings, "runpod", [local])
    assert "PLANNER_JOBS_INSTALL" in cloud_problem(settings.model_copy(update={"jobs_install": ""}), "vast", [remote])
    assert "RUNPOD_API_KEY" in cloud_problem(settings.model_copy(update={"runpod_api_key": None}), "runpod", [remote])
    assert cloud_problem(settings, "local", [local]) is None


def test_a_local_output_is_never_placed_on_a_cloud_offer(cloud, toy_corpus):
    settings, sessions, runpod, vast = cloud
    job = campaigns.train_bag_job(settings.model_copy(update={"storage_uri": None}), model="Qwen/Qwen3-0.6B",
                                  data=str(toy_corpus), fraction=0.4, seed=0, method="lora", extra={"max_steps": 1})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="runpod"))
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    assert not runpod.pods and not [c for c in vast.instances if c >= 9000]
    with sessions() as session:
        assert session.get(Job, job.spec.job_id).state == "pending"


def test_the_box_runner_reports_the_exit_code_and_log_tail(tmp_path):
    spec = JobSpec("e1", "evaluate", str(tmp_path / "out"), {"model": str(tmp_path / "none"),
                                                             "data": str(tmp_path / "missing.jsonl")})
    report = tmp_path / "attempts" / "planner-e1-a1.json"
    result = subprocess.run([sys.executable, "-m", "jobs.run", "--report", str(report)], capture_output=True,
                            text=True, timeout=120, env={"PLANNER_JOB_SPEC": spec.to_json(), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    written = json.loads(report.read_text())
    missing = str(tmp_path / "none")
    assert written["exit_code"] == 2 and missing in written["log_tail"]  # why the model cannot load
    assert missing in result.stderr  # passed through to the provider's log too


def test_a_failed_launch_is_provider_weather_not_a_job_failure(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod", spot="on-demand")
    runpod.failing_deploys = 1  # HTTP 503 on POST /v2/pods, sent once (a retry could rent twice)
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    assert not runpod.pods
    assert supervisor.tick().launched == [spec.job_id]
    [pod] = runpod.pods.values()
    assert pod["input"]["gpu"]["id"] == "NVIDIA RTX A6000"  # the offer that failed sits out its cool-down
    with sessions() as session:
        first, second = attempts_of(session, spec.job_id)
        assert first.outcome == "launch-failed" and "HTTP 503" in first.detail and first.dollars == 0
        assert second.outcome == "running" and session.get(Job, spec.job_id).state == "running"


def test_a_402_pauses_that_provider_for_the_run_and_the_job_goes_elsewhere(cloud, toy_corpus):
    """RunPod answers 402 (the balance cannot pay): the job is not failed but placed on Vast, RunPod is not asked
    again for the run's later jobs, and the pause is sent as money at risk, once."""
    settings, sessions, runpod, vast = cloud
    with sessions() as session:  # Vast dearer than RunPod, so RunPod is tried first
        store.write_snapshot(session, "vast", store.utcnow(), [
            book_offer("vast", "101", "RTX4090", 0.95, None, "verified"),
            book_offer("vast", "102", "RTX4090", 0.99, None, "verified")])
    runpod.balance_low = True
    first = submit(cloud, toy_corpus, "auto", spot="on-demand")
    supervisor = build_supervisor(settings.model_copy(update={"local_max_hours": 1e-9}), sessions)  # the cloud only
    paused = []
    supervisor.notify.provider_paused = lambda provider, reason: paused.append((provider, reason))
    supervisor.tick()
    supervisor.tick()
    second = submit(cloud, toy_corpus, "auto", spot="on-demand")
    supervisor.tick()
    creates = [r for r in runpod.requests if r["method"] == "POST" and r["path"] == "/v2/pods"]
    assert len(creates) == 1 and runpod.pods == {}  # asked once, for the run
    with sessions() as session:
        for spec in (first, second):
            job = session.get(Job, spec.job_id)
            assert job.state == "running" and attempts_of(session, spec.job_id)[-1].provider == "vast", job.error
        assert "HTTP 402" in attempts_of(session, first.job_id)[0].detail
    assert len([c for c in vast.instances if c >= 9000]) == 2
    assert [p for p, _ in paused] == ["runpod"] and "402" in paused[0][1]


def test_a_box_past_its_deadline_is_ended_counted_and_sent_as_money_at_risk(cloud, toy_corpus):
    """The box's own watchdog should have ended it at its deadline; one still up past the deadline, its
    startup window, stop grace and slack (a dead watchdog, a lost delete) is ended by the supervisor."""
    from datetime import timedelta

    from jobs import boxend

    settings, sessions, _, vast = cloud
    spec = submit(cloud, toy_corpus, "vast", spot="on-demand")
    supervisor = build_supervisor(settings, sessions)
    late = []
    supervisor.notify.past_deadline = lambda job_id, attempt, detail: late.append((job_id, attempt, detail))
    supervisor.tick()
    [contract] = [c for c in vast.instances if c >= 9000]
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        max_hours = json.loads(attempt.handle)["data"]["max_hours"]
        launched = attempt.launched_at
    assert max_hours > 0  # the reservation's hours: what the box's script was given
    storage.write_json_atomic(boxend.started_uri(report_uri(spec.output_uri, label_of(cloud, spec))), {})
    backend = supervisor.backends["vast"]
    window = max_hours * 3600 + backend.startup_s
    supervisor.clock = lambda: launched + timedelta(seconds=window)  # at its deadline: still its own to end
    supervisor.tick()
    assert contract in vast.instances and late == []
    supervisor.clock = lambda: launched + timedelta(seconds=window + 3600)
    supervisor.tick()
    assert contract not in vast.instances  # deleted: it was spending past its reservation
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)[:1]
        assert attempt.outcome == "failed" and "past its deadline" in attempt.detail
        assert f"a startup window of {duration(backend.startup_s)}" in attempt.detail  # as every duration reads
    assert late and late[0][:2] == (spec.job_id, 1) and "past its deadline" in late[0][2]


def test_a_vast_stop_or_end_with_a_rejected_key_names_the_instance(cloud):
    """A key Vast rejects on a stop or a destroy is KeyRejected naming the instance, and for the destroy that it
    keeps billing: one mapping of Vast's errors (VastBackend._call) for every call."""
    from planner.run.backends.base import KeyRejected

    settings, _, _, vast = cloud
    backend = build_backends(settings)["vast"]
    handle = Handle(backend="vast", instance_id="4242", label="planner-x", data={})
    vast.key = "rotated"  # the key the planner holds is rejected from now on
    with pytest.raises(KeyRejected, match=r"rejected VAST_API_KEY \(HTTP 401\): could not stop instance 4242;"):
        backend.stop(handle)
    with pytest.raises(KeyRejected, match="could not end instance 4242, which keeps billing; fix VAST_API_KEY"):
        backend.cancel(handle)


def test_a_vast_spot_box_deadline_holds_the_reservation_at_the_most_its_bid_may_pay(cloud, toy_corpus):
    from planner.records import Reservation
    from planner.run.backends.remote import bid_cap

    settings, sessions, _, vast = cloud
    spec = submit(cloud, toy_corpus, "vast", spot="spot")
    supervisor = build_supervisor(settings, sessions)
    assert supervisor.tick().launched == [spec.job_id]
    [contract] = [c for c in vast.instances if c >= 9000]
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        reserved = session.get(Reservation, spec.job_id).usd
        offer = next(o for o in book_offers(session) if o.offer_key == attempt.offer_key)
    planned = offer.spot_usd_per_gpu_hour
    max_hours = json.loads(attempt.handle)["data"]["max_hours"]
    assert max_hours * bid_cap(offer, planned) == pytest.approx(reserved, rel=1e-9)  # at the cap: all of it
    assert max_hours * attempt.usd_per_hour < reserved  # at the bid paid: within it
    startup_s = supervisor.backends["vast"].startup_s
    assert f'"duration": {{"gte": {math.ceil(max_hours * 3600 + startup_s)}}}' in json.dumps(vast.requests)


def test_a_vast_hosts_duration_covers_the_startup_window_and_the_reservation():
    """`duration` (seconds the host stays rentable: docs/providers/vast.md, "Host filters") must outlast the box:
    its deadline is its script's start, up to the startup window after the create, plus the reservation's hours."""
    from planner.run.backends.vast import VastBackend
    from pricing.providers.vast_api import VastAPI

    backend = VastBackend(VastAPI("http://127.0.0.1:9", "k"), image="i", jobs_install="p", startup_s=1200)
    assert backend.host_filters(50, 2.0)["duration"] == {"gte": 2 * 3600 + 1200}
    assert "duration" not in backend.host_filters(50)  # no reservation (a box that ends with its job)


def test_a_vast_host_is_checked_on_the_tier_it_was_planned_on_with_verified_sent_explicitly():
    """Left out, `verified` would be vast-cli's default (verified only) or the server's (docs/providers/vast.md,
    "Offers"): the create's host check always sends it, with `rentable` and `rented`."""
    from planner.run.backends.vast import VastBackend
    from pricing.providers.vast_api import VastAPI

    backend = VastBackend(VastAPI("http://127.0.0.1:9", "k"), image="i", jobs_install="p")
    assert backend.host_filters(50, verified=False)["verified"] == {"eq": False}
    assert backend.host_filters(50)["verified"] == {"eq": True}
    assert backend.host_filters(50)["rentable"] == {"eq": True} and backend.host_filters(50)["rented"] == {"eq": False}
    unverified = Offer(provider="vast", offer_key="101", gpu_model="RTX4090", gpu_name_raw="RTX 4090", vram_gb=24,
                       gpu_count=1, on_demand_usd_per_gpu_hour=0.4, spot_usd_per_gpu_hour=None, tier="unverified",
                       location="US", available=True, fetched_at=store.utcnow())
    spec = JobSpec("v1", "merge", "s3://b/out/v1", {"models": ["s3://b/m1", "s3://b/m2"]})
    plan = backend.plan(spec, unverified, attempt=1, spot=False, usd_per_hour=0.4, max_hours=1.0)
    assert plan.request["host_filters"]["verified"] == {"eq": False}


def test_an_orphan_the_reaper_ends_is_sent_as_money_at_risk(cloud, toy_corpus):
    settings, sessions, _, vast = cloud
    with sessions() as session:
        project = records.project_id(session)
    vast.instances[5000] = {"id": 5000, "label": instance_label("ghost-1234", 1, project), "actual_status": "running"}
    supervisor = build_supervisor(settings, sessions)
    reaped = []
    supervisor.notify.orphan_reaped = lambda backend, label, instance_id: reaped.append((backend, label, instance_id))
    supervisor.tick()
    assert 5000 not in vast.instances
    assert reaped == [("vast", instance_label("ghost-1234", 1, project), "5000")]
