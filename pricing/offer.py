"""The normalized GPU offer every provider returns (the contract in ARCHITECTURE.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

MAX_USD_PER_GPU_HOUR = 100.0  # above this a price is a broken answer: dropped by a provider, refused by a refresh


@dataclass(frozen=True)
class Offer:
    """One rentable configuration at one moment, prices always per GPU-hour in USD.

    `spot_usd_per_gpu_hour` is None when the offer has no spot/interruptible variant: None means
    "no spot", never 0. `gpu_model` is the canonical name from pricing.gpus, or the raw name when the
    GPU is unknown to our table (then `known_gpu` is False and the offer is kept, never dropped).
    """

    provider: str  # a pricing.providers.NAMES entry, or "local"
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

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["fetched_at"] = self.fetched_at.isoformat()
        return data
