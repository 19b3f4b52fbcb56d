"""Fake Vast.ai (docs/providers/vast.md), each instance's command run as a real box (tests.simcloud.box).

- `POST /api/v0/bundles/`: the asks, with `dph_total` (on-demand, whole machine), `min_bid`, `storage_cost`
  ($/GB-month), `inet_down_cost` / `inet_up_cost` ($/GB), `duration`, `num_gpus`, `gpu_name`; the query's
  `{field: {op: value}}` filters (eq, neq, gt, gte, lt, lte, in, notin: vast-cli `vastai/api/query.py`) are
  honoured on every field an offer has (`{"eq": "any"}` lifts one).
- Bandwidth is billed per byte (tests.simcloud.meter): a box's traffic to its object store goes through a
  meter, billed at its ask's `inet_down_cost` / `inet_up_cost` per GB of 1e9 bytes.
- `PUT /api/v0/asks/{id}/`: the input limits of create_instance.yaml (image <= 1024 chars, args + args_str +
  onstart <= 4096, label <= 256, each env entry <= 256, disk >= 8, price 0.001-128) else 400
  `invalid_args`; an unknown ask is 404 `no_such_ask`; with a `price` the instance is interruptible, and
  a bid under the ask's current `min_bid` still creates a *stopped* instance: 400 `invalid_price` whose
  body carries `new_contract` (the caller must destroy it; its storage bills meanwhile).
  `runtype: "args"` keeps the image entrypoint: the box runs `[onstart] + args` (dstack's headless
  form: onstart "/bin/sh", args ["-c", script]) or `args_str`; ssh/jupyter run `onstart` as a script.
- `GET /api/v1/instances/`: 25 rows a page, `after_token` / `next_token` (null on the last page),
  JSON `select_filters` on stored columns only (actual_status, label, gpu_name, id; others 400);
  `GET /api/v0/instances/` answers 410 `deprecated_endpoint`; `GET /api/v0/instances/{id}/` still works.
- `DELETE /api/v0/instances/{id}/` -> {success: true}; 404 `no_such_instance` when gone.
- `PUT /api/v0/instances/{id}/` (manage_instance.yaml, vast-ai/docs; vast-cli `stop_instance` sends `{"state":
  "stopped"}`): `state` stopped|running and/or `label` (else 400 `invalid_args`), 404 `no_such_instance` when gone.
  A stop sends the box SIGTERM (SIGKILL after the grace): intended_status and next_state are "stopped" at once,
  the instance stays `running` until its container has exited, then all three are "stopped" and it bills its
  storage only ("When an instance is stopped all of your data on the instance is preserved", vast-cli `stop
  instance`; storage bills while stopped, docs/providers/vast.md "Offers") until it is destroyed. Starting a
  stopped instance is not simulated (400).
- `PUT /api/v0/instances/request_logs/{id}/` -> {success, result_url}; the URL answers 404 twice, then the last
  `tail` lines of the container's log, or with `daemon_logs` the host daemon's lines instead (logs.yaml).
- An outbid instance is stopped (SIGTERM, SIGKILL after the grace) with cur_state = intended_status =
  next_state = "stopped"; while stopped it bills storage only. 429s carry no Retry-After.
- Faults are injected per route: vast.search, vast.create, vast.list, vast.get, vast.delete, vast.manage, vast.logs.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
import uuid
from pathlib import Path

from tests.simcloud.box import Box, now
from tests.simcloud.meter import Meter
from tests.simcloud.server import FakeServer, Reply

HOURS_PER_MONTH = 720
PAGE = 25
STORED_COLUMNS = {"actual_status", "label", "gpu_name", "id"}
ASKS = {  # ask id -> (gpu name, VRAM GB, on-demand dph, min bid, storage $/GB-month, inet down, up $/GB)
    101: ("RTX 4090", 24, 0.45, 0.30, 0.144, 0.0, 0.0),
    102: ("RTX 4090", 24, 0.50, 0.35, 0.144, 0.0, 0.0),
    103: ("RTX A6000", 48, 0.55, 0.33, 0.144, 0.02, 0.02),
}
DURATION_S = 30 * 86400  # how long each host stays rentable (`duration`, seconds: docs/providers/vast.md "Offers")


OPS = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
       "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}


def err(status: int, error: str, msg: str, **extra) -> Reply:
    return Reply(status, {"success": False, "error": error, "msg": msg, **extra})


class FakeVast(FakeServer):
    def __init__(self, key: str, boxes_dir: Path, *, grace_s: float = 5.0):
        super().__init__(key)
        self.boxes_dir, self.grace_s = Path(boxes_dir), grace_s
        self.instances: dict[int, dict] = {}
        self.boxes: dict[int, Box] = {}
        self.gone: dict[int, Box] = {}
        self.min_bid = {ask: values[3] for ask, values in ASKS.items()}
        self.ids = itertools.count(9001)
        self.bills: dict[int, dict] = {}
        self.log_urls: dict[str, dict] = {}
        self.funds = 100.0  # USD deposited; what is left is funds - billed (`credit`)

    def dispatch(self, method, path, query, body, headers) -> Reply:
        self.enforce_balance()
        return super().dispatch(method, path, query, body, headers)

    def route(self, method, path, query, body, headers):
        if path == "/api/v0/users/current/" and method == "GET":  # show_user.yaml; authentication.mdx: `credit`
            return "vast.user", lambda: Reply(200, {"id": 4242, "email": "lab@example.com",
                                                    "credit": round(self.balance(), 4)})
        if path == "/api/v0/bundles/" and method == "POST":
            return "vast.search", lambda: self._search(body or {})
        if match := re.fullmatch(r"/api/v0/asks/(\d+)/", path):
            return "vast.create", lambda: self._create(int(match.group(1)), body or {})
        if path == "/api/v1/instances/" and method == "GET":
            return "vast.list", lambda: self._list(query)
        if path == "/api/v0/instances/" and method == "GET":
            return "vast.list_v0", lambda: Reply(410, {"success": False, "error": "deprecated_endpoint",
                                                       "msg": "this endpoint is deprecated; use /api/v1/instances/"})
        if match := re.fullmatch(r"/api/v0/instances/request_logs/(\d+)/", path):
            return "vast.logs", lambda: self._request_logs(int(match.group(1)), body or {})
        if match := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
            instance_id = int(match.group(1))
            if method == "GET":
                return "vast.get", lambda: self._get(instance_id)
            if method == "DELETE":
                return "vast.delete", lambda: self._delete(instance_id)
            if method == "PUT":
                return "vast.manage", lambda: self._manage(instance_id, body)
        if match := re.fullmatch(r"/logs/([\w-]+)", path):
            return "vast.log_url", lambda: self._log_url(match.group(1))
        return "vast.other", lambda: err(404, "not_found", f"no route {method} {path}")

    def authorized(self, header):
        return header == f"Bearer {self.key}"

    def unauthorized(self):
        return err(404, "auth_error", "Invalid user key")  # docs/providers/vast.md, "Errors": a revoked key is 404 auth_error

    def forbidden(self):
        return err(403, "not_authorized", "this API key's scope does not include that")

    def scope_allows(self, instance_id: str, method: str, path: str) -> bool:
        """A per-instance key starts, stops, shows or destroys its own instance, nothing else."""
        return path == f"/api/v0/instances/{instance_id}/" and method in ("GET", "PUT", "DELETE")

    # ------------------------------------------------------------------ offers and create

    def _offer(self, ask: int) -> dict:
        gpu, vram, dph, _, storage, down, up = ASKS[ask]
        return {"id": ask, "ask_contract_id": ask, "gpu_name": gpu, "num_gpus": 1, "gpu_ram": vram * 1024,
                "dph_total": dph, "dph_base": dph, "min_bid": self.min_bid[ask], "storage_cost": storage,
                "reliability2": 0.99, "verified": True, "rentable": True, "rented": False, "external": False,
                "cuda_max_good": 12.8, "compute_cap": 890, "disk_space": 200, "inet_down": 800,
                "inet_down_cost": down, "inet_up_cost": up, "duration": DURATION_S, "geolocation": "US"}

    def _search(self, query: dict) -> Reply:
        offers = [self._offer(a) for a in ASKS]
        fields = set(offers[0])
        for field, condition in query.items():
            if not isinstance(condition, dict):
                continue  # type, limit, order, allocated_storage: not filters
            for op, value in condition.items():
                if value == "any" or (op in OPS and field not in fields):
                    continue  # {"eq": "any"} lifts a filter; a field our offers lack is not judged
                if op not in OPS:
                    return err(400, "invalid_args", f"unknown operator {op} on {field}")
                offers = [o for o in offers if OPS[op](o[field], value)]
        return Reply(200, {"offers": offers})

    def _create(self, ask: int, body: dict) -> Reply:
        if ask not in ASKS:
            return err(404, "no_such_ask", f"Instance type by id {ask} is not available.", ask_id=ask)
        problems = []
        args = body.get("args") or []
        env = body.get("env") or {}
        if len(str(body.get("image") or "")) > 1024 or not body.get("image"):
            problems.append("image is required and at most 1024 characters")
        if len(json.dumps(args)) + len(body.get("args_str") or "") + len(body.get("onstart") or "") > 4096:
            problems.append("args + args_str + onstart exceed 4096 characters")
        if len(body.get("label") or "") > 256:
            problems.append("label exceeds 256 characters")
        if not isinstance(env, dict) or any(len(f"{k}={v}") > 256 for k, v in env.items()):
            problems.append("each env entry must be at most 256 characters")
        if float(body.get("disk") or 0) < 8:
            problems.append("disk must be at least 8 GB")
        price = body.get("price")
        if price is not None and not 0.001 <= float(price) <= 128:
            problems.append("price must be within 0.001-128")
        if problems:
            return err(400, "invalid_args", "; ".join(problems), ask_id=ask)
        gpu, _, dph, _, storage_cost, down_cost, up_cost = ASKS[ask]
        storage = storage_cost * float(body["disk"]) / HOURS_PER_MONTH
        instance_id = next(self.ids)
        interruptible = price is not None
        rate = round((float(price) if interruptible else dph) + storage, 6)
        instance = {"id": instance_id, "label": body.get("label"), "gpu_name": gpu, "num_gpus": 1,
                    "dph_total": rate, "storage_rate": storage, "is_bid": interruptible, "ask": ask,
                    "actual_status": "running", "intended_status": "running", "cur_state": "running",
                    "next_state": "running", "status_msg": "", "image_uuid": body.get("image")}
        meter = None
        if env.get("AWS_ENDPOINT_URL"):  # the box reaches its object store through the host's network meter
            meter = Meter(env["AWS_ENDPOINT_URL"])
            env = {**env, "AWS_ENDPOINT_URL": meter.url}
        self.bills[instance_id] = {"label": body.get("label") or "", "segments": [[now(), None, rate]],
                                   "meter": meter, "per_gb": (down_cost, up_cost)}
        self.instances[instance_id] = instance
        if interruptible and float(price) < self.min_bid[ask]:  # a losing bid: created stopped (docs/providers/vast.md, "Create")
            self._set_stopped(instance_id, "bid below the current minimum")
            return err(400, "invalid_price", f"bid {price} is below the minimum {self.min_bid[ask]}",
                       ask_id=ask, new_contract=instance_id)
        # every instance gets its id and a per-instance key (vast-ai/docs guides/instances/docker-environment.mdx,
        # "Predefined Variables"), which "can only start, stop, or destroy that specific instance" (hello-world.mdx)
        provided = {"CONTAINER_ID": str(instance_id), "CONTAINER_API_KEY": self.issue_instance_key(instance_id)}
        self.boxes[instance_id] = Box(self.boxes_dir, f"vast-{instance_id}", self._argv(body),
                                      {str(k): str(v) for k, v in env.items()}, grace_s=self.grace_s,
                                      provided_env=provided)
        return Reply(200, {"success": True, "new_contract": instance_id})

    @staticmethod
    def _argv(body: dict) -> list[str]:
        onstart = body.get("onstart") or ""
        if body.get("runtype") == "args":
            rest = list(body.get("args") or []) or shlex.split(body.get("args_str") or "")
            return ([onstart] if onstart else []) + rest or ["/bin/true"]
        return ["/bin/sh", "-c", onstart or "true"]

    # ------------------------------------------------------------------ instances

    def _row(self, instance: dict) -> dict:
        box = self.boxes.get(instance["id"])
        if box is not None and not box.alive and instance["intended_status"] == "stopped" and instance[
                "cur_state"] != "stopped":  # a stop asked for: the container has exited now
            self._set_stopped(instance["id"], "stopped", when=box.stopped_at)
        if box is not None and not box.alive and instance["actual_status"] == "running":
            instance.update(actual_status="exited", status_msg=f"container exited with code {box.exit_code}")
        return {k: v for k, v in instance.items() if k not in ("storage_rate", "ask")}

    def _list(self, query: dict) -> Reply:
        try:
            filters = json.loads(query.get("select_filters") or "{}")
        except ValueError:
            return err(400, "invalid_args", "select_filters is not JSON")
        if bad := set(filters) - STORED_COLUMNS:
            return err(400, "invalid_args", f"cannot filter on computed column {sorted(bad)[0]}")
        rows = [self._row(i) for i in sorted(self.instances.values(), key=lambda i: i["id"])]
        for column, condition in filters.items():
            if "eq" in condition:
                rows = [r for r in rows if r.get(column) == condition["eq"]]
            if "in" in condition:
                rows = [r for r in rows if r.get(column) in condition["in"]]
        after = query.get("after_token")
        start = int(after) if after and after.isdigit() else 0
        page = rows[start:start + PAGE]
        labels: dict[str, int] = {}
        for r in rows:
            labels[r.get("label") or ""] = labels.get(r.get("label") or "", 0) + 1
        return Reply(200, {"instances": page, "total_instances": len(rows), "label_counts": labels,
                           "next_token": str(start + PAGE) if start + PAGE < len(rows) else None})

    def _get(self, instance_id: int) -> Reply:
        instance = self.instances.get(instance_id)
        return Reply(200, {"instances": None if instance is None else self._row(instance)})

    def _delete(self, instance_id: int) -> Reply:
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return err(404, "no_such_instance", f"instance {instance_id} does not exist")
        box = self.boxes.pop(instance_id, None)
        if box is not None:
            box.stop("destroyed")
            self.gone[instance_id] = box
        self._bill_segment(instance_id, None)
        return Reply(200, {"success": True})

    def _manage(self, instance_id: int, body) -> Reply:
        instance = self.instances.get(instance_id)
        if instance is None:
            return err(404, "no_such_instance", f"instance {instance_id} does not exist")
        if not isinstance(body, dict) or not {"state", "label"} & set(body) or body.get("state", "stopped") not in (
                "stopped", "running") or len(str(body.get("label", ""))) > 1024:
            return err(400, "invalid_args", "give state (stopped or running) and/or a label of at most 1024 characters")
        if "label" in body:
            instance["label"] = self.bills[instance_id]["label"] = str(body["label"])
        if body.get("state") == "running" and instance["intended_status"] == "stopped":
            return err(400, "invalid_args", "starting a stopped instance is not simulated")
        if body.get("state") == "stopped" and instance["intended_status"] != "stopped":
            instance.update(intended_status="stopped", next_state="stopped", status_msg="stopping")
            box = self.boxes.get(instance_id)
            if box is not None:
                box.stop("stopped")
            self._row(instance)  # a box already ended is stopped at once
        return Reply(200, {"success": True})

    def _request_logs(self, instance_id: int, body: dict) -> Reply:
        """logs.yaml: `tail` lines of the container's log, or with `daemon_logs` "the daemon system logs
        instead of container logs" (the host's docker daemon: pulls, starts, exits; never the job's lines)."""
        if instance_id not in self.instances:
            return err(404, "invalid_id", f"instance {instance_id} not found")
        token = uuid.uuid4().hex
        daemon = str(body.get("daemon_logs", "")).lower() in ("true", "1")
        try:
            tail = max(1, int(body.get("tail") or 1000))
        except (TypeError, ValueError):
            return err(400, "invalid_args", "tail must be a number")
        self.log_urls[token] = {"id": instance_id, "misses": 2, "daemon": daemon, "tail": tail}
        return Reply(200, {"success": True, "result_url": f"{self.url}/logs/{token}", "msg": "logs requested"})

    def _log_url(self, token: str) -> Reply:
        entry = self.log_urls.get(token)
        if entry is None:
            return Reply(404, "<Error>NoSuchKey</Error>")
        if entry["misses"] > 0:
            entry["misses"] -= 1
            return Reply(404, "<Error>NoSuchKey</Error>")
        if entry["daemon"]:
            instance = self.instances.get(entry["id"], {})
            return Reply(200, "".join(f"{line}\n" for line in self.daemon_lines(entry["id"], instance)))
        box = self.boxes.get(entry["id"]) or self.gone.get(entry["id"])
        return Reply(200, "\n".join(box.lines()[-entry["tail"]:]) + "\n" if box else "")

    @staticmethod
    def daemon_lines(instance_id: int, instance: dict) -> list[str]:
        return [f"vastai-daemon: pulling image {instance.get('image_uuid')}",
                f"vastai-daemon: starting container C.{instance_id}",
                f"vastai-daemon: container C.{instance_id} status {instance.get('actual_status')}"]

    # ------------------------------------------------------------------ billing and events

    def _set_stopped(self, instance_id: int, why: str, when=None) -> None:
        instance = self.instances[instance_id]
        instance.update(actual_status="stopped", intended_status="stopped", cur_state="stopped", next_state="stopped",
                        status_msg=why)
        self._bill_segment(instance_id, instance["storage_rate"], when)

    def _bill_segment(self, instance_id: int, rate: float | None, when=None) -> None:
        """End the current billing segment at `when` (default now); start one at `rate` (None: the instance is gone)."""
        when = when or now()
        segments = self.bills[instance_id]["segments"]
        if segments[-1][1] is None:
            segments[-1][1] = when
        if rate is not None:
            segments.append([when, None, rate])

    def balance(self) -> float:
        return self.funds - self.billed_usd()

    def enforce_balance(self) -> None:
        """At $0 running instances are stopped; their disk keeps billing (vast-ai/docs guides/reference/billing.mdx,
        "When your balance reaches zero"; guides/instances/pricing.mdx)."""
        if self.balance() > 0:
            return
        for instance_id, box in list(self.boxes.items()):
            if box.alive and self.instances.get(instance_id, {}).get("actual_status") == "running":
                box.stop("balance reached zero")
                self._set_stopped(instance_id, "stopped: the account's balance reached zero")

    def outbid(self, instance_id: int) -> None:
        """Someone bid more: the box gets SIGTERM (SIGKILL after the grace), the instance is stopped."""
        box = self.boxes.get(instance_id)
        if box is not None:
            box.stop("outbid")
        self._set_stopped(instance_id, "outbid")

    def close(self) -> None:
        super().close()
        for bill in self.bills.values():
            if bill.get("meter") is not None:
                bill["meter"].close()

    def exists(self, instance_id: str) -> bool:
        return int(instance_id) in self.instances

    def live(self) -> list[str]:
        return [i["label"] for iid, i in self.instances.items() if iid in self.boxes and self.boxes[iid].alive]

    def kept(self) -> list[str]:
        """Labels of instances not destroyed, running or stopped (a stopped one still bills its storage)."""
        return [i["label"] for i in self.instances.values()]

    def billed_usd(self, label_prefix: str = "") -> float:
        total = 0.0
        for bill in self.bills.values():
            if not bill["label"].startswith(label_prefix):
                continue
            for start, end, rate in bill["segments"]:
                seconds = -(-((end or now()) - start).total_seconds() // 1)
                total += rate * seconds / 3600
            total += self.bandwidth_usd(bill)
        return total

    @staticmethod
    def bandwidth_usd(bill: dict) -> float:
        meter, (down, up) = bill.get("meter"), bill.get("per_gb", (0.0, 0.0))
        return 0.0 if meter is None else (meter.down * down + meter.up * up) / 1e9
