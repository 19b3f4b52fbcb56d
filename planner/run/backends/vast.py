"""Vast.ai instances through its API (pricing.providers.vast_api; the facts and their sources are in
docs/providers/vast.md, cited by section).

Just before a create the offer is searched again (`POST /api/v0/bundles/`, its id) with the host
filters the job image needs ("Host filters"): `cuda_max_good` >= the image's CUDA together with
`compute_cap` for its PyTorch build, `disk_space` >= the job's disk, `reliability2` >=
RELIABILITY_FLOOR, `duration` (seconds the host stays rentable) >= the startup window plus the reservation,
`inet_down_cost` / `inet_up_cost` ($/GB) at most what the plan priced (and PLANNER_MAX_USD_PER_GB), and
`verified`, `rentable`, `rented` sent explicitly (unset, the server's defaults apply). A host that no
longer fits (or no longer exists) is NoCapacity: the next candidate, after the offer's cool-down.

Create is `PUT /api/v0/asks/{offer id}/`, sent once (a retried create could rent twice): `runtype:
args` keeps the image's entrypoint off, `onstart` is the entrypoint (/bin/sh) and `args` its `-c`
script; the environment goes in parts where an entry passes Vast's 256 characters (jobs.boxenv).
With a `price` (the whole machine's bid per hour) the instance is interruptible: the bid is
min(cap, current `min_bid` + 5 %), the cap the lower of the offer's on-demand price and 120 % of the
planned spot price; the attempt is recorded at the bid plus the disk's storage, what is paid. A spot box's
deadline is its reservation's hours at that cap (the most it may pay), so it never bills past the reservation. An
error body that still names a `new_contract` means an instance exists (a losing bid is created
stopped): pricing.providers.vast_api destroys it at once. The billed rate is the offer's (later the
instance's) `dph_total`.

Instances are read only from the v1 listing (v0 answers 410, "Instances"): a tick's polls share one
listing filtered on every watched label (`label in [...]`), not a request per job (Vast limits requests
per IP); all pages (25 rows each, next_token) for the reaper. An outbid instance is the all-`stopped`
state triple (cur_state, intended_status, next_state); like an exited or vanished one, the attempt's
report (planner.run.backends.remote) then tells how the job ended. Logs ("Logs"): `request_logs` for the
container's log (never `daemon_logs`, the host's), then `result_url`. A rejected key (404 `auth_error`)
is KeyRejected everywhere, never "the instance is gone": cancel then says it could not end the box.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator

from jobs import boxenv
from planner.run.backends.base import (
    BackendError,
    Handle,
    KeyRejected,
    LaunchPlan,
    NoCapacity,
    PollResult,
    Status,
    job_of_label,
)
from planner.run.backends.remote import (
    RELIABILITY_FLOOR,
    CloudBackend,
    bid_cap,
    box_plan,
    compute_cap_filter,
    ended,
    image_cuda,
    report_logs,
    spot_bid,
    vanished,
)
from pricing.offer import Offer
from pricing.providers.base import ProviderError
from pricing.providers.http import ApiError, AuthenticationError, RetryPolicy
from pricing.providers.registry import PROVIDERS, VAST
from pricing.providers.vast_api import VastAPI, error_of, is_outbid, storage_usd_per_hour

GONE = ("exited", "unknown", "offline")
ENV_ENTRY_LIMIT = 256  # characters per env entry (create_instance.yaml); longer values go in parts (jobs.boxenv)
MIN_DISK_GB = 8  # Vast's floor for `disk`
ENTRYPOINT = "/bin/sh"
LISTING_MAX_AGE_S = 60.0  # a shared listing older than this is read again even within a tick


class VastBackend(CloudBackend):
    name = VAST
    billing_seconds = 1
    logs_hint = "no log yet: the instance has not written one, and the job's report has not arrived"

    def __init__(self, api, *, clock: Callable[[], float] = time.monotonic, max_usd_per_gb: float | None = None,
                 **kwargs):
        super().__init__(api, **kwargs)
        self.clock = clock
        self.max_usd_per_gb = max_usd_per_gb
        self._listing: dict[str, dict] = {}  # label -> instance row, from the last shared listing
        self._listed: set[str] = set()  # the labels that listing asked for
        self._listed_at = -math.inf
        self._polled: set[str] = set()  # labels polled this tick: one polled again starts the next

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> VastBackend:
        mine = settings.providers[VAST]
        return cls(VastAPI(mine.url, mine.api_key, timeout=settings.http_timeout, retry=retry),
                   image=settings.job_image, jobs_install=settings.jobs_install, disk_gb=settings.vast_disk_gb,
                   startup_s=settings.box_startup_minutes * 60, max_usd_per_gb=settings.max_usd_per_gb)

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float,
             disk_gb: float | None = None, max_hours: float | None = None) -> LaunchPlan:
        if offer is None or offer.provider != VAST:
            raise BackendError("the Vast.ai backend needs a Vast.ai offer")
        disk = max(MIN_DISK_GB, math.ceil(disk_gb or self.disk_gb))
        if spot and max_hours:  # the reservation is at the planned price; a bid pays up to its cap: the box's
            max_hours *= usd_per_hour / max(usd_per_hour, bid_cap(offer, usd_per_hour))  # deadline holds at the cap
        plan = box_plan(self.name, spec, offer, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                        image=self.image, jobs_install=self.jobs_install, disk_gb=disk, project=self.project,
                        max_hours=max_hours, api_url=self.api.base_url, startup_s=self.startup_s)
        body = {"client_id": "me", "image": plan.image, "disk": disk, "label": plan.label, "runtype": "args",
                "onstart": ENTRYPOINT, "args": ["-c", plan.shell_script()], "cancel_unavail": not spot}
        request = {"ask_id": int(offer.offer_key), "body": body,
                   "host_filters": self.host_filters(disk, max_hours, verified=offer.tier == "verified",
                                                     bandwidth=(offer.download_usd_per_gb, offer.upload_usd_per_gb))}
        if spot:
            request["bid_cap"] = round(bid_cap(offer, usd_per_hour), 4)
        return dataclasses.replace(plan, request={**plan.request, **request})

    def host_filters(self, disk_gb: float, max_hours: float | None = None, *, verified: bool = True,
                     bandwidth: tuple[float | None, float | None] = (None, None)) -> dict:
        """The search filters a host must pass to run this backend's image with `disk_gb` of disk for its startup
        window and then `max_hours` (Vast's `duration` is in seconds; vast-cli multiplies its days by 86400), on
        the tier the offer was planned on (`verified` is always sent: unset, the server's default would decide), billing
        no more per GB in and out than `bandwidth` (the planned $/GB: the reservation was sized at them) and
        the bandwidth-price cap."""
        filters = {"disk_space": {"gte": disk_gb}, "reliability2": {"gte": RELIABILITY_FLOOR},
                   "verified": {"eq": verified}, "rentable": {"eq": True}, "rented": {"eq": False}}
        for field, planned in zip(("inet_down_cost", "inet_up_cost"), bandwidth):
            caps = [cap for cap in (planned, self.max_usd_per_gb) if cap is not None]
            if caps:
                filters[field] = {"lte": min(caps)}
        if max_hours:  # the box's deadline is its script's start (within the startup window) plus max_hours
            filters["duration"] = {"gte": math.ceil(max_hours * 3600 + self.startup_s)}
        if cuda := image_cuda(self.image):
            filters["cuda_max_good"] = {"gte": float(cuda)}
            if cap := compute_cap_filter(self.image):
                filters["compute_cap"] = cap  # always with cuda_max_good (gpuhunt#142)
        return filters

    def launch(self, plan: LaunchPlan) -> Handle:
        ask, body = plan.request["ask_id"], dict(plan.request["body"])
        body["env"] = boxenv.split(dict(sorted(plan.box_env().items())), ENV_ENTRY_LIMIT)  # + storage credentials
        host = self._fitting_host(ask, plan)
        storage = storage_usd_per_hour(host.get("storage_cost"), body["disk"])
        usd_per_hour, billed = plan.usd_per_hour, _float(host.get("dph_total"))
        if plan.spot:
            if not host.get("min_bid"):
                raise NoCapacity(f"Vast.ai offer {ask} is no longer available as interruptible; re-planning")
            body["price"] = spot_bid(float(host["min_bid"]), plan.request["bid_cap"] - storage,
                                     f"Vast.ai offer {ask} (per hour, storage aside)")
            usd_per_hour = billed = body["price"] + storage
        try:
            contract = self.api.create(ask, body)
        except AuthenticationError as exc:
            raise key_rejected(exc) from None
        except ApiError as exc:
            if error_of(exc.body) == "no_such_ask" or exc.status == 410:
                raise NoCapacity(f"Vast.ai offer {ask} is gone ({exc.detail or exc.status}); trying another") from None
            raise BackendError(f"Vast.ai did not create an instance from offer {ask}: {exc.detail or exc}") from None
        except ProviderError as exc:
            raise BackendError(f"Vast.ai: {exc}") from None
        return Handle(backend=self.name, instance_id=str(contract), label=plan.label,
                      data={"output_uri": plan.request["output_uri"], "spot": plan.spot, "usd_per_hour": usd_per_hour,
                            "billed_usd_per_hour": billed, "max_hours": plan.request.get("max_hours")})

    def poll(self, handle: Handle) -> PollResult:
        instance = self._shared_listing(handle.label)
        instance = instance if instance is not None and str(instance.get("id")) == handle.instance_id else None
        output, spot = handle.data["output_uri"], handle.data.get("spot", False)
        if not instance:
            # Vast stops an outbid instance, it does not delete it: gone without a report is a broken box
            return vanished(output, handle.label, False, "the instance is gone")
        actual = instance.get("actual_status")
        billed = _float(instance.get("dph_total"))
        if is_outbid(instance) or actual in GONE:
            why = "outbid: the instance was stopped" if is_outbid(instance) and spot else f"instance {actual}"
            # a container that exited (its job broke, or its install) was not taken: a failure, spot or not
            return vanished(output, handle.label, spot and is_outbid(instance), why)
        message = instance.get("status_msg") or ""
        if actual == "created" and "OCI runtime create failed" in message:
            return PollResult(Status.FAILED, detail=f"the container did not start: {message[:200]}",
                              billed_usd_per_hour=billed)
        result = ended(output, handle.label) or PollResult(Status.RUNNING if actual == "running" else Status.PENDING)
        return dataclasses.replace(result, billed_usd_per_hour=billed)

    def stop(self, handle: Handle) -> bool:
        """Stop the instance (`vastai stop instance`): its container gets SIGTERM (the job checkpoints, reports exit
        75 and the box destroys itself); a stopped instance keeps billing its disk, so `cancel` still destroys it."""
        self._call(self.api.stop, handle.instance_id, what=f"could not stop instance {handle.instance_id}")
        return True

    def cancel(self, handle: Handle) -> None:
        """Destroy the instance; a rejected key is KeyRejected saying the box could not be ended (it bills on)."""
        self._call(self.api.destroy, handle.instance_id,
                   what=f"could not end instance {handle.instance_id}, which keeps billing")
        self._listing.pop(handle.label, None)

    def list_labeled(self) -> list[Handle]:
        return [Handle(backend=self.name, instance_id=str(i["id"]), label=i["label"], data={})
                for i in self._call(self.api.instances) if job_of_label(i.get("label") or "")]

    # ------------------------------------------------------------------ logs

    def logs(self, handle: Handle, tail: int = 200) -> str:
        """The report's log tail once the job ended, else the instance's own log (request_logs)."""
        text = report_logs(handle, tail, "")
        if text != "()":  # report_logs wraps the (empty) hint in parentheses when there is no report
            return text
        try:
            lines = self.api.logs(handle.instance_id, tail=max(tail, 1)).splitlines()
        except ProviderError as exc:
            return f"(no log: Vast.ai: {exc})"
        return "\n".join(lines[-tail:]) if lines else f"({self.logs_hint})"

    def follow_logs(self, handle: Handle, stop: threading.Event, tail: int = 100,
                    every_s: float = 10.0) -> Iterator[str]:
        """The last `tail` lines, then what is new at each `request_logs` (every `every_s`, within the
        rate limits), until `stop` is set."""
        seen: list[str] = []
        while True:
            stopping = stop.is_set()
            try:
                lines = self.api.logs(handle.instance_id, tail=max(tail, 1000)).splitlines()
            except ProviderError:
                lines = seen
            yield from lines[-tail:] if not seen else lines[_overlap(seen, lines):]
            seen = lines or seen
            if stopping:
                return
            stop.wait(every_s)  # once set, one last read: what was written by then is out

    # ------------------------------------------------------------------ helpers

    def _shared_listing(self, label: str) -> dict | None:
        """`label`'s instance from one listing shared by a tick's polls. A label polled again since the tick's
        first read starts the next tick: the listing is read afresh at the tick's first poll, for every label
        the last tick polled, so no poll answers from the tick before. It is read again within a tick only for
        a label it did not ask for (a new attempt) or when older than LISTING_MAX_AGE_S."""
        now = self.clock()
        next_tick = label in self._polled
        if next_tick or label not in self._listed or now - self._listed_at > LISTING_MAX_AGE_S:
            wanted = (self._polled if next_tick else self._listed | self._polled) | {label}
            rows = self._call(self.api.labelled, wanted)
            self._listing = {row.get("label"): row for row in rows if row.get("label") in wanted}
            self._listed, self._listed_at = set(wanted), now
            if next_tick:
                self._polled = set()
        self._polled.add(label)
        return self._listing.get(label)

    def _fitting_host(self, ask: int, plan: LaunchPlan) -> dict:
        """This offer, now, if its host still passes the filters (else NoCapacity: the next candidate)."""
        filters = plan.request.get("host_filters") or {}
        query = {"id": {"eq": ask}, "type": "bid" if plan.spot else "on-demand", "limit": 1,
                 "allocated_storage": plan.request["body"]["disk"], **filters}
        offers = self._call(self.api.offers, query)
        match = next((o for o in offers if isinstance(o, dict) and str(o.get("id")) == str(ask)), None)
        if match is None:
            wanted = ", ".join(f"{k} {next(iter(v))} {next(iter(v.values()))}" for k, v in filters.items())
            raise NoCapacity(f"Vast.ai offer {ask} is gone or its host no longer fits ({wanted}); trying another")
        return match

    @staticmethod
    def _call(function, *args, what: str = ""):
        """`function(*args)`, a rejected key as KeyRejected and other provider errors as BackendError, each
        saying `what` could not be done."""
        try:
            return function(*args)
        except AuthenticationError as exc:
            raise key_rejected(exc, what) from None
        except ProviderError as exc:
            raise BackendError(f"Vast.ai: {what + ': ' if what else ''}{exc}") from None


def key_rejected(exc: AuthenticationError, what: str = "") -> KeyRejected:
    key = PROVIDERS[VAST].key_env
    return KeyRejected(f"Vast.ai rejected {key} (HTTP {exc.status}{', auth_error' if exc.status == 404 else ''})"
                       + (f": {what}" if what else "") + f"; fix {key}, then launches on Vast.ai resume")


def _float(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _overlap(seen: list[str], lines: list[str]) -> int:
    """How many leading `lines` were already yielded: the longest suffix of `seen` they start with."""
    for size in range(min(len(seen), len(lines)), 0, -1):
        if seen[-size:] == lines[:size]:
            return size
    return 0
