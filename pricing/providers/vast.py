"""Vast.ai: every rentable marketplace offer with at least 3 GB of VRAM, on-demand and interruptible.

Quirks kept here: `/api/v0/bundles/` answers 64 offers unless given a `limit`, so we ask for a large
one and split the search (by GPU count, then by verification) while a page comes back full; prices
are for the whole offer, so they are divided by `num_gpus`, with storage for a stated disk size
added (`storage_cost` is $/GB/month, 720 hours); the interruptible price is `min_bid` from a `type:
bid` search; VRAM is `gpu_ram` in MB (MiB) per GPU, never the name (modded 48 GB "RTX 4090"s
exist); `cpu_cores` may be null; about 10 searches a minute are allowed and 429 carries no
Retry-After, so searches are spaced and retried with backoff.
"""
from __future__ import annotations

import logging
import time

import requests
from pydantic import SecretStr

from pricing import gpus
from pricing.offer import Offer
from pricing.providers.base import Provider, ProviderError
from pricing.providers.http import RetryPolicy, request_json

log = logging.getLogger("pricing.providers.vast")

MIN_VRAM_MB = 3 * 1024
HOURS_PER_MONTH = 720  # Vast's storage_cost is per GB per 30-day month
MAX_USD_PER_GPU_HOUR = 100.0
# Partitions tried, in order, when a search comes back full: each splits every still-full search.
SPLITS = (
    ("num_gpus", [{"eq": 1}, {"eq": 2}, {"in": [3, 4]}, {"in": [5, 6, 7, 8]}, {"gt": 8}]),
    ("verified", [{"eq": True}, {"eq": False}]),
)


class VastProvider(Provider):
    name = "vast"

    def __init__(self, base_url: str, api_key: SecretStr | None = None, timeout: float = 30.0,
                 disk_gb: float = 50.0, limit: int = 5000, session: requests.Session | None = None,
                 min_interval_s: float = 6.0, retry: RetryPolicy = RetryPolicy()):
        self.url = base_url.rstrip("/") + "/api/v0/bundles/"
        self.api_key = api_key
        self.timeout = timeout
        self.disk_gb = disk_gb
        self.limit = limit
        self.session = session or requests.Session()
        self.min_interval_s = min_interval_s
        self.retry = retry
        self.last_report: dict = {}
        self._last_search = float("-inf")

    def fetch(self) -> list[Offer]:
        self.last_report = {"searches": 0, "dropped": 0, "unknown GPUs": set(), "truncated": False}
        on_demand = self._search_all("on-demand")
        interruptible = self._search_all("bid")
        offers = self._merge(on_demand, interruptible)
        if (on_demand or interruptible) and not offers:
            raise ProviderError(f"all {len(on_demand) + len(interruptible)} offers had implausible prices or VRAM")
        self.last_report["unknown GPUs"] = sorted(self.last_report["unknown GPUs"])
        return offers

    def _search_all(self, kind: str) -> dict[int, dict]:
        """Every offer of `kind`, splitting searches that come back full."""
        found: dict[int, dict] = {}
        pending = [{}]
        for field, parts in (*SPLITS, (None, [])):
            still_full = []
            for extra in pending:
                page = self._search(kind, extra)
                found.update((offer["id"], offer) for offer in page)
                if len(page) >= self.limit:
                    still_full.append(extra)
            if not still_full:
                break
            if field is None:
                self.last_report["truncated"] = True
                log.warning("Vast %s search still full after every split: some offers are missing", kind)
                break
            pending = [{**extra, field: part} for extra in still_full for part in parts]
        return found

    def _search(self, kind: str, extra: dict) -> list[dict]:
        wait = self._last_search + self.min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        query = {"external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
                 "gpu_ram": {"gte": MIN_VRAM_MB}, "order": [["dph_total", "asc"]], "type": kind,
                 "limit": self.limit, "allocated_storage": self.disk_gb, **extra}
        try:
            body = request_json(self.session, "POST", self.url, json_body=query, timeout=self.timeout,
                                api_key=self.api_key.get_secret_value() if self.api_key else None,
                                retry=self.retry, auth_hint="VAST_API_KEY")
        finally:
            self._last_search = time.monotonic()
            self.last_report["searches"] += 1
        offers = body.get("offers") if isinstance(body, dict) else None
        if not isinstance(offers, list) or not all(isinstance(o, dict) and "id" in o for o in offers):
            raise ProviderError("unexpected bundles schema: no 'offers' list of objects with an 'id'")
        return offers

    def _merge(self, on_demand: dict[int, dict], interruptible: dict[int, dict]) -> list[Offer]:
        from pricing.db import utcnow

        now = utcnow()
        offers = []
        for ask_id in sorted(on_demand.keys() | interruptible.keys()):
            raw = on_demand.get(ask_id) or interruptible[ask_id]
            try:
                offer = self._offer(raw, ask_id in on_demand, interruptible.get(ask_id), now)
            except (KeyError, TypeError, ValueError) as exc:
                raise ProviderError(f"unexpected offer schema (ask {ask_id}): {type(exc).__name__}: {exc}") from None
            if offer is not None:
                offers.append(offer)
        return offers

    def _offer(self, raw: dict, has_on_demand: bool, bid: dict | None, now) -> Offer | None:
        count = int(raw["num_gpus"])
        vram_gb = float(raw["gpu_ram"]) / 1024
        storage = float(raw.get("storage_cost") or 0.0) * self.disk_gb / HOURS_PER_MONTH
        compute = float(raw["dph_base"]) if has_on_demand else None
        min_bid = (bid or raw).get("min_bid")
        compute_prices = [p for p in (compute, float(min_bid) if min_bid else None) if p is not None]
        on_demand = (compute + storage) / count if compute is not None and count > 0 else None
        spot = (float(min_bid) + storage) / count if min_bid and count > 0 else None
        prices = [p for p in (on_demand, spot) if p is not None]
        if (count < 1 or vram_gb <= 0 or not prices or min(compute_prices) <= 0
                or max(prices) > MAX_USD_PER_GPU_HOUR):
            self.last_report["dropped"] += 1
            log.warning("dropped Vast ask %s: %s x %s, prices %s", raw["id"], count, raw.get("gpu_name"), prices)
            return None
        name = str(raw["gpu_name"])
        spec = gpus.resolve(name, vram_gb)
        if spec is None:
            self.last_report["unknown GPUs"].add(name)
            log.warning("unknown Vast GPU %r (%.0f GB): kept under its raw name", name, vram_gb)
        cores, effective = raw.get("cpu_cores"), raw.get("cpu_cores_effective")
        ram_mb = raw.get("cpu_ram")
        reliability = raw.get("reliability2", raw.get("reliability"))
        return Offer(
            provider="vast", offer_key=str(raw["id"]), gpu_model=spec.model if spec else name, gpu_name_raw=name,
            vram_gb=vram_gb, gpu_count=count, on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot,
            tier="verified" if raw.get("verification") == "verified" else "unverified",
            location=raw.get("geolocation"), available=bool(raw.get("rentable", True)), fetched_at=now,
            known_gpu=spec is not None, reliability=float(reliability) if reliability is not None else None,
            vcpus=float(effective) if effective else None,
            ram_gb=ram_mb * effective / cores / 1024 if (ram_mb and cores and effective) else None,
            disk_gb=raw.get("disk_space"),
        )
