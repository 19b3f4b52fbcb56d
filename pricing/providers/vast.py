"""Vast.ai: every rentable marketplace offer with at least 3 GB of VRAM, on-demand and interruptible.

Quirks kept here: `/api/v0/bundles/` answers 64 offers unless given a `limit`, so we ask for a large
one and split the search (by GPU count, then by verification) while a page comes back full; prices
are for the whole offer, so they are divided by `num_gpus`, with storage for a stated disk size
added (pricing.providers.vast_api.storage_usd_per_hour), and bandwidth kept apart as $/GB in and out
(`inet_down_cost`, `inet_up_cost`: billed per byte, priced per job by planner.plan.choose); the interruptible price is `min_bid` from
a `type: bid` search; VRAM is `gpu_ram` in MB (MiB) per GPU, never the name (modded 48 GB "RTX
4090"s exist); `cpu_cores` may be null; about 10 searches a minute are allowed and 429 carries no
Retry-After, so searches are spaced and retried with backoff. Only the fields we keep are decoded
(msgspec structs): a 20,000-offer answer is ~30 MB of which we read a dozen fields per offer. Numbers
sent as strings are read as numbers, and a row whose numbers are not finite ("Infinity", "NaN") is
skipped and counted (pricing.offer.InvalidOffer). Unset search filters take the server's defaults
(vast-cli adds `verified: true` to every search), so `verified` is always sent: "any" for the book,
split true/false when a search comes back full (docs/providers/vast.md, "Offers").
"""
from __future__ import annotations

import logging
import time

import msgspec

from pricing import gpus
from pricing.offer import MAX_USD_PER_GPU_HOUR, InvalidOffer, Offer
from pricing.providers.base import Provider, ProviderError
from pricing.providers.http import RetryPolicy
from pricing.providers.registry import VAST
from pricing.providers.vast_api import VastAPI, storage_usd_per_hour

log = logging.getLogger("pricing.providers.vast")

MIN_VRAM_MB = 3 * 1024
# Partitions tried, in order, when a search comes back full: each splits every still-full search.
SPLITS = (
    ("num_gpus", [{"eq": 1}, {"eq": 2}, {"in": [3, 4]}, {"in": [5, 6, 7, 8]}, {"gt": 8}]),
    ("verified", [{"eq": True}, {"eq": False}]),
)
EITHER = {"eq": "any"}  # both verified and unverified hosts (vast-cli sends this form for a search without defaults)


class VastOffer(msgspec.Struct):
    """The fields of a bundles row we keep (every other field is skipped by the decoder)."""

    id: int
    num_gpus: int
    gpu_ram: float
    gpu_name: str
    dph_base: float | None = None
    dph_total: float | None = None
    min_bid: float | None = None
    storage_cost: float | None = None
    verification: str | None = None
    geolocation: str | None = None
    rentable: bool | None = True
    reliability2: float | None = None
    reliability: float | None = None
    cpu_cores: float | None = None
    cpu_cores_effective: float | None = None
    cpu_ram: float | None = None  # the machine's RAM in MiB, shared by its rentals (docs/providers/vast.md, "Offers")
    gpu_frac: float | None = None  # the offer's GPUs / the machine's GPUs: its share of cpu_ram
    disk_space: float | None = None
    inet_down_cost: float | None = None  # $/GB into the instance (docs/providers/vast.md, "Offers")
    inet_up_cost: float | None = None  # $/GB out of it


class _Bundles(msgspec.Struct):
    offers: list[VastOffer]


_DECODER = msgspec.json.Decoder(_Bundles, strict=False)  # "0.5" and "Infinity" are read as numbers


def decode_bundles(content: bytes) -> list[VastOffer]:
    try:
        return _DECODER.decode(content).offers
    except msgspec.ValidationError as exc:
        raise ProviderError(f"unexpected bundles schema: {exc}") from None
    except msgspec.DecodeError:
        raise ValueError("malformed JSON") from None  # request_json reports it as malformed


def _ram_share_gb(raw: VastOffer) -> float | None:
    """The host RAM an instance of this offer gets: the machine's `cpu_ram` times the offer's share of its
    GPUs (`gpu_frac`; a row without it: its share of the CPU cores, `cpu_cores_effective / cpu_cores`).
    None when the row says neither (unknown RAM is not held against an offer)."""
    share = raw.gpu_frac
    if not share and raw.cpu_cores and raw.cpu_cores_effective:
        share = raw.cpu_cores_effective / raw.cpu_cores
    if not raw.cpu_ram or not share or not 0 < share <= 1:
        return None
    return raw.cpu_ram * share / 1024


class VastProvider(Provider):
    name = VAST

    def __init__(self, base_url: str, api_key=None, timeout: float = 30.0,
                 disk_gb: float = 50.0, limit: int = 5000, session=None,
                 min_interval_s: float = 6.0, retry: RetryPolicy = RetryPolicy(), api: VastAPI | None = None):
        super().__init__()
        self.api = api or VastAPI(base_url, api_key, timeout=timeout, retry=retry, session=session)
        self.url = self.api.base_url + "/api/v0/bundles/"
        self.disk_gb = disk_gb
        self.limit = limit
        self.min_interval_s = min_interval_s
        self._last_search = float("-inf")

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> VastProvider:
        mine = settings.providers[VAST]
        return cls(mine.url, mine.api_key, timeout=settings.http_timeout,
                   disk_gb=settings.vast_disk_gb, limit=settings.vast_search_limit,
                   min_interval_s=settings.vast_min_interval_s, retry=retry)

    def fetch(self) -> list[Offer]:
        self.last_report = {"searches": 0, "dropped": 0, "unknown GPUs": [], "truncated": False}
        on_demand = self._search_all("on-demand")
        interruptible = self._search_all("bid")
        offers = self._merge(on_demand, interruptible)
        if (on_demand or interruptible) and not offers:
            raise ProviderError(f"all {len(on_demand) + len(interruptible)} offers had implausible prices or VRAM")
        return offers

    def _search_all(self, kind: str) -> dict[int, VastOffer]:
        """Every offer of `kind`, splitting searches that come back full."""
        found: dict[int, VastOffer] = {}
        pending = [{}]
        for field, parts in (*SPLITS, (None, [])):
            still_full = []
            for extra in pending:
                page = self._search(kind, extra)
                found.update((offer.id, offer) for offer in page)
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

    def _search(self, kind: str, extra: dict) -> list[VastOffer]:
        wait = self._last_search + self.min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        query = {"external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
                 "gpu_ram": {"gte": MIN_VRAM_MB}, "verified": EITHER, "order": [["dph_total", "asc"]], "type": kind,
                 "limit": self.limit, "allocated_storage": self.disk_gb, **extra}
        try:
            offers = self.api.search(query, decode=decode_bundles)
        finally:
            self._last_search = time.monotonic()
            self.last_report["searches"] += 1
        if offers is None:
            raise ProviderError("unexpected bundles schema: an empty answer")
        return offers

    def _merge(self, on_demand: dict[int, VastOffer], interruptible: dict[int, VastOffer]) -> list[Offer]:
        from pricing.db import utcnow

        now = utcnow()
        offers = []
        for ask_id in sorted(on_demand.keys() | interruptible.keys()):
            raw = on_demand.get(ask_id) or interruptible[ask_id]
            try:
                offer = self._offer(raw, ask_id in on_demand, interruptible.get(ask_id), now)
            except InvalidOffer as exc:  # one row's garbage costs that row only
                self.last_report["dropped"] += 1
                log.warning("dropped Vast ask %s: %s", ask_id, exc)
                continue
            except (KeyError, TypeError, ValueError) as exc:
                raise ProviderError(f"unexpected offer schema (ask {ask_id}): {type(exc).__name__}: {exc}") from None
            if offer is not None:
                offers.append(offer)
        return offers

    def _offer(self, raw: VastOffer, has_on_demand: bool, bid: VastOffer | None, now) -> Offer | None:
        count = raw.num_gpus
        vram_gb = raw.gpu_ram / 1024
        storage = storage_usd_per_hour(raw.storage_cost, self.disk_gb)
        if has_on_demand and raw.dph_base is None:
            raise ValueError("no dph_base")
        compute = raw.dph_base if has_on_demand else None
        min_bid = (bid or raw).min_bid
        compute_prices = [p for p in (compute, float(min_bid) if min_bid else None) if p is not None]
        on_demand = (compute + storage) / count if compute is not None and count > 0 else None
        spot = (float(min_bid) + storage) / count if min_bid and count > 0 else None
        prices = [p for p in (on_demand, spot) if p is not None]
        if (count < 1 or vram_gb <= 0 or not prices or min(compute_prices) <= 0
                or max(prices) > MAX_USD_PER_GPU_HOUR):
            self.last_report["dropped"] += 1
            log.warning("dropped Vast ask %s: %s x %s, prices %s", raw.id, count, raw.gpu_name, prices)
            return None
        name = raw.gpu_name
        spec = gpus.resolve(name, vram_gb)
        if spec is None:
            unknown = self.last_report["unknown GPUs"]  # a sorted list, never a set: reports become JSON
            if name not in unknown:
                unknown.append(name)
                unknown.sort()
            log.warning("unknown Vast GPU %r (%.0f GB): kept under its raw name", name, vram_gb)
        reliability = raw.reliability2 if raw.reliability2 is not None else raw.reliability
        return Offer(
            provider=VAST, offer_key=str(raw.id), gpu_model=spec.model if spec else name, gpu_name_raw=name,
            vram_gb=vram_gb, gpu_count=count, on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot,
            tier="verified" if raw.verification == "verified" else "unverified",
            location=raw.geolocation, available=raw.rentable is not False, fetched_at=now,
            known_gpu=spec is not None, reliability=reliability,
            vcpus=raw.cpu_cores_effective or None,
            ram_gb=_ram_share_gb(raw),
            disk_gb=raw.disk_space,
            download_usd_per_gb=raw.inet_down_cost, upload_usd_per_gb=raw.inet_up_cost,
        )
