"""Export the live price book as SkyPilot catalog CSVs (`~/.sky/catalogs/v8/{runpod,vast,common}`).

SkyPilot prices offers from static catalogs that go stale; written by hand (no .meta md5) they count
as modified and are never overwritten, so its optimizer then sees our current prices. Column orders
follow SkyPilot's own fetchers (fetch_runpod.py, fetch_vast.py). Prices in a catalog are per
instance (all its GPUs). RunPod rows carry no SpotPrice: RunPod removed spot pods.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from pathlib import Path

from pricing import gpus
from pricing.offer import Offer
from pricing.providers import RUNPOD, VAST

RUNPOD_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Region",
                  "SpotPrice", "Price", "AvailabilityZone", "GpuInfo"]
VAST_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
                "SpotPrice", "Region", "HostingType"]
# gpuTypes carries no location and SkyPilot requires one; RunPod then places the pod in any region.
RUNPOD_DEFAULT_REGION = "US"


# SkyPilot's RunPod accelerator names, from its catalog fetcher sky/catalog/data_fetchers/fetch_runpod.py
# (skypilot-org/skypilot, the copy at commit 06f47324: DEFAULT_GPU_INFO's keys after GPU_NAME_OVERRIDES,
# the names its RunPod catalog carries; checked against neither a 0.14.1 tag nor a live catalog).
SKYPILOT_RUNPOD_NAMES = frozenset({
    "A100-80GB", "A100-80GB-SXM", "A30", "A40", "B200", "H100", "H100-NVL", "H100-SXM", "H200-SXM", "L4", "L40",
    "L40S", "MI300X", "RTX2000-Ada", "RTX3070", "RTX3080", "RTX3080-Ti", "RTX3090", "RTX3090-Ti", "RTX4000-Ada",
    "RTX4080", "RTX4080-SUPER", "RTX4090", "RTX5000-Ada", "RTX5080", "RTX5090", "RTX6000-Ada", "RTXA4000",
    "RTXA4500", "RTXA5000", "RTXA6000", "RTXPRO4500", "RTXPRO6000", "RTXPRO6000-MaxQ", "RTXPRO6000-WK",
    "V100-SXM2", "V100-SXM2-32GB",
})
# our canonical model (pricing.gpus) -> SkyPilot's RunPod name, where the two differ
RUNPOD_NAMES = {
    "A100-80GB-PCIe": "A100-80GB", "H100-PCIe": "H100", "H200": "H200-SXM", "RTX-A6000": "RTXA6000",
    "RTX-A5000": "RTXA5000", "RTX-A4500": "RTXA4500", "RTX-A4000": "RTXA4000", "RTX4080S": "RTX4080-SUPER",
    "RTX3080Ti": "RTX3080-Ti", "RTX3090Ti": "RTX3090-Ti", "V100": "V100-SXM2", "V100-32GB": "V100-SXM2-32GB",
    "RTX-PRO-6000": "RTXPRO6000",
}


def accelerator_name(offer: Offer) -> str:
    """SkyPilot's accelerator name: on RunPod the name its catalog uses (RUNPOD_NAMES), otherwise the
    canonical model without spaces ("RTX 4090" -> "RTX4090")."""
    if offer.provider == RUNPOD and offer.gpu_model in RUNPOD_NAMES:
        return RUNPOD_NAMES[offer.gpu_model]
    return re.sub(r"\s+", "", offer.gpu_model)


def instance_type(offer: Offer) -> str:
    """SkyPilot's instance type for an offer: RunPod `{n}x_{GPU}_{TIER}`, Vast `{n}x-{gpu}-{cpus}-{ram MB}`."""
    if offer.provider == RUNPOD:
        return f"{offer.gpu_count}x_{accelerator_name(offer)}_{offer.tier.upper()}"
    return f"{offer.gpu_count}x-{offer.gpu_name_raw.replace(' ', '_')}-{int(offer.vcpus or 0)}-" \
           f"{int(round((offer.ram_gb or 0) * 1024))}"


def region_of(offer: Offer) -> str:
    default = RUNPOD_DEFAULT_REGION if offer.provider == RUNPOD else ""
    return (offer.location or default)[-2:].upper()


def _gpu_info(name: str, count: int, vram_gb: float) -> str:
    mib = int(round(vram_gb * 1024))
    return str({"Gpus": [{"Name": name, "Count": count, "MemoryInfo": {"SizeInMiB": mib}}],
                "TotalGpuMemoryInMiB": mib * count})


def _money(value: float | None, count: int) -> str:
    return "" if value is None else f"{value * count:.4f}"


def runpod_rows(offers: list[Offer]) -> list[dict]:
    rows = []
    for o in offers:
        if o.provider != RUNPOD or o.on_demand_usd_per_gpu_hour is None:
            continue
        name, region = accelerator_name(o), region_of(o)
        rows.append({
            "InstanceType": instance_type(o), "AcceleratorName": name,
            "AcceleratorCount": float(o.gpu_count), "vCPUs": o.vcpus or 4.0 * o.gpu_count,
            "MemoryGiB": o.ram_gb or o.vram_gb * o.gpu_count, "Region": region,
            "SpotPrice": "",  # RunPod has no spot pods any more: SkyPilot must not bid
            "Price": _money(o.on_demand_usd_per_gpu_hour, o.gpu_count), "AvailabilityZone": region,
            "GpuInfo": _gpu_info(name, o.gpu_count, o.vram_gb),
        })
    return rows


def vast_rows(offers: list[Offer]) -> list[dict]:
    """One row per SkyPilot Vast instance type and region, at the cheapest price we saw for it."""
    buckets: dict[tuple[str, str], list[Offer]] = defaultdict(list)
    for o in offers:
        if o.provider != VAST or o.on_demand_usd_per_gpu_hour is None:
            continue
        buckets[(instance_type(o), region_of(o))].append(o)
    rows = []
    for (itype, region), group in sorted(buckets.items()):
        o = min(group, key=lambda x: x.on_demand_usd_per_gpu_hour)
        spots = [x.spot_usd_per_gpu_hour for x in group if x.spot_usd_per_gpu_hour is not None]
        name = accelerator_name(o)
        rows.append({
            "InstanceType": itype, "AcceleratorName": name, "AcceleratorCount": o.gpu_count,
            "vCPUs": float(o.vcpus or 0), "MemoryGiB": round(o.ram_gb or 0.0, 2),
            "GpuInfo": _gpu_info(name, o.gpu_count, o.vram_gb),
            "Price": _money(o.on_demand_usd_per_gpu_hour, o.gpu_count),
            "SpotPrice": _money(min(spots) if spots else None, o.gpu_count),
            "Region": region, "HostingType": 0,
        })
    return rows


def _csv(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_catalog(offers: list[Offer], root: Path) -> dict[str, Path]:
    """Write runpod/vms.csv, vast/vms.csv, common/accelerators.csv and common/metadata.csv under `root`."""
    root = Path(root).expanduser()
    runpod, vast = runpod_rows(offers), vast_rows(offers)
    clouds: dict[str, set[str]] = defaultdict(set)
    memory: dict[str, float] = {}
    vendor: dict[str, str] = {}
    for cloud, rows in (("RunPod", runpod), ("Vast", vast)):
        for row in rows:
            clouds[row["AcceleratorName"]].add(cloud)
    for o in offers:
        memory.setdefault(accelerator_name(o), o.vram_gb)
        spec = gpus.by_model(o.gpu_model)
        vendor.setdefault(accelerator_name(o), spec.vendor if spec else "NVIDIA")
    files = {
        "runpod": (root / "runpod" / "vms.csv", _csv(RUNPOD_COLUMNS, runpod)),
        "vast": (root / "vast" / "vms.csv", _csv(VAST_COLUMNS, vast)),
        "accelerators": (root / "common" / "accelerators.csv", _csv(
            ["AcceleratorName", "Clouds"],
            [{"AcceleratorName": n, "Clouds": str(sorted(c))} for n, c in sorted(clouds.items())])),
        "metadata": (root / "common" / "metadata.csv", _csv(
            ["GPU", "MemoryGB", "Manufacturer"],
            [{"GPU": n, "MemoryGB": round(memory[n]), "Manufacturer": vendor[n]} for n in sorted(clouds)])),
    }
    for path, text in files.values():
        _write_atomic(path, text)
    return {name: path for name, (path, _) in files.items()}
