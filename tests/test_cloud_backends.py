"""The RunPod and Vast.ai backends under the real supervisor and planner, against fake provider APIs on
127.0.0.1: spot bids read just before launch, interruptions relaunched elsewhere, success only with
DONE and the attempt's report, failures with the log tail from the report, orphans reaped, keys only
ever in the Authorization header."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import text

from jobs import storage
from jobs.spec import JobSpec
from planner.plan import campaigns
from planner.run.backends.remote import report_uri
from planner.config import load_settings
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor, cloud_problem
from planner.records import Job
from pricing import store
from pricing.db import session_factory
from pricing.offer import Offer

RUNPOD_KEY, VAST_KEY = "rp-secret-key-5f1c", "vast-secret-key-9d2e"
JOBS_INSTALL = "planner[jobs] @ git+https://example.invalid/planner@0123abc"


class FakeAPI:
    """A JSON API on 127.0.0.1: `route(method, path, body)` returns (status, body); every request is kept."""

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                api.requests.append({"method": self.command, "path": self.path, "body": body, "raw": raw.decode(),
                                     "headers": dict(self.headers)})
                if self.headers.get("Authorization") != f"Bearer {api.key}":
                    status, answer = 401, {"error": "unauthorized"}
                else:
                    status, answer = api.route(self.command, self.path, body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
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


class FakeRunPod(FakeAPI):
    def __init__(self):
        super().__init__(RUNPOD_KEY)
        self.pods: dict[str, dict] = {}
        self.minimum_bid = {"NVIDIA GeForce RTX 4090": 0.20, "NVIDIA RTX A6000": 0.25}
        self.failing_deploys = 0

    def route(self, method, path, body):
        query, variables = body["query"], body.get("variables") or {}
        if ("podRentInterruptable" in query or "podFindAndDeployOnDemand" in query) and self.failing_deploys:
            self.failing_deploys -= 1
            return 503, {"error": "upstream unavailable"}
        if "podRentInterruptable" in query or "podFindAndDeployOnDemand" in query:
            pod_input = variables["input"]
            pod = {"id": f"pod{len(self.pods) + 1}", "name": pod_input["name"], "desiredStatus": "RUNNING",
                   "costPerHr": pod_input.get("bidPerGpu", 0.5), "runtime": {"uptimeInSeconds": 1},
                   "input": pod_input}
            self.pods[pod["id"]] = pod
            op = "podRentInterruptable" if "podRentInterruptable" in query else "podFindAndDeployOnDemand"
            return 200, {"data": {op: {k: pod[k] for k in ("id", "name", "desiredStatus", "costPerHr")}}}
        if "gpuTypes" in query:
            price = self.minimum_bid[variables["id"]]
            return 200, {"data": {"gpuTypes": [{"id": variables["id"], "lowestPrice": {
                "minimumBidPrice": price, "uninterruptablePrice": 0.69, "stockStatus": "High"}}]}}
        if "podTerminate" in query:
            pod = self.pods.get(variables["id"])
            if pod is None:
                return 200, {"errors": [{"message": "pod not found"}], "data": None}
            pod["desiredStatus"] = "TERMINATED"
            return 200, {"data": {"podTerminate": None}}
        if "myself" in query:
            return 200, {"data": {"myself": {"pods": [{k: p[k] for k in ("id", "name", "desiredStatus", "costPerHr")}
                                                       for p in self.pods.values()]}}}
        if re.search(r"\bpod\(", query):
            pod = self.pods.get(variables["id"])
            return 200, {"data": {"pod": None if pod is None or pod["desiredStatus"] == "TERMINATED" else
                                  {k: v for k, v in pod.items() if k != "input"}}}
        return 200, {"errors": [{"message": "unknown operation"}]}

    def preempt(self, pod_id: str):
        self.pods[pod_id].update(desiredStatus="EXITED", runtime=None)


class FakeVast(FakeAPI):
    def __init__(self):
        super().__init__(VAST_KEY)
        self.instances: dict[int, dict] = {}
        self.min_bid = {101: 0.30, 102: 0.35}

    def route(self, method, path, body):
        if method == "POST" and path == "/api/v0/bundles/":
            ask = body["id"]["eq"]
            return 200, {"offers": [{"id": ask, "min_bid": self.min_bid[ask], "storage_cost": 0.144, "num_gpus": 1}]}
        if match := re.fullmatch(r"/api/v0/asks/(\d+)/", path):
            contract = 9000 + len(self.instances) + 1
            self.instances[contract] = {"id": contract, "label": body["label"], "actual_status": "running",
                                        "cur_state": "running", "intended_status": "running",
                                        "next_state": "running", "ask": int(match.group(1)), "body": body}
            return 200, {"success": True, "new_contract": contract}
        if path == "/api/v0/instances/?owner=me":
            return 200, {"instances": [{"id": i["id"], "label": i["label"]} for i in self.instances.values()]}
        if match := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
            instance = self.instances.get(int(match.group(1)))
            if method == "DELETE":
                if instance is None:
                    return 404, {"success": False, "error": "no_such_instance"}
                del self.instances[instance["id"]]
                return 200, {"success": True}
            return 200, {"instances": None if instance is None else
                         {k: v for k, v in instance.items() if k not in ("ask", "body")}}
        return 404, {"error": "not_found"}

    def outbid(self, contract: int):
        self.instances[contract].update(actual_status="stopped", cur_state="stopped", intended_status="stopped",
                                        next_state="stopped")


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
            book_offer("runpod", "NVIDIA GeForce RTX 4090|community", "RTX4090", 0.69, 0.20, "community"),
            book_offer("runpod", "NVIDIA RTX A6000|secure", "A6000", 0.79, 0.25, "secure")])
        store.write_snapshot(session, "vast", store.utcnow(), [
            book_offer("vast", "101", "RTX4090", 0.45, 0.30 + 0.144 * 50 / 720, "verified"),
            book_offer("vast", "102", "RTX4090", 0.50, 0.35 + 0.144 * 50 / 720, "verified")])
    yield settings, sessions, runpod, vast
    runpod.close()
    vast.close()


def submit(cloud, corpus, backend, spot="spot"):
    settings, sessions, *_ = cloud
    job = campaigns.train_bag_job(settings, model="Qwen/Qwen3-0.6B", data=str(corpus), fraction=0.4, seed=0,
                                  method="lora", extra={"max_steps": 50})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend=backend, spot=spot))
    return job.spec


def finish(spec: JobSpec, label: str, code: int, log_tail: str = "", done: bool = True):
    """What jobs.run --report does on the box when the job ends."""
    if done:
        storage.write_bytes_atomic(storage.join(spec.output_uri, "DONE"), b"{}")
    storage.write_json_atomic(report_uri(spec.output_uri, label), {"exit_code": code, "log_tail": log_tail})


def test_runpod_spot_bid_interruption_relaunch_and_success(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod")
    assert spec.output_uri.startswith("memory://")
    supervisor = build_supervisor(settings, sessions)
    runpod.minimum_bid["NVIDIA GeForce RTX 4090"] = 0.21  # moved since the book was read
    assert supervisor.tick().launched == [spec.job_id]
    [pod] = runpod.pods.values()
    sent = pod["input"]
    assert sent["gpuTypeId"] == "NVIDIA GeForce RTX 4090" and sent["cloudType"] == "COMMUNITY"
    assert sent["bidPerGpu"] == pytest.approx(min(0.20 * 1.2, 0.21 * 1.05), abs=1e-4)  # cap: 120 % of the plan
    assert sent["name"] == f"planner-{spec.job_id}-a1"
    env = {e["key"]: e["value"] for e in sent["env"]}
    assert JobSpec.from_json(env["PLANNER_JOB_SPEC"]) == spec
    assert "python -m jobs.run --report" in sent["dockerArgs"] and "--hold" in sent["dockerArgs"]
    with sessions() as session:
        [attempt] = attempts_of(session, spec.job_id)
        assert attempt.usd_per_hour == pytest.approx(sent["bidPerGpu"]) and attempt.spot

    supervisor.tick()
    runpod.preempt(pod["id"])  # SIGTERM, SIGKILL, desiredStatus EXITED: no report was written
    report = supervisor.tick()
    assert report.relaunching == [spec.job_id]
    assert runpod.pods[pod["id"]]["desiredStatus"] == "TERMINATED"  # a stopped pod still bills its disk
    assert supervisor.tick().launched == [spec.job_id]
    second = [p for p in runpod.pods.values() if p["id"] != pod["id"]][0]
    assert second["input"]["gpuTypeId"] == "NVIDIA RTX A6000"  # the interrupted offer sits out its cool-down

    finish(spec, second["name"], 0)
    assert supervisor.tick().finished == [(spec.job_id, "succeeded")]
    assert second["desiredStatus"] == "TERMINATED"
    with sessions() as session:
        first, last = attempts_of(session, spec.job_id)
        assert (first.outcome, last.outcome) == ("preempted", "succeeded")
        assert first.dollars > 0 and last.dollars > 0
        dump = "\n".join(str(row) for table in ("jobs", "attempts", "snapshots")
                         for row in session.execute(text(f"SELECT * FROM {table}")))
    assert RUNPOD_KEY not in dump and RUNPOD_KEY not in runpod.everything_sent()
    assert all(r["headers"]["Authorization"] == f"Bearer {RUNPOD_KEY}" for r in runpod.requests)


def test_vast_outbid_then_a_failure_with_its_log_tail_and_orphans_reaped(cloud, toy_corpus):
    settings, sessions, _, vast = cloud
    vast.instances[5000] = {"id": 5000, "label": "planner-ghost-1234-a1", "actual_status": "running"}  # nobody's
    vast.instances[5001] = {"id": 5001, "label": "my-notebook", "actual_status": "running"}  # not ours at all
    spec = submit(cloud, toy_corpus, "vast")
    supervisor = build_supervisor(settings, sessions)
    assert supervisor.tick().launched == [spec.job_id]
    assert 5000 not in vast.instances and 5001 in vast.instances
    [contract] = [c for c in vast.instances if c >= 9000]
    created = vast.instances[contract]
    assert created["ask"] == 101 and created["body"]["price"] == pytest.approx(0.30 * 1.05, abs=1e-4)
    assert created["body"]["label"] == f"planner-{spec.job_id}-a1" and created["body"]["args"][:2] == ["sh", "-c"]
    vast.outbid(contract)
    assert supervisor.tick().relaunching == [spec.job_id]
    assert contract not in vast.instances  # destroyed: a stopped instance still bills storage
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
    assert written["exit_code"] == 2 and "has no config.json" in written["log_tail"]
    assert "has no config.json" in result.stderr  # passed through to the provider's log too


def test_a_failed_launch_is_provider_weather_not_a_job_failure(cloud, toy_corpus):
    settings, sessions, runpod, _ = cloud
    spec = submit(cloud, toy_corpus, "runpod")
    runpod.failing_deploys = 1  # HTTP 503 on the deploy mutation, sent once (a retry could rent twice)
    supervisor = build_supervisor(settings, sessions)
    supervisor.tick()
    assert not runpod.pods
    assert supervisor.tick().launched == [spec.job_id]
    [pod] = runpod.pods.values()
    assert pod["input"]["gpuTypeId"] == "NVIDIA RTX A6000"  # the offer that failed sits out its cool-down
    with sessions() as session:
        first, second = attempts_of(session, spec.job_id)
        assert first.outcome == "launch-failed" and "HTTP 503" in first.detail and first.dollars == 0
        assert second.outcome == "running" and session.get(Job, spec.job_id).state == "running"
