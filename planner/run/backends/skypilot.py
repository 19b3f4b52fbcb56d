"""SkyPilot managed jobs (the optional `cloud` extra): our choice, SkyPilot's provisioning.

`plan` is pure and needs no SkyPilot: the task as SkyPilot's YAML config, pinned to the planner's
chosen cloud, region, instance type and spot choice, running the same box script as our own
backends (planner.run.backends.remote). `launch` first exports our live prices as SkyPilot's catalog,
so its optimizer sees today's prices (and, where a provider has spot, bids the catalog's SpotPrice:
ours) and, on RunPod, only the data centres our book saw stock in; then it submits a managed job named
after our label.

What stays ours: success is the job's DONE marker and report, not SkyPilot's status; the budget and
the attempt's dollars; the reaper. A managed job SkyPilot is recovering after a preemption
(RECOVERING, recovery_count) is still this attempt, billed until it ends. Known SkyPilot gaps on
these clouds (docs/providers/*.md, "SkyPilot"): no bucket mounts, and on Vast it re-searches offers by
score, so the instance it rents may not be the exact offer we chose.

No graceful stop: SkyPilot's managed jobs have cancel (`sky jobs cancel`), which tears the cluster down, and no
call that signals the job and keeps the instance until it has saved. A budget stop therefore terminates a
SkyPilot attempt at once (Backend.stop's default), losing the work since its last periodic checkpoint.
"""
from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from planner.run.backends.base import Backend, BackendError, Handle, LaunchPlan, PollResult, Status, job_of_label
from planner.run.backends.remote import DEFAULT_DISK_GB, box_plan, ended, report_logs, vanished
from pricing.offer import Offer
from pricing.providers.registry import skypilot_providers
from pricing.skypilot_catalog import accelerator_name, default_root, export_catalog, instance_type, region_of

RUNNING = {"STARTING", "RUNNING", "RECOVERING", "WINDING_DOWN", "CANCELLING"}
PENDING = {"PENDING", "SUBMITTED"}


class SkyClient:
    """The few SkyPilot SDK calls we make; a fake in the tests (no API server, no cloud)."""

    def __init__(self) -> None:
        try:
            import sky
        except ImportError:
            raise BackendError("the skypilot backend needs the cloud extra: pip install 'planner[cloud]'") from None
        self.sky = sky

    def launch(self, config: dict, name: str) -> str:
        task = self.sky.Task.from_yaml_config(config)
        job_ids, _ = self.sky.stream_and_get(self.sky.jobs.launch(task, name=name))
        return str(job_ids[0])

    def jobs(self, job_ids: list[str] | None = None) -> list[dict]:
        """Managed-job records as dicts with at least job_id, job_name, status (a name), recovery_count."""
        request = self.sky.jobs.queue_v2(refresh=False, skip_finished=job_ids is None,
                                         job_ids=[int(j) for j in job_ids] if job_ids else None)
        records = self.sky.get(request)[0]
        return [_record(r) for r in records]

    def cancel(self, job_id: str) -> None:
        self.sky.get(self.sky.jobs.cancel(job_ids=[int(job_id)]))


def _record(record) -> dict:
    data = dict(record) if isinstance(record, dict) else {k: getattr(record, k, None) for k in
                                                        ("job_id", "job_name", "status", "recovery_count",
                                                         "failure_reason")}
    status = data.get("status")
    data["status"] = getattr(status, "value", None) or getattr(status, "name", None) or str(status)
    return data


class SkyPilotBackend(Backend):
    name = "skypilot"
    billing_seconds = 1

    def __init__(self, *, image: str, jobs_install: str, catalog_offers: Callable[[], list[Offer]],
                 catalog_root: Path | None = None, client_factory=SkyClient):
        self.image = image
        self.jobs_install = jobs_install
        self.catalog_offers = catalog_offers
        self.catalog_root = Path(catalog_root) if catalog_root is not None else default_root()
        self._client_factory = client_factory
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float,
             disk_gb: float | None = None, max_hours: float | None = None) -> LaunchPlan:
        clouds = skypilot_providers()
        if offer is None or offer.provider not in clouds:
            raise BackendError(f"the skypilot backend launches offers of {', '.join(clouds)} only")
        plan = box_plan(self.name, spec, offer, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                        image=self.image, jobs_install=self.jobs_install,
                        disk_gb=max(1, math.ceil(disk_gb or DEFAULT_DISK_GB)), hold=False,
                        project=self.project)
        region = region_of(offer)
        resources = {
            "infra": "/".join(p for p in (clouds[offer.provider], region) if p),
            "instance_type": instance_type(offer),
            "accelerators": {accelerator_name(offer): offer.gpu_count},
            "use_spot": spot,
            "disk_size": int(plan.disk_gb),
            "image_id": f"docker:{plan.image}",
            # SkyPilot recovers a preempted managed job within this attempt (it resumes from the checkpoint);
            # an exit, 75 included, ends the managed job and our supervisor decides what comes next
            "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 0},
        }
        config = {"name": plan.label, "envs": dict(sorted(plan.env.items())), "setup": "\n".join(plan.setup),
                  "run": shlex.join(plan.command), "resources": resources}
        return replace(plan, request={**plan.request, "task": config})

    def launch(self, plan: LaunchPlan) -> Handle:
        export_catalog(self.catalog_offers(), self.catalog_root)  # SkyPilot prices (and bids) from our book
        job_id = self._call(self.client.launch, plan.request["task"], plan.label)
        return Handle(backend=self.name, instance_id=job_id, label=plan.label,
                      data={"output_uri": plan.request["output_uri"], "spot": plan.spot})

    def poll(self, handle: Handle) -> PollResult:
        records = self._call(self.client.jobs, [handle.instance_id])
        output, spot = handle.data["output_uri"], handle.data.get("spot", False)
        if not records:
            return vanished(output, handle.label, spot, "SkyPilot has no such managed job")
        record = records[0]
        status = record["status"]
        if status in RUNNING or status in PENDING:
            result = ended(output, handle.label)
            if result is not None:
                return result
            detail = f"SkyPilot recovered it {record['recovery_count']} time(s)" if record.get("recovery_count") else None
            return PollResult(Status.RUNNING if status in RUNNING else Status.PENDING, detail=detail)
        if status == "SUCCEEDED":
            return ended(output, handle.label) or vanished(output, handle.label, False, "no DONE marker")
        if status == "FAILED_CONTROLLER":
            return PollResult(Status.LOST, detail="SkyPilot's jobs controller failed")
        if status == "CANCELLED":
            return vanished(output, handle.label, spot, "cancelled in SkyPilot")
        reason = record.get("failure_reason") or status
        return ended(output, handle.label) or PollResult(Status.FAILED, detail=f"SkyPilot: {reason}")

    def cancel(self, handle: Handle) -> None:
        self._call(self.client.cancel, handle.instance_id)

    def logs(self, handle: Handle, tail: int = 200) -> str:
        return report_logs(handle, tail, f"the log tail arrives with the job's report; live: sky jobs logs "
                                         f"{handle.instance_id}")

    def list_labeled(self) -> list[Handle]:
        return [Handle(backend=self.name, instance_id=str(r["job_id"]), label=r["job_name"], data={})
                for r in self._call(self.client.jobs, None) if job_of_label(r.get("job_name") or "")
                and r["status"] in RUNNING | PENDING]

    @staticmethod
    def _call(function, *args):
        try:
            return function(*args)
        except BackendError:
            raise
        except Exception as exc:  # the SDK raises its own types for server-side failures
            raise BackendError(f"SkyPilot: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
