"""RunPod pods through REST v2 (pricing.providers.runpod_api; the facts and their sources are in
docs/providers/runpod.md, cited by section).

RunPod is on-demand only ("No spot": the registry says so, and no RunPod offer carries a spot price). A
pod is created with `POST /v2/pods` ("Pods"): an explicit `cloud` (the offer's tier: SECURE or COMMUNITY;
omitted would mean SECURE), the offer's GPU type id and count (`gpu.count`: a multi-GPU offer is one pod
with that many GPUs), `minCudaVersion` from the job image's tag, a container
disk sized from the job's needs, no ports, and the box script as one `args` string: base64, decoded
by `sh -c`, so no quoting of the script can go wrong. The container disk is wiped on a restart:
checkpoints and outputs live on durable storage (the spec's fsspec URIs, required by box_plan).
The pod's name is our label; the list cannot filter server-side, so the reaper filters by name.

Create answers ("Pods"): 422 is our bug (RequestRejected: the job fails, loudly), 400/403 no capacity
or not allowed (NoCapacity: next candidate after the offer's cool-down), 402 the balance (OutOfFunds:
launching on RunPod stops), 401 a rejected key (KeyRejected: launching on RunPod stops), 429 waits
Retry-After. A create is sent once otherwise (a
retried timeout could rent twice); a pod created anyway carries our label, so it is adopted or reaped.
The pod's billed `cost` ($/h) is kept as the attempt's `billed_usd_per_hour`. Status is the v2 enum
PROVISIONING|STARTING|RUNNING|EXITED|ERROR|TERMINATED; the attempt's report (planner.run.backends.
remote) decides how a job ended. Logs stream as SSE from `/v2/pods/{id}/logs?source=container` (the
job's lines, not the host's), resumed with Last-Event-ID ("Logs").
"""
from __future__ import annotations

import base64
import dataclasses
import math
import shlex
import threading
from collections.abc import Iterator

from planner.run.backends.base import (
    BackendError,
    Handle,
    KeyRejected,
    LaunchPlan,
    NoCapacity,
    OutOfFunds,
    PollResult,
    RequestRejected,
    Status,
    job_of_label,
)
from planner.run.backends.remote import CloudBackend, box_plan, ended, image_cuda, report_logs, vanished
from pricing.offer import Offer
from pricing.providers.base import ProviderError
from pricing.providers.http import ApiError, AuthenticationError, RetryPolicy
from pricing.providers.registry import PROVIDERS, RUNPOD
from pricing.providers.runpod_api import CLOUDS, RunPodAPI

LIVE = ("PROVISIONING", "STARTING", "RUNNING")
BOX_SCRIPT = "/tmp/planner-box.sh"


def box_args(script: str) -> str:
    """The pod's `args`: one string that writes the (base64) script to a file and execs it, so the
    job's process receives the container's signals and no character of the script needs quoting. The
    string is run by a shell (`/bin/sh -c ARGS`, Docker's string CMD), and dash forks rather than execs a
    last command: without the leading `exec` that shell stays PID 1, which ignores SIGTERM, and a stop
    or a preemption never reaches the job (found with the simulated pod: the pod read EXITED, its job
    still running)."""
    encoded = base64.b64encode(script.encode()).decode()
    return "exec sh -c " + shlex.quote(f"echo {encoded} | base64 -d > {BOX_SCRIPT} && exec sh {BOX_SCRIPT}")


class RunPodBackend(CloudBackend):
    name = RUNPOD
    billing_seconds = 1  # per-second billing
    logs_hint = "no log yet: the pod has not written one, and the job's report has not arrived"

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> RunPodBackend:
        mine = settings.providers[RUNPOD]
        return cls(RunPodAPI(mine.url, mine.api_key, timeout=settings.http_timeout, retry=retry),
                   image=settings.job_image, jobs_install=settings.jobs_install,
                   startup_s=settings.box_startup_minutes * 60)

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float,
             disk_gb: float | None = None, max_hours: float | None = None) -> LaunchPlan:
        if offer is None or offer.provider != RUNPOD:
            raise BackendError("the RunPod backend needs a RunPod offer")
        gpu_type, tier = (offer.offer_key.split("|") + [""])[:2]  # "{type}|{tier}" or "{type}|{tier}|{count}"
        if tier not in CLOUDS:
            raise BackendError(f"RunPod offer {offer.offer_key} names no cloud tier (secure or community)")
        disk = max(1, math.ceil(disk_gb or self.disk_gb))
        plan = box_plan(self.name, spec, offer, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                        image=self.image, jobs_install=self.jobs_install, disk_gb=disk, project=self.project,
                        max_hours=max_hours, api_url=self.api.base_url, startup_s=self.startup_s)
        gpu = {"id": gpu_type, "count": offer.gpu_count}
        if cuda := image_cuda(plan.image):
            gpu["minCudaVersion"] = cuda
        pod = {"name": plan.label, "image": plan.image, "gpu": gpu, "cloud": CLOUDS[tier], "disk": disk,
               "ports": [], "args": box_args(plan.shell_script())}
        return dataclasses.replace(plan, request={**plan.request, "pod": pod})

    def launch(self, plan: LaunchPlan) -> Handle:
        body = {**plan.request["pod"], "env": dict(sorted(plan.box_env().items()))}  # + storage credentials
        try:
            pod = self.api.create_pod(body)
        except ApiError as exc:
            raise launch_error(exc, body) from None
        except ProviderError as exc:
            raise BackendError(f"RunPod: {exc}") from None
        return Handle(backend=self.name, instance_id=str(pod["id"]), label=plan.label,
                      data={"output_uri": plan.request["output_uri"], "spot": False,
                            "usd_per_hour": plan.usd_per_hour, "billed_usd_per_hour": _cost(pod),
                            "data_center": pod.get("dataCenterId"), "max_hours": plan.request.get("max_hours")})

    def poll(self, handle: Handle) -> PollResult:
        pod = self._call(self.api.pod, handle.instance_id)
        output = handle.data["output_uri"]
        if pod is None:
            return vanished(output, handle.label, False, "the pod is gone")
        status = str(pod.get("status") or "").upper()
        billed = _cost(pod) if status in LIVE else None
        if status == "RUNNING":
            result = ended(output, handle.label) or PollResult(Status.RUNNING)
        elif status in ("PROVISIONING", "STARTING"):
            result = PollResult(Status.PENDING, detail=f"pod {status.lower()}")
        elif status == "ERROR":
            result = ended(output, handle.label) or PollResult(
                Status.FAILED, detail="the pod is in ERROR: RunPod could not start or keep its container")
        else:  # EXITED, TERMINATED, or a status this client does not know
            result = vanished(output, handle.label, False, f"pod {status.lower() or 'without a status'}")
        return dataclasses.replace(result, billed_usd_per_hour=billed)

    def stop(self, handle: Handle) -> bool:
        """The pod's `stop` action: its container gets SIGTERM (the job checkpoints, reports exit 75 and the box
        deletes itself), then EXITED; a stopped pod keeps billing its disk, so `cancel` still deletes it."""
        self._call(self.api.stop_pod, handle.instance_id)
        return True

    def cancel(self, handle: Handle) -> None:
        self._call(self.api.delete_pod, handle.instance_id)

    def list_labeled(self) -> list[Handle]:
        return [Handle(backend=self.name, instance_id=str(p["id"]), label=p["name"], data={})
                for p in self._call(self.api.pods) if job_of_label(p.get("name") or "")
                and str(p.get("status") or "").upper() != "TERMINATED"]

    # ------------------------------------------------------------------ logs

    def logs(self, handle: Handle, tail: int = 200) -> str:
        """The report's log tail once the job ended, else the pod's own log (SSE, what it has now)."""
        text = report_logs(handle, tail, "")
        if text != "()":  # report_logs wraps the (empty) hint in parentheses when there is no report
            return text
        try:
            lines = [e.line for e in self.api.pod_logs(handle.instance_id, tail=tail, idle_timeout_s=2.0)]
        except ProviderError as exc:
            return f"(no log: RunPod: {exc})"
        return "\n".join(lines[-tail:]) if lines else f"({self.logs_hint})"

    def follow_logs(self, handle: Handle, stop: threading.Event, tail: int = 100,
                    idle_timeout_s: float = 5.0) -> Iterator[str]:
        """The pod's last `tail` log lines, then each new one, until `stop` is set; a dropped stream is
        resumed from the last event id (Last-Event-ID), so no line comes twice."""
        last_id, first = None, True
        while not stop.is_set():
            try:
                for event in self.api.pod_logs(handle.instance_id, tail=tail if first else None, last_event_id=last_id,
                                               idle_timeout_s=idle_timeout_s, stop=stop.is_set):
                    last_id = event.id or last_id
                    yield event.line
            except ProviderError:
                pass  # provider weather: try again
            first = first and last_id is None
            stop.wait(1.0)

    @staticmethod
    def _call(function, *args):
        """A refused key (401, or 403 for a key lacking the permission: "Authorizations") is KeyRejected, never
        provider weather: a poll waits for the key instead of counting toward a lost box, a cancel says the box
        bills on."""
        try:
            return function(*args)
        except AuthenticationError as exc:
            raise key_rejected(exc) from None
        except ProviderError as exc:
            raise BackendError(f"RunPod: {exc}") from None


def key_rejected(exc: ApiError) -> KeyRejected:
    detail = f" ({exc.detail})" if exc.detail else ""
    key = PROVIDERS[RUNPOD].key_env
    return KeyRejected(f"RunPod rejected {key} (HTTP {exc.status}){detail}: fix {key}, then launches on RunPod "
                       "resume")


def _cost(pod: dict) -> float | None:
    cost = pod.get("cost")
    try:
        return float(cost) if cost is not None else None
    except (TypeError, ValueError):
        return None


def launch_error(exc: ApiError, body: dict) -> BackendError:
    """What a failed `POST /v2/pods` means for the supervisor (docs/providers/runpod.md, "Pods")."""
    what = f"{body['gpu']['count']}x {body['gpu']['id']} on {body['cloud']}"
    detail = f" ({exc.detail})" if exc.detail else ""
    if exc.status == 422:
        return RequestRejected(f"RunPod rejected the pod request as malformed (HTTP 422){detail}: a planner bug, "
                               "not capacity; please report it")
    if exc.status == 401:
        return key_rejected(exc)
    if exc.status == 402:
        return OutOfFunds(f"RunPod: the account balance is too low to start a pod (HTTP 402){detail}; top it up, "
                          "then launches on RunPod resume")
    if exc.status in (400, 403):
        return NoCapacity(f"RunPod cannot start {what} now (HTTP {exc.status}){detail}; trying another offer")
    return BackendError(f"RunPod: {exc}")
