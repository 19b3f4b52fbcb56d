"""RunPod: per-GPU on-demand list prices of every GPU type, one Offer per type and cloud tier.

With RUNPOD_API_KEY the prices come from REST v2 `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD`,
once per cloud (SECURE, COMMUNITY): `price.{secure,community}` per GPU, availability NONE|LOW|
MEDIUM|HIGH for that cloud, data centres and CUDA versions (reference note provider-apis-2026-12
§2.1). Without a key (v2 needs one) the deprecated GraphQL `gpuTypes` is the fallback, on-demand
fields only (note §3); a 410 there says to set the key. RunPod has no spot pods any more (note §1):
every RunPod offer has `spot_usd_per_gpu_hour` None, whatever an answer carries. The pseudo-type
"unknown" is dropped; GraphQL `errors` at HTTP 200 are failures (pricing.providers.runpod_api).
"""
from __future__ import annotations

import logging

from pricing import gpus
from pricing.offer import Offer
from pricing.providers import RUNPOD
from pricing.providers.base import Provider, ProviderError
from pricing.providers.http import RetryPolicy
from pricing.providers.runpod_api import CLOUDS, RunPodAPI

log = logging.getLogger("pricing.providers.runpod")

GPU_TYPES = ("query GpuTypes { gpuTypes { id displayName memoryInGb maxGpuCount secureCloud communityCloud "
             "securePrice communityPrice lowestPrice(input: {gpuCount: 1}) "
             "{ uninterruptablePrice stockStatus minVcpu minMemory } } }")
TIERS = (("secure", "securePrice"), ("community", "communityPrice"))  # GraphQL price field per tier


class RunPodProvider(Provider):
    name = RUNPOD

    def __init__(self, base_url: str, api_key=None, timeout: float = 30.0, session=None,
                 retry: RetryPolicy = RetryPolicy(), api: RunPodAPI | None = None):
        super().__init__()
        self.api = api or RunPodAPI(base_url, api_key, timeout=timeout, retry=retry, session=session)

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> RunPodProvider:
        return cls(settings.runpod_url, settings.runpod_api_key, timeout=settings.http_timeout, retry=retry)

    @property
    def url(self) -> str:
        """The endpoint the prices come from."""
        return self.api.base_url + ("/v2/catalog/gpus" if self.api.has_key else "/graphql")

    def fetch(self) -> list[Offer]:
        if self.api.has_key:
            offers, unknown = [], set()
            for tier, cloud in CLOUDS.items():
                try:
                    tier_offers, tier_unknown = parse_catalog(self.api.catalog_gpus(cloud), tier)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ProviderError(f"unexpected /v2/catalog/gpus schema: {type(exc).__name__}: {exc}") from None
                offers += tier_offers
                unknown |= tier_unknown
            self.last_report = {"source": "REST v2 catalog", "unknown GPUs": sorted(unknown)}
            return offers
        data = self.api.graphql(GPU_TYPES)
        try:
            types = data["gpuTypes"]
            if not isinstance(types, list):
                raise TypeError("gpuTypes is not a list")
            offers, unknown = parse_gpu_types(types)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"unexpected gpuTypes schema: {type(exc).__name__}: {exc}") from None
        self.last_report = {"source": "GraphQL gpuTypes (no RUNPOD_API_KEY)", "unknown GPUs": sorted(unknown)}
        return offers


def _spec(gpu_id: str, display: str | None, vram: float, unknown: set[str]):
    spec = gpus.resolve(gpu_id, vram) or gpus.resolve(display or "", vram)
    if spec is None and gpu_id not in unknown:
        unknown.add(gpu_id)
        log.warning("unknown RunPod GPU type %r (%s GB): kept under its raw name", gpu_id, vram)
    return spec


def _offer(gpu_id: str, tier: str, spec, vram: float, price: float, **extra) -> Offer:
    from pricing.db import utcnow

    return Offer(provider=RUNPOD, offer_key=f"{gpu_id}|{tier}", gpu_model=spec.model if spec else gpu_id,
                 gpu_name_raw=gpu_id, vram_gb=vram, gpu_count=1, on_demand_usd_per_gpu_hour=float(price),
                 spot_usd_per_gpu_hour=None, tier=tier, fetched_at=extra.pop("fetched_at", None) or utcnow(),
                 known_gpu=spec is not None, **extra)


def parse_catalog(entries: list[dict], tier: str) -> tuple[list[Offer], set[str]]:
    """Offers of one cloud tier from a `/v2/catalog/gpus?include=AVAILABILITY&cloud=...` answer:
    a type offered there with a list price (note §2.1: per GPU), available unless NONE."""
    from pricing.db import utcnow

    now = utcnow()
    offers, unknown = [], set()
    for gpu in entries:
        gpu_id = gpu["id"]
        price = (gpu.get("price") or {}).get(tier)
        if gpu_id == "unknown" or not gpu.get(tier) or not price:
            continue
        vram = float(gpu["memory"])
        spec = _spec(gpu_id, gpu.get("name"), vram, unknown)
        availability = gpu.get("availability")
        centres = [dc for dc in gpu.get("dataCenters") or [] if (dc.get("availability") or "NONE") != "NONE"]
        offers.append(_offer(gpu_id, tier, spec, vram, price, location=None, fetched_at=now,
                             available=availability not in (None, "NONE") and (bool(centres) or
                                                                                "dataCenters" not in gpu),
                             stock=availability))
    return offers, unknown


def parse_gpu_types(types: list[dict]) -> tuple[list[Offer], set[str]]:
    """Offers (one per GPU type and tier with an on-demand price) from GraphQL `gpuTypes`; any spot
    field a stale answer still carries is ignored (RunPod has no spot pods)."""
    from pricing.db import utcnow

    now = utcnow()
    offers, unknown = [], set()
    for gpu in types:
        gpu_id = gpu["id"]
        if gpu_id == "unknown":
            continue
        vram = float(gpu["memoryInGb"])
        spec = _spec(gpu_id, gpu.get("displayName"), vram, unknown)
        lowest = gpu.get("lowestPrice") or {}
        for tier, price_field in TIERS:
            on_demand = gpu.get(price_field)
            if not on_demand:
                continue
            offers.append(_offer(gpu_id, tier, spec, vram, on_demand, location=None, fetched_at=now,
                                 available=lowest.get("stockStatus") not in (None, "None"),
                                 vcpus=lowest.get("minVcpu"), ram_gb=lowest.get("minMemory"),
                                 stock=lowest.get("stockStatus")))
    return offers, unknown
