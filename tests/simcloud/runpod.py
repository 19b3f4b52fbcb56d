"""Fake RunPod: REST v2 pods (docs/providers/runpod.md, "Pods"), the v2 GPU catalog ("Prices and
availability") and the GraphQL price and balance queries ("GraphQL"), each pod's `args` run as a real
box (tests.simcloud.box).

- `POST /v2/pods` is strict: an unknown field (top level or in `gpu`) is 422 naming it; `cloud` must be
  SECURE or COMMUNITY (ALL is gone); no capacity for the (gpu, cloud) is 400 with only `detail` saying so.
  A 201 answers the Pod with `cost` (USD per hour, the billed rate) and `dataCenterId`.
- `args` is one string handed to the image ENTRYPOINT; the PyTorch image has none, so it runs as a
  shell command line (`/bin/sh -c ARGS`, as Docker runs a string CMD).
- `GET /v2/pods/{id}`: a new pod passes PROVISIONING and STARTING before RUNNING (the v2 OpenAPI `PodStatus`;
  docs/providers/runpod.md, "Pods"), for `boot_s` after its create (0: at once), its container started only then,
  `runtime` null until RUNNING; RUNNING with a runtime while the box runs; EXITED (cost 0, runtime null) once its
  command ends; 404 after DELETE (204). `GET /v2/pods` lists every pod and ignores unknown parameters.
- `POST /v2/pods/{id}/action` (v2 OpenAPI `podAction`, runpod/docs api-reference-v2/openapi.json @a900806e):
  a body of only `action` (start|stop|restart|terminate; else 422); `stop` "releasing GPU/CPU compute while
  keeping its disk. The pod moves to `EXITED`": the box gets SIGTERM (SIGKILL after the grace) and the pod
  answers 200 with the pod, still RUNNING until its container has exited, then EXITED; an action the pod's
  `actions` do not list is 409 (EXITED allows start/terminate). `terminate` is DELETE (204). A stopped pod's
  disk bills on until it is deleted: "stopped Pods are charged $0.20 per GB per month" (docs/providers/runpod.md,
  "Billing"). start and restart are not simulated (422).
- `GET /v2/pods/{id}/logs`: Server-Sent Events `id:` + `data:{"ts","source","line"}`, `tail` (default 100,
  0 = live only) and `Last-Event-ID` to resume; the stream follows the box while it runs.
- The edge (Cloudflare) answers urllib's default User-Agent with 403 "error code: 1010" before reading the key.
- Errors are RFC 9457 bodies; every answer has RateLimit headers; a 429 carries Retry-After.
- Faults are injected per route: rp.create, rp.get, rp.list, rp.delete, rp.action, rp.logs, rp.graphql, rp.catalog.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path

from tests.simcloud.box import Box, now
from tests.simcloud.server import FakeServer, Reply

POD_FIELDS = {"name", "image", "templateId", "gpu", "cpu", "cloud", "dataCenterIds", "disk", "env", "ports", "args",
              "registry", "mounts", "startSsh", "startJupyter", "globalNetworking"}
GPU_FIELDS = {"id", "count", "allowedCudaVersions", "minCudaVersion", "minRamPerGpu", "minVcpuCountPerGpu"}
STOPPED_DISK_USD_PER_GB_MONTH = 0.20  # a stopped pod's disk (docs/providers/runpod.md, "Billing"); 720 h a month
RATE_HEADERS = {"RateLimit": "limit=60, remaining=59, reset=60", "RateLimit-Policy": "60;w=60"}
CATALOG = {  # id -> (VRAM GB, price per GPU-hour by cloud)
    "NVIDIA GeForce RTX 4090": (24, {"SECURE": 0.69, "COMMUNITY": 0.44}),
    "NVIDIA RTX A6000": (48, {"SECURE": 0.79, "COMMUNITY": 0.49}),
}


def problem(status: int, title: str, detail: str, **extra) -> Reply:
    return Reply(status, {"title": title, "status": status, "detail": detail, **extra}, RATE_HEADERS)


class FakeRunPod(FakeServer):
    def __init__(self, key: str, boxes_dir: Path, *, grace_s: float = 5.0):
        super().__init__(key)
        self.boxes_dir, self.grace_s = Path(boxes_dir), grace_s
        self.pods: dict[str, dict] = {}
        self.boxes: dict[str, Box] = {}
        self.capacity: dict[tuple[str, str], int] = {}  # (gpu id, cloud) -> pods it can still start; absent: plenty
        self.ids = itertools.count(1)
        self.bills: dict[str, dict] = {}  # pod id -> {"name", "rate", "start", "end", "box"}
        self.gone: dict[str, Box] = {}  # deleted pods' boxes (their logs stay readable)
        self.funds = 100.0  # USD deposited; what is left is funds - billed (clientBalance)
        self.boot_s = 0.0  # PROVISIONING for the first half of it after a create, then STARTING; the container after

    # ------------------------------------------------------------------ routing

    def dispatch(self, method, path, query, body, headers) -> Reply:
        self.enforce_balance()
        return super().dispatch(method, path, query, body, headers)

    def route(self, method, path, query, body, headers):
        if path == "/graphql" and method == "POST":
            return "rp.graphql", lambda: self._graphql(body or {})
        if path == "/v2/catalog/gpus" and method == "GET":
            return "rp.catalog", self._catalog
        if path == "/v2/pods" and method == "POST":
            return "rp.create", lambda: self._create(body)
        if path == "/v2/pods" and method == "GET":
            return "rp.list", lambda: Reply(200, {"pods": [self._view(p) for p in self.pods.values()]}, RATE_HEADERS)
        if (match := re.fullmatch(r"/v2/pods/([\w-]+)/action", path)) and method == "POST":
            return "rp.action", lambda: self._action(match.group(1), body)
        if match := re.fullmatch(r"/v2/pods/([\w-]+)/logs", path):
            return "rp.logs", lambda: self._logs(match.group(1), query, headers)
        if match := re.fullmatch(r"/v2/pods/([\w-]+)", path):
            pod_id = match.group(1)
            if method == "GET":
                return "rp.get", lambda: self._get(pod_id)
            if method == "DELETE":
                return "rp.delete", lambda: self._delete(pod_id)
        return "rp.other", lambda: problem(404, "Not Found", f"no route {method} {path}")

    def edge_refusal(self, user_agent: str | None) -> Reply | None:
        """RunPod's API is behind Cloudflare, whose edge refuses the standard library's default User-Agent
        (`Python-urllib/3.x`) with 403 "error code: 1010" before it reads the key (docs/providers/runpod.md,
        "Box identity")."""
        if (user_agent or "").startswith("Python-urllib/"):
            return Reply(403, "error code: 1010")
        return None

    def scope_allows(self, instance_id: str, method: str, path: str) -> bool:
        """A pod-scoped key acts on its own pod only: read it, delete it, its actions and logs."""
        return re.fullmatch(rf"/v2/pods/{re.escape(instance_id)}(/action|/logs)?", path) is not None

    # ------------------------------------------------------------------ pods

    def _create(self, body) -> Reply:
        if not isinstance(body, dict):
            return problem(422, "Unprocessable Entity", "the body must be a JSON object")
        unknown = sorted(set(body) - POD_FIELDS)
        if unknown:
            return problem(422, "Unprocessable Entity", f"unknown field '{unknown[0]}'",
                           errors=[{"field": f, "message": "unknown field"} for f in unknown])
        gpu = body.get("gpu")
        if not body.get("name") or not (body.get("image") or body.get("templateId")) or (gpu is None) == (
                body.get("cpu") is None):
            return problem(422, "Unprocessable Entity", "name, image and exactly one of gpu or cpu are required")
        if not isinstance(gpu, dict) or set(gpu) - GPU_FIELDS:
            bad = sorted(set(gpu) - GPU_FIELDS) if isinstance(gpu, dict) else ["gpu"]
            return problem(422, "Unprocessable Entity", f"unknown field 'gpu.{bad[0]}'")
        if "allowedCudaVersions" in gpu and "minCudaVersion" in gpu:
            return problem(422, "Unprocessable Entity", "give allowedCudaVersions or minCudaVersion, not both")
        cloud = body.get("cloud", "SECURE")
        if cloud not in ("SECURE", "COMMUNITY"):
            return problem(422, "Unprocessable Entity", f"cloud must be SECURE or COMMUNITY, not {cloud!r}")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            return problem(422, "Unprocessable Entity", "env must be a map of strings")
        if gpu.get("id") not in CATALOG:
            return problem(400, "Bad Request", f"GPU type {gpu.get('id')!r} does not exist")
        count = int(gpu.get("count", 1))
        key = (gpu["id"], cloud)
        if self.capacity.get(key, 1) <= 0:
            return problem(400, "Bad Request", "There are no longer any instances available with the requested "
                                               "specifications. Please refresh and try again.")
        rate = round(CATALOG[gpu["id"]][1][cloud] * count, 4)
        if self.balance() < rate:  # "at least one hour's worth of credits" to deploy (runpod/docs pods/pricing.mdx)
            return problem(402, "Payment Required", "Insufficient balance to create this pod.")
        if key in self.capacity:
            self.capacity[key] -= 1
        pod_id = f"rp{next(self.ids):04d}x"
        args = body.get("args") or ""
        # RunPod injects the pod's id and a pod-scoped key into every pod (runpod/docs
        # pods/templates/environment-variables.mdx, "Runpod-provided variables")
        provided = {"RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": self.issue_instance_key(pod_id)}
        argv = ["/bin/sh", "-c", args] if args else ["/bin/true"]
        if self.boot_s > 0:  # the image pull and the container's start: nothing of the pod's command runs yet
            argv = ["/bin/sh", "-c", f'sleep {self.boot_s}; exec "$@"', "boot", *argv]
        box = Box(self.boxes_dir, f"runpod-{pod_id}", argv, env, grace_s=self.grace_s, provided_env=provided)
        pod = {"id": pod_id, "name": body["name"], "image": body.get("image"), "cloud": cloud,
               "gpu": {"id": gpu["id"], "count": count, "vcpuCount": 8 * count, "memory": 62 * count},
               "dataCenterId": "EU-RO-1", "cudaVersion": "12.8", "cost": rate, "createdAt": box.started_at.isoformat() + "Z",
               "startedAt": box.started_at.isoformat() + "Z", "actions": ["stop", "restart", "terminate"],
               "ssh": None, "env": env, "args": args, "ports": body.get("ports") or []}
        with self.lock:
            self.pods[pod_id], self.boxes[pod_id] = pod, box
            self.bills[pod_id] = {"name": body["name"], "rate": rate, "start": box.started_at, "end": None, "box": box,
                                  "disk_gb": float(body.get("disk") or 0), "stopped": False, "deleted_at": None}
        return Reply(201, self._view(pod), RATE_HEADERS)

    def _view(self, pod: dict) -> dict:
        box = self.boxes.get(pod["id"])
        running = box is not None and box.alive
        if not running and box is not None:
            self._stopped_billing(pod["id"], box.stopped_at or now())
        age = (now() - box.started_at).total_seconds() if box is not None else math.inf
        status = ("EXITED" if not running else "PROVISIONING" if age < self.boot_s / 2
                  else "STARTING" if age < self.boot_s else "RUNNING")
        return {k: v for k, v in pod.items() if k not in ("env", "args")} | {
            "status": status, "cost": pod["cost"] if running else 0,
            "actions": ["stop", "restart", "terminate"] if running else ["start", "terminate"],
            "runtime": {"uptime": int(age - self.boot_s),
                        "gpus": [{"util": 90, "memoryUtil": 40}], "ports": []} if status == "RUNNING" else None}

    def _get(self, pod_id: str) -> Reply:
        pod = self.pods.get(pod_id)
        if pod is None:
            return problem(404, "Not Found", f"pod {pod_id} not found")
        return Reply(200, self._view(pod), RATE_HEADERS)

    def _delete(self, pod_id: str) -> Reply:
        with self.lock:
            pod = self.pods.pop(pod_id, None)
            box = self.boxes.pop(pod_id, None)
        if pod is None:
            return problem(404, "Not Found", f"pod {pod_id} not found")
        if box is not None:
            box.stop("terminated")
            self._stopped_billing(pod_id, now())
            self.gone[pod_id] = box
        self.bills[pod_id]["deleted_at"] = now()
        return Reply(204, None, RATE_HEADERS)

    def _action(self, pod_id: str, body) -> Reply:
        if not isinstance(body, dict) or set(body) != {"action"} or body["action"] not in (
                "start", "stop", "restart", "terminate"):
            return problem(422, "Unprocessable Entity", "the body must be {\"action\": start|stop|restart|terminate}")
        pod = self.pods.get(pod_id)
        if pod is None:
            return problem(404, "Not Found", f"pod {pod_id} not found")
        action, view = body["action"], self._view(pod)
        if action not in view["actions"]:
            return problem(409, "Conflict", f"action {action} is not valid for a pod in status {view['status']}")
        if action == "terminate":
            return self._delete(pod_id)
        if action != "stop":
            return problem(422, "Unprocessable Entity", f"action {action} is not simulated")
        self.boxes[pod_id].stop("stopped")  # SIGTERM now, SIGKILL after the grace; RUNNING until it has exited
        self.bills[pod_id]["stopped"] = True
        return Reply(200, self._view(pod), RATE_HEADERS)

    def _stopped_billing(self, pod_id: str, when) -> None:
        bill = self.bills.get(pod_id)
        if bill is not None and bill["end"] is None:
            bill["end"] = when

    # ------------------------------------------------------------------ logs (SSE)

    def _logs(self, pod_id: str, query: dict, headers: dict) -> Reply:
        box = self.boxes.get(pod_id) or self.gone.get(pod_id)
        if pod_id not in self.pods:
            return problem(404, "Not Found", f"pod {pod_id} not found")
        tail = min(int(query.get("tail", 100)), 5000)
        resume = headers.get("Last-Event-ID")

        def events():
            sent = int(resume) if resume and resume.isdigit() else None
            lines = box.lines()
            start = sent if sent is not None else (len(lines) if tail == 0 else max(0, len(lines) - tail))
            deadline = time.monotonic() + 30
            while True:
                lines = box.lines()
                for number in range(start, len(lines)):
                    data = json.dumps({"ts": now().isoformat() + "Z", "source": "container", "line": lines[number]})
                    yield f"id: {number + 1}\ndata: {data}\n\n"
                start = len(lines)
                if not box.alive or time.monotonic() > deadline:
                    return
                time.sleep(0.2)

        return Reply(200, stream=events())

    # ------------------------------------------------------------------ prices

    def _catalog(self) -> Reply:
        return Reply(200, {"gpus": [{"id": gpu_id, "name": gpu_id.replace("NVIDIA ", ""), "manufacturer": "NVIDIA",
                                     "memory": vram, "secure": True, "community": True, "pool": None,
                                     "price": {"secure": p["SECURE"], "community": p["COMMUNITY"], "serverless": None},
                                     "maxCount": {"secure": 8, "community": 8}, "availability": "HIGH"}
                                    for gpu_id, (vram, p) in CATALOG.items()]}, RATE_HEADERS)

    def _graphql(self, body: dict) -> Reply:
        query = body.get("query") or ""
        if "myself" in query:
            spend = sum(b["rate"] for b in self.bills.values() if b["end"] is None)
            return Reply(200, {"data": {"myself": {"clientBalance": round(self.balance(), 4),
                                                   "currentSpendPerHr": spend}}})
        if "gpuTypes" in query:
            return Reply(200, {"data": {"gpuTypes": [
                {"id": gpu_id, "displayName": gpu_id.replace("NVIDIA ", ""), "memoryInGb": vram,
                 "secureCloud": True, "communityCloud": True, "securePrice": p["SECURE"],
                 "communityPrice": p["COMMUNITY"], "secureSpotPrice": None, "communitySpotPrice": None,
                 "maxGpuCount": 8, "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": p["COMMUNITY"],
                                                   "stockStatus": "High"}}
                for gpu_id, (vram, p) in CATALOG.items()]}})
        return Reply(200, {"errors": [{"message": "unknown operation"}], "data": None})

    # ------------------------------------------------------------------ the balance

    def balance(self) -> float:
        return self.funds - self.billed_usd()

    def enforce_balance(self) -> None:
        """At $0 pods are stopped, and those without a network volume (all of ours) terminated (runpod/docs
        pods/pricing.mdx, "Account limits")."""
        if self.balance() > 0:
            return
        for pod_id in [pid for pid, box in list(self.boxes.items()) if box.alive]:
            self._delete(pod_id)

    # ------------------------------------------------------------------ for tests

    def kill_host(self, pod_id: str) -> None:
        """The host dies under the pod: the box is killed at once (no report), the pod shows EXITED."""
        box = self.boxes[pod_id]
        box.grace_s = 0.0
        box.stop("host failure", wait=True)

    def exists(self, instance_id: str) -> bool:
        return instance_id in self.pods

    def live(self) -> list[str]:
        """Names of pods whose box still runs (orphans, once every job is final)."""
        return [p["name"] for pid, p in self.pods.items() if self.boxes[pid].alive]

    def kept(self) -> list[str]:
        """Names of pods not deleted, running or stopped (a stopped pod still bills its disk)."""
        return [p["name"] for p in self.pods.values()]

    def billed_usd(self, name_prefix: str = "") -> float:
        total = 0.0
        for bill in self.bills.values():
            if bill["name"].startswith(name_prefix):
                box = bill["box"]
                end = bill["end"] or (box.stopped_at if not box.alive and box.stopped_at else now())
                seconds = -(-(end - bill["start"]).total_seconds() // 1)  # per-second billing, rounded up
                total += bill["rate"] * seconds / 3600
                if bill["stopped"] and not box.alive and box.stopped_at:  # its disk, from the stop to the delete
                    stopped = -(-((bill["deleted_at"] or now()) - box.stopped_at).total_seconds() // 1)
                    total += bill["disk_gb"] * STOPPED_DISK_USD_PER_GB_MONTH / 720 * max(stopped, 0) / 3600
        return total
