"""RunPod pods through the GraphQL API (our own client: runpod-python 1.12 has no spot call).

On-demand: `podFindAndDeployOnDemand`. Spot: `podRentInterruptable` with `bidPerGpu`, read just
before launch as min(cap, current minimum bid + 5 %), because the bid is what is paid; the cap is the
lower of the on-demand price and 120 % of the planned spot price, so the planned budget holds.
Every string goes in as a GraphQL variable, never interpolated into the query text. The pod's name
is our label. An interrupted spot pod shows `desiredStatus: EXITED`; so does a pod whose container
exited, which is why the attempt's report (planner.run.backends.remote) decides how it ended.

Deploy mutations are sent once (no retry on a timeout: a retry could rent a second pod); a pod
that was created anyway carries our label, so the supervisor adopts or reaps it.
"""
from __future__ import annotations

import shlex

from planner.run.backends.base import BackendError, Handle, LaunchPlan, PollResult, Status, job_of_label
from planner.run.backends.remote import CloudBackend, bid_cap, box_plan, ended, spot_bid, vanished
from pricing.offer import Offer
from pricing.providers.base import ProviderError
from pricing.providers.http import RetryPolicy, request_json

POD_FIELDS = "id name desiredStatus costPerHr"
DEPLOY = ("mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
          f"{{ podFindAndDeployOnDemand(input: $input) {{ {POD_FIELDS} }} }}")
RENT_SPOT = ("mutation Rent($input: PodRentInterruptableInput!) "
             f"{{ podRentInterruptable(input: $input) {{ {POD_FIELDS} }} }}")
BID = ("query Bid($id: String!, $count: Int!) { gpuTypes(input: {id: $id}) { id "
       "lowestPrice(input: {gpuCount: $count}) { minimumBidPrice uninterruptablePrice stockStatus } } }")
POD = f"query Pod($id: String!) {{ pod(input: {{podId: $id}}) {{ {POD_FIELDS} runtime {{ uptimeInSeconds }} }} }}"
TERMINATE = "mutation Terminate($id: String!) { podTerminate(input: {podId: $id}) }"
PODS = f"query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}"


class RunPodBackend(CloudBackend):
    name = "runpod"
    billing_seconds = 1  # per-second billing
    logs_hint = "RunPod serves no pod logs through its API; the job's log tail arrives with its report when it ends"

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float) -> LaunchPlan:
        if offer is None or offer.provider != "runpod":
            raise BackendError("the RunPod backend needs a RunPod offer")
        gpu_type, _, tier = offer.offer_key.partition("|")
        plan = box_plan(self.name, spec, offer, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                        image=self.image, jobs_install=self.jobs_install, disk_gb=50.0)
        pod = {"name": plan.label, "imageName": plan.image, "gpuTypeId": gpu_type,
               "cloudType": "SECURE" if tier == "secure" else "COMMUNITY", "gpuCount": offer.gpu_count,
               "containerDiskInGb": int(plan.disk_gb), "volumeInGb": 0, "supportPublicIp": False,
               "dockerArgs": f"sh -c {shlex.quote(plan.shell_script())}",  # RunPod splits it like a shell
               "env": [{"key": k, "value": v} for k, v in sorted(plan.env.items())]}
        request = {"input": pod}
        if spot:
            request["bid_cap_per_gpu"] = round(bid_cap(offer, usd_per_hour) / offer.gpu_count, 4)
        return LaunchPlan(**{**plan.__dict__, "request": {**plan.request, **request}})

    def launch(self, plan: LaunchPlan) -> Handle:
        pod = dict(plan.request["input"])
        pod["env"] = [{"key": k, "value": v} for k, v in sorted(plan.box_env().items())]  # + storage credentials
        usd_per_hour = plan.usd_per_hour
        if plan.spot:
            bid = self._bid_per_gpu(pod["gpuTypeId"], pod["gpuCount"], plan.request["bid_cap_per_gpu"])
            pod["bidPerGpu"] = bid
            usd_per_hour = bid * pod["gpuCount"]
            data = self._graphql(RENT_SPOT, {"input": pod}, retry=False)["podRentInterruptable"]
        else:
            data = self._graphql(DEPLOY, {"input": pod}, retry=False)["podFindAndDeployOnDemand"]
        if not data or not data.get("id"):
            raise BackendError(f"RunPod rented no pod for {plan.label} (no capacity for this GPU type now?)")
        return Handle(backend=self.name, instance_id=data["id"], label=plan.label,
                      data={"output_uri": plan.request["output_uri"], "spot": plan.spot,
                            "usd_per_hour": usd_per_hour})

    def poll(self, handle: Handle) -> PollResult:
        pod = self._graphql(POD, {"id": handle.instance_id})["pod"]
        output, spot = handle.data["output_uri"], handle.data.get("spot", False)
        if not pod:
            return vanished(output, handle.label, spot, "the pod is gone")
        status = pod.get("desiredStatus")
        if status == "RUNNING":
            result = ended(output, handle.label)
            if result is not None:
                return result
            return PollResult(Status.RUNNING if pod.get("runtime") else Status.PENDING)
        if status in ("EXITED", "TERMINATED", "DEAD"):
            return vanished(output, handle.label, spot, f"pod {status.lower()} (a spot pod: interrupted)"
                            if spot else f"pod {status.lower()}")
        return PollResult(Status.PENDING, detail=f"pod {status}")

    def cancel(self, handle: Handle) -> None:
        try:
            self._graphql(TERMINATE, {"id": handle.instance_id})
        except BackendError as exc:
            if "not found" not in str(exc).lower():
                raise

    def list_labeled(self) -> list[Handle]:
        pods = (self._graphql(PODS, {}).get("myself") or {}).get("pods") or []
        return [Handle(backend=self.name, instance_id=p["id"], label=p["name"], data={})
                for p in pods if job_of_label(p.get("name") or "") and p.get("desiredStatus") != "TERMINATED"]

    # ------------------------------------------------------------------ the client

    def _bid_per_gpu(self, gpu_type: str, count: int, cap: float) -> float:
        types = self._graphql(BID, {"id": gpu_type, "count": count}).get("gpuTypes") or []
        lowest = (types[0].get("lowestPrice") or {}) if types else {}
        minimum = lowest.get("minimumBidPrice")
        if not minimum:
            raise BackendError(f"RunPod offers no spot {gpu_type} now (no minimum bid); re-planning")
        return spot_bid(minimum, cap, f"{gpu_type} (per GPU-hour)")

    def _graphql(self, query: str, variables: dict, *, retry: bool = True) -> dict:
        try:
            body = request_json(self.session, "POST", self.base_url + "/graphql", json_body={"query": query, "variables": variables},
                                api_key=self.api_key.get_secret_value() if self.api_key else None,
                                timeout=self.timeout, retry=self.retry if retry else RetryPolicy(attempts=1),
                                auth_hint="RUNPOD_API_KEY")
        except ProviderError as exc:
            raise BackendError(f"RunPod: {exc}") from None
        if not isinstance(body, dict):
            raise BackendError("RunPod: unexpected GraphQL answer")
        if body.get("errors"):
            first = body["errors"][0]
            message = first.get("message", "no message") if isinstance(first, dict) else str(first)
            raise BackendError(f"RunPod GraphQL error: {' '.join(str(message).split())[:300]}")
        return body.get("data") or {}

