"""RunPod: per-GPU on-demand list prices of every GPU type, one Offer per type, cloud tier and GPU count.

With RUNPOD_API_KEY the prices come from REST v2 `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD`,
once per cloud (SECURE, COMMUNITY) and pod size (COUNTS, up to the largest `maxCount` the first answer
shows): `price.{secure,community}` per GPU, availability NONE|LOW|MEDIUM|HIGH of that many GPUs in one
pod on that cloud, the data centres that have them (kept as the offer's location: SkyPilot's catalog
and a pinned launch need their ids) and CUDA versions. Availability is asked for the job image's CUDA
(`minCudaVersion`), so a type whose hosts all run an older driver reads as unavailable instead of
failing at create (docs/providers/runpod.md, "Prices and availability"). Without a key (v2 needs one)
the deprecated GraphQL `gpuTypes` is the fallback, one GPU per pod, on-demand fields only
("GraphQL"); a 410 there says to set the key. RunPod has no spot pods any more ("No spot"): the registry
says so and pricing.offer drops any spot price. The pseudo-type "unknown" is dropped; a row with a
number that is not finite is skipped and counted; GraphQL `errors` at HTTP 200 are failures
(pricing.providers.runpod_api).
"""
from __future__ import annotations

import logging

from pricing import gpus
from pricing.offer import DESCRIPTION_LIMITS, InvalidOffer, Offer
from pricing.providers.base import Provider, ProviderError
from pricing.providers.http import RetryPolicy
from pricing.providers.registry import RUNPOD
from pricing.providers.runpod_api import CLOUDS, RunPodAPI

log = logging.getLogger("pricing.providers.runpod")

GPU_TYPES = ("query GpuTypes { gpuTypes { id displayName memoryInGb maxGpuCount secureCloud communityCloud "
             "securePrice communityPrice lowestPrice(input: {gpuCount: 1}) "
             "{ uninterruptablePrice stockStatus minVcpu minMemory } } }")
TIERS = (("secure", "securePrice"), ("community", "communityPrice"))  # GraphQL price field per tier
COUNTS = (1, 2, 4, 8)  # GPUs per pod offered: the sizes data-parallel training uses
# a running pod's storage, container disk included, is billed apart from the GPU price; ingress and egress are
# free (docs/providers/runpod.md, "Billing")
DISK_USD_PER_GB_MONTH = 0.10


class RunPodProvider(Provider):
    name = RUNPOD

    def __init__(self, base_url: str, api_key=None, timeout: float = 30.0, session=None,
                 retry: RetryPolicy = RetryPolicy(), api: RunPodAPI | None = None, min_cuda: str | None = None):
        super().__init__()
        self.api = api or RunPodAPI(base_url, api_key, timeout=timeout, retry=retry, session=session)
        self.min_cuda = min_cuda  # the job image's CUDA: availability is asked for hosts that can run it

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> RunPodProvider:
        mine = settings.providers[RUNPOD]
        return cls(mine.url, mine.api_key, timeout=settings.http_timeout, retry=retry,
                   min_cuda=gpus.image_cuda(settings.job_image))

    @property
    def url(self) -> str:
        """The endpoint the prices come from."""
        return self.api.base_url + ("/v2/catalog/gpus" if self.api.has_key else "/graphql")

    def fetch(self) -> list[Offer]:
        self.last_report = {"dropped": 0, "unknown GPUs": []}
        unknown: set[str] = set()
        if self.api.has_key:
            offers = []
            for tier, cloud in CLOUDS.items():
                first = self.api.catalog_gpus(cloud, 1, self.min_cuda)
                largest = max((_max_count(gpu, tier) for gpu in first), default=1)
                for count in (c for c in COUNTS if c <= largest):
                    entries = first if count == 1 else self.api.catalog_gpus(cloud, count, self.min_cuda)
                    try:
                        offers += self._parse_catalog(entries, tier, count, unknown)
                    except (KeyError, TypeError, ValueError) as exc:
                        raise ProviderError(f"unexpected /v2/catalog/gpus schema: {type(exc).__name__}: {exc}") \
                            from None
            self.last_report.update({"source": "REST v2 catalog", "unknown GPUs": sorted(unknown)})
            return offers
        data = self.api.graphql(GPU_TYPES)
        try:
            types = data["gpuTypes"]
            if not isinstance(types, list):
                raise TypeError("gpuTypes is not a list")
            offers = self._parse_gpu_types(types, unknown)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"unexpected gpuTypes schema: {type(exc).__name__}: {exc}") from None
        self.last_report.update({"source": "GraphQL gpuTypes (no RUNPOD_API_KEY)", "unknown GPUs": sorted(unknown)})
        return offers

    def _parse_catalog(self, entries: list[dict], tier: str, count: int, unknown: set[str]) -> list[Offer]:
        """Offers of `count` GPUs per pod on one cloud tier from a catalog answer asked with that count: a
        type offered there with a list price (per GPU) and room for `count`, available unless NONE."""
        from pricing.db import utcnow

        now = utcnow()
        offers = []
        for gpu in entries:
            gpu_id = gpu["id"]
            price = (gpu.get("price") or {}).get(tier)
            if gpu_id == "unknown" or not gpu.get(tier) or not price or count > _max_count(gpu, tier):
                continue
            availability = gpu.get("availability")
            centres = sorted(str(dc.get("id")) for dc in gpu.get("dataCenters") or []
                             if (dc.get("availability") or "NONE") != "NONE" and dc.get("id"))
            self._keep(offers, gpu_id, gpu.get("name"), gpu["memory"], unknown, tier=tier, count=count,
                       price=price, location=data_centres(centres), fetched_at=now, stock=availability,
                       available=availability not in (None, "NONE") and (bool(centres) or "dataCenters" not in gpu))
        return offers

    def _parse_gpu_types(self, types: list[dict], unknown: set[str]) -> list[Offer]:
        """Offers (one GPU per pod, one per type and tier with an on-demand price) from GraphQL `gpuTypes`."""
        from pricing.db import utcnow

        now = utcnow()
        offers = []
        for gpu in types:
            gpu_id = gpu["id"]
            if gpu_id == "unknown":
                continue
            memory, lowest = gpu["memoryInGb"], gpu.get("lowestPrice") or {}
            for tier, price_field in TIERS:
                on_demand = gpu.get(price_field)
                if not on_demand:
                    continue
                self._keep(offers, gpu_id, gpu.get("displayName"), memory, unknown, tier=tier, count=1,
                           price=on_demand, location=None, fetched_at=now,
                           available=lowest.get("stockStatus") not in (None, "None"), vcpus=lowest.get("minVcpu"),
                           ram_gb=lowest.get("minMemory"), stock=lowest.get("stockStatus"))
        return offers

    def _keep(self, offers: list[Offer], gpu_id: str, display: str | None, memory, unknown: set[str], *, tier: str,
              count: int, price, **extra) -> None:
        """Append the Offer of one row, or skip and count a row that cannot be one (pricing.offer.InvalidOffer)."""
        try:
            vram = float(memory)
            spec = gpus.resolve(gpu_id, vram) or gpus.resolve(display or "", vram)
            key = f"{gpu_id}|{tier}" if count == 1 else f"{gpu_id}|{tier}|{count}"
            offers.append(Offer(provider=RUNPOD, offer_key=key, gpu_model=spec.model if spec else gpu_id,
                                gpu_name_raw=gpu_id, vram_gb=vram, gpu_count=count,
                                on_demand_usd_per_gpu_hour=float(price), spot_usd_per_gpu_hour=None, tier=tier,
                                known_gpu=spec is not None, disk_usd_per_gb_month=DISK_USD_PER_GB_MONTH, **extra))
        except InvalidOffer as exc:
            self.last_report["dropped"] += 1
            log.warning("dropped RunPod row: %s", exc)
            return
        if spec is None and gpu_id not in unknown:
            unknown.add(gpu_id)
            log.warning("unknown RunPod GPU type %r (%s GB): kept under its raw name", gpu_id, vram)


def _max_count(gpu: dict, tier: str) -> int:
    """The most GPUs one pod of this type may have on `tier` (a ceiling, not stock); 1 when not said."""
    value = (gpu.get("maxCount") or {}).get(tier)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else 1


def data_centres(ids: list[str]) -> str | None:
    """The data-centre ids with stock, comma-separated as an offer's location (whole ids only, within the
    column); None when the catalog named none."""
    kept: list[str] = []
    for dc in ids:
        if len(",".join([*kept, dc])) > DESCRIPTION_LIMITS["location"]:
            break
        kept.append(dc)
    return ",".join(kept) or None
