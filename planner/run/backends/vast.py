"""Vast.ai instances through its REST API: create from an offer, show, destroy, list.

Create is `PUT /api/v0/asks/{offer id}/`; with a `price` (the whole machine's bid per hour) the
instance is interruptible. The bid is read just before launch from a `type: bid` search for that
offer: min(cap, current `min_bid` + 5 %), the cap being the lower of the offer's on-demand price and
120 % of the planned spot price; the attempt is recorded at the bid plus the disk's storage cost,
because that is what is paid. The answer's instance id is `new_contract`; an error that still
carries one means an instance exists (Vast creates a losing bid stopped) and it is destroyed at once.
An outbid instance is `stopped` (cur_state, intended and next state), not destroyed; like an exited or
vanished one, the attempt's report (planner.run.backends.remote) then tells how the job ended. The
instance's label is ours. Creates are sent once (a retried create could rent twice).
"""
from __future__ import annotations

from pydantic import SecretStr

from jobs import boxenv

from planner.run.backends.base import BackendError, Handle, LaunchPlan, PollResult, Status, job_of_label
from planner.run.backends.remote import CloudBackend, bid_cap, box_plan, ended, spot_bid, vanished
from pricing.offer import Offer
from pricing.providers.base import ProviderError
from pricing.providers.http import RetryPolicy, request_json

HOURS_PER_MONTH = 720
GONE = ("exited", "unknown", "offline")
ENV_ENTRY_LIMIT = 256  # characters per env entry (create_instance.yaml); longer values go in parts (jobs.boxenv)


class VastBackend(CloudBackend):
    name = "vast"
    billing_seconds = 1
    logs_hint = "the job's log tail arrives with its report when it ends; live logs: vastai logs INSTANCE_ID"

    def __init__(self, base_url: str, api_key: SecretStr | None, *, disk_gb: float = 50.0, **common):
        super().__init__(base_url, api_key, **common)
        self.disk_gb = disk_gb

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float) -> LaunchPlan:
        if offer is None or offer.provider != "vast":
            raise BackendError("the Vast.ai backend needs a Vast.ai offer")
        plan = box_plan(self.name, spec, offer, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                        image=self.image, jobs_install=self.jobs_install, disk_gb=self.disk_gb)
        body = {"client_id": "me", "image": plan.image, "disk": plan.disk_gb, "label": plan.label,
                "runtype": "args", "args": ["sh", "-c", plan.shell_script()], "env": dict(sorted(plan.env.items())),
                "cancel_unavail": True}
        request = {"ask_id": int(offer.offer_key), "body": body}
        if spot:
            request["bid_cap"] = round(bid_cap(offer, usd_per_hour), 4)
        return LaunchPlan(**{**plan.__dict__, "request": {**plan.request, **request}})

    def launch(self, plan: LaunchPlan) -> Handle:
        ask, body = plan.request["ask_id"], dict(plan.request["body"])
        body["env"] = boxenv.split(dict(sorted(plan.box_env().items())), ENV_ENTRY_LIMIT)  # + storage credentials
        usd_per_hour = plan.usd_per_hour
        if plan.spot:
            body["price"], storage = self._bid(ask, plan.request["bid_cap"])
            usd_per_hour = body["price"] + storage
        answer = self._call("PUT", f"/asks/{ask}/", body, retry=False)
        contract = answer.get("new_contract") if isinstance(answer, dict) else None
        if not answer.get("success") or not contract:
            if contract:
                self.cancel(Handle(self.name, str(contract), plan.label))
            reason = answer.get("error") or answer.get("msg") or "no instance id in the answer"
            raise BackendError(f"Vast.ai did not create an instance from offer {ask}: {reason}")
        return Handle(backend=self.name, instance_id=str(contract), label=plan.label,
                      data={"output_uri": plan.request["output_uri"], "spot": plan.spot, "usd_per_hour": usd_per_hour})

    def poll(self, handle: Handle) -> PollResult:
        answer = self._call("GET", f"/instances/{handle.instance_id}/", missing_ok=True)
        instance = answer.get("instances") if isinstance(answer, dict) else None
        output, spot = handle.data["output_uri"], handle.data.get("spot", False)
        if not instance:
            return vanished(output, handle.label, spot, "the instance is gone")
        actual = instance.get("actual_status")
        states = {instance.get("cur_state"), instance.get("intended_status"), instance.get("next_state")}
        if states == {"stopped"} or actual in GONE:
            why = "outbid: the instance was stopped" if states == {"stopped"} and spot else f"instance {actual}"
            return vanished(output, handle.label, spot, why)
        message = instance.get("status_msg") or ""
        if actual == "created" and "OCI runtime create failed" in message:
            return PollResult(Status.FAILED, detail=f"the container did not start: {message[:200]}")
        result = ended(output, handle.label)
        if result is not None:
            return result
        return PollResult(Status.RUNNING if actual == "running" else Status.PENDING)

    def cancel(self, handle: Handle) -> None:
        answer = self._call("DELETE", f"/instances/{handle.instance_id}/", missing_ok=True)
        if isinstance(answer, dict) and answer.get("success") is False and answer.get("error") != "no_such_instance":
            raise BackendError(f"Vast.ai did not destroy instance {handle.instance_id}: {answer.get('error')}")

    def list_labeled(self) -> list[Handle]:
        answer = self._call("GET", "/instances/?owner=me")
        instances = answer.get("instances") if isinstance(answer, dict) else None
        return [Handle(backend=self.name, instance_id=str(i["id"]), label=i["label"], data={})
                for i in instances or [] if job_of_label(i.get("label") or "")]

    # ------------------------------------------------------------------ the client

    def _bid(self, ask: int, cap: float) -> tuple[float, float]:
        """(the bid for the whole machine, the disk's storage per hour) for this offer, now."""
        query = {"id": {"eq": ask}, "type": "bid", "limit": 1, "allocated_storage": self.disk_gb}
        answer = self._call("POST", "/bundles/", query)
        offers = answer.get("offers") if isinstance(answer, dict) else None
        if not offers or not offers[0].get("min_bid"):
            raise BackendError(f"Vast.ai offer {ask} is no longer available as interruptible; re-planning")
        minimum = float(offers[0]["min_bid"])
        storage = float(offers[0].get("storage_cost") or 0.0) * self.disk_gb / HOURS_PER_MONTH
        return spot_bid(minimum, cap - storage, f"Vast.ai offer {ask} (per hour, storage aside)"), storage

    def _call(self, method: str, path: str, body: dict | None = None, *, retry: bool = True,
              missing_ok: bool = False):
        try:
            return request_json(self.session, method, f"{self.base_url}/api/v0{path}", json_body=body,
                                api_key=self.api_key.get_secret_value() if self.api_key else None,
                                timeout=self.timeout, retry=self.retry if retry else RetryPolicy(attempts=1),
                                auth_hint="VAST_API_KEY", missing_ok=missing_ok) or {}
        except ProviderError as exc:
            raise BackendError(f"Vast.ai: {exc}") from None
