"""The normalized GPU offer every provider returns (the contract in ARCHITECTURE.md)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime

from pricing.providers.registry import has_spot

MAX_USD_PER_GPU_HOUR = 100.0  # above this a price is a broken answer: dropped by a provider, refused by a refresh
# The longest text each field may hold: the width of its column in pricing.store (a test holds them equal).
# An identity longer than its column makes the offer invalid; a longer description is cut.
IDENTITY_LIMITS = {"provider": 32, "offer_key": 200, "gpu_model": 100, "tier": 32}
DESCRIPTION_LIMITS = {"gpu_name_raw": 200, "location": 200, "stock": 32}
NUMBERS = ("vram_gb", "gpu_count", "on_demand_usd_per_gpu_hour", "spot_usd_per_gpu_hour", "reliability", "vcpus",
           "ram_gb", "disk_gb", "tflops", "download_usd_per_gb", "upload_usd_per_gb",
           "disk_usd_per_gb_month")


class InvalidOffer(ValueError):
    """A provider's row that cannot be an offer (a number that is not finite, an identity too long for its
    column): the provider skips and counts it; one bad row never costs the others."""


@dataclass(frozen=True)
class Offer:
    """One rentable configuration at one moment, prices always per GPU-hour in USD.

    `spot_usd_per_gpu_hour` is None when the offer has no spot/interruptible variant: None means
    "no spot", never 0. `gpu_model` is the canonical name from pricing.gpus, or the raw name when the
    GPU is unknown to our table (then `known_gpu` is False and the offer is kept, never dropped).
    """

    provider: str  # a pricing.providers.registry name, or "local"
    offer_key: str  # provider-side id: RunPod gpu type id + tier, Vast ask id
    gpu_model: str  # canonical model, e.g. "H100-SXM", or the raw name when unknown
    gpu_name_raw: str  # the provider's own name, e.g. "NVIDIA H100 80GB HBM3" / "H100 SXM"
    vram_gb: float  # per GPU, measured by the provider (Vast gpu_ram MB / 1024), not from the name
    gpu_count: int
    on_demand_usd_per_gpu_hour: float | None
    spot_usd_per_gpu_hour: float | None
    tier: str  # RunPod "secure"/"community", Vast "verified"/"unverified"
    location: str | None
    available: bool
    fetched_at: datetime
    known_gpu: bool = True
    reliability: float | None = None  # 0..1 where the provider reports it (Vast)
    vcpus: float | None = None
    ram_gb: float | None = None
    disk_gb: float | None = None
    stock: str | None = None  # RunPod stockStatus: High/Medium/Low
    tflops: float | None = None  # measured peak per GPU where no table entry gives it (this machine's CPU)
    # bandwidth the provider bills per byte (Vast inet_down_cost / inet_up_cost), $ per GB (1e9 bytes) into and
    # out of the instance; None: not billed (RunPod) or not reported
    download_usd_per_gb: float | None = None
    upload_usd_per_gb: float | None = None
    # disk billed apart from the GPU price, $ per GB-month of the job's disk (RunPod's container disk); None where
    # the price already holds the disk (Vast: storage folded in at PLANNER_VAST_DISK_GB) or it is free
    disk_usd_per_gb_month: float | None = None

    def __post_init__(self) -> None:
        """The offer boundary: every number finite, every text within its column, and no spot price from
        a provider without spot (pricing.providers.registry: declared there, enforced here only)."""
        for name in NUMBERS:
            value = getattr(self, name)
            try:
                finite = value is None or (not isinstance(value, bool) and math.isfinite(value))
            except TypeError:
                finite = False
            if not finite:
                raise InvalidOffer(f"offer {str(self.offer_key)[:80]!r}: {name} is {value!r}, not a finite number")
        for name, limit in IDENTITY_LIMITS.items():
            if len(str(getattr(self, name))) > limit:
                raise InvalidOffer(f"offer {str(self.offer_key)[:80]!r}: {name} is longer than {limit} characters")
        for name, limit in DESCRIPTION_LIMITS.items():
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                object.__setattr__(self, name, value[:limit])
        if self.spot_usd_per_gpu_hour is not None and not has_spot(self.provider):
            object.__setattr__(self, "spot_usd_per_gpu_hour", None)

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["fetched_at"] = self.fetched_at.isoformat()
        return data
