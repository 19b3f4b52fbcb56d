"""Export the live price book as SkyPilot catalog CSVs (`~/.sky/catalogs/v8/<cloud>/vms.csv` and `common/`).

SkyPilot prices offers from static catalogs that go stale; written by hand (no .meta md5) they count
as modified and are never overwritten, so its optimizer then sees our current prices. Column orders
follow SkyPilot's own fetchers (fetch_runpod.py, fetch_vast.py); each provider's directory is its
SkyPilot cloud name (pricing.providers.registry). Prices in a catalog are per instance (all its GPUs).
RunPod rows carry no SpotPrice (RunPod has no spot pods) and one row per data centre the book saw stock
in: SkyPilot passes a row's AvailabilityZone to RunPod as `dataCenterIds`, which RunPod enforces, so a
zone must be a real data-centre id (docs/providers/runpod.md, "SkyPilot").
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

from pricing import gpus
from pricing.offer import Offer
from pricing.providers.registry import PROVIDERS, RUNPOD, VAST

log = logging.getLogger("pricing.skypilot_catalog")

RUNPOD_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Region",
                  "SpotPrice", "Price", "AvailabilityZone", "GpuInfo"]
VAST_COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
                "SpotPrice", "Region", "HostingType"]
# The first part of a RunPod data-centre id that names a continent rather than a country ("EU-RO-1" is in
# RO, "AP-IN-1" in IN, "OC-AU-1" in AU; "US-TX-3" and "CA-MTL-1" start with their country; "EUR-IS-1" and
# "SEA-SG-1" have a longer prefix): as SkyPilot's REGION_ZONES table groups them (fetch_runpod.py).
CONTINENT_PREFIXES = frozenset({"EU", "AP", "OC"})

# The accelerator names SkyPilot's RunPod launcher knows: the keys of GPU_NAME_MAP in
# sky/provision/runpod/utils.py (skypilot-org/skypilot @02b01447), which turns an instance type's name back
# into RunPod's GPU id at launch. Its catalog fetcher spells five of them differently (RTX3080-Ti,
# RTX3090-Ti, RTX4080-SUPER, V100-SXM2, V100-SXM2-32GB), names the launcher cannot find: we use these.
SKYPILOT_RUNPOD_NAMES = frozenset({
    "MI300X", "A100-80GB", "A100-80GB-SXM", "A30", "A40", "B200", "RTX3070", "RTX3080", "RTX3080Ti", "RTX3090",
    "RTX3090Ti", "RTX4070Ti", "RTX4080", "RTX4080SUPER", "RTX4090", "RTX5080", "RTX5090", "H100-SXM", "H100-NVL",
    "H100", "H200-SXM", "L4", "L40", "L40S", "RTX2000-Ada", "RTX4000-Ada", "RTX4000-Ada-SFF", "RTX5000-Ada",
    "RTX6000-Ada", "RTXA2000", "RTXA4000", "RTXA4500", "RTXA5000", "RTXA6000", "RTXPRO4500", "RTXPRO6000",
    "RTXPRO6000-WK", "V100-16GB-FHHL", "V100-16GB-SXM2", "V100-32GB-SXM2", "V100-16GB-PCIe",
})
# our canonical model (pricing.gpus) -> SkyPilot's RunPod name, where the two differ
RUNPOD_NAMES = {
    "A100-80GB-PCIe": "A100-80GB", "H100-PCIe": "H100", "H200": "H200-SXM", "RTX-A6000": "RTXA6000",
    "RTX-A5000": "RTXA5000", "RTX-A4500": "RTXA4500", "RTX-A4000": "RTXA4000", "RTX-A2000": "RTXA2000",
    "RTX4080S": "RTX4080SUPER", "RTX4000-SFF-Ada": "RTX4000-Ada-SFF", "V100": "V100-16GB-SXM2",
    "V100-32GB": "V100-32GB-SXM2", "RTX-PRO-6000": "RTXPRO6000",
}


def default_root() -> Path:
    """SkyPilot's catalog directory for this user (read when called: HOME may differ between calls)."""
    return Path.home() / ".sky" / "catalogs" / "v8"


def accelerator_name(offer: Offer) -> str:
    """SkyPilot's accelerator name: on RunPod the name its launcher maps back to a GPU id (RUNPOD_NAMES),
    otherwise the canonical model without spaces ("RTX 4090" -> "RTX4090")."""
    if offer.provider == RUNPOD and offer.gpu_model in RUNPOD_NAMES:
        return RUNPOD_NAMES[offer.gpu_model]
    return re.sub(r"\s+", "", offer.gpu_model)


def instance_type(offer: Offer) -> str:
    """SkyPilot's instance type for an offer: RunPod `{n}x_{GPU}_{TIER}`, Vast `{n}x-{gpu}-{cpus}-{ram MB}`."""
    if offer.provider == RUNPOD:
        return f"{offer.gpu_count}x_{accelerator_name(offer)}_{offer.tier.upper()}"
    return f"{offer.gpu_count}x-{offer.gpu_name_raw.replace(' ', '_')}-{int(offer.vcpus or 0)}-" \
           f"{int(round((offer.ram_gb or 0) * 1024))}"


def data_centres(offer: Offer) -> list[str]:
    """The RunPod data-centre ids an offer saw stock in (pricing.providers.runpod keeps them as its location)."""
    return [dc for dc in (offer.location or "").split(",") if dc.count("-") >= 2]


def data_centre_country(dc: str) -> str:
    """The country of a RunPod data-centre id: "US-TX-3" -> "US", "EU-RO-1" -> "RO", "EUR-IS-1" -> "IS"."""
    first, _, rest = dc.partition("-")
    return first if len(first) == 2 and first not in CONTINENT_PREFIXES else rest.partition("-")[0]


def region_of(offer: Offer) -> str:
    """SkyPilot's region for an offer: on RunPod the one country of its data centres ("" when they span
    several: SkyPilot then chooses among the catalog's zones), elsewhere the location's country code."""
    if offer.provider == RUNPOD:
        countries = {data_centre_country(dc) for dc in data_centres(offer)}
        return countries.pop() if len(countries) == 1 else ""
    return (offer.location or "")[-2:].upper()


def _gpu_info(name: str, count: int, vram_gb: float) -> str:
    mib = int(round(vram_gb * 1024))
    return str({"Gpus": [{"Name": name, "Count": count, "MemoryInfo": {"SizeInMiB": mib}}],
                "TotalGpuMemoryInMiB": mib * count})


def _money(value: float | None, count: int) -> str:
    return "" if value is None else f"{value * count:.4f}"


def runpod_rows(offers: list[Offer]) -> list[dict]:
    """One row per RunPod offer and data centre with stock; an offer whose data centres the book does not
    know (read without RUNPOD_API_KEY) is left out: any zone we wrote for it would be a guess RunPod rejects."""
    rows, unplaced = [], 0
    for o in offers:
        if o.provider != RUNPOD or o.on_demand_usd_per_gpu_hour is None:
            continue
        centres = data_centres(o)
        unplaced += not centres
        name = accelerator_name(o)
        for dc in centres:
            rows.append({
                "InstanceType": instance_type(o), "AcceleratorName": name,
                "AcceleratorCount": float(o.gpu_count), "vCPUs": o.vcpus or 4.0 * o.gpu_count,
                "MemoryGiB": o.ram_gb or o.vram_gb * o.gpu_count, "Region": data_centre_country(dc),
                "SpotPrice": _money(o.spot_usd_per_gpu_hour, o.gpu_count),  # none: RunPod has no spot
                "Price": _money(o.on_demand_usd_per_gpu_hour, o.gpu_count), "AvailabilityZone": dc,
                "GpuInfo": _gpu_info(name, o.gpu_count, o.vram_gb),
            })
    if unplaced:
        log.warning("%d RunPod offers name no data centre (prices read without a key): left out of SkyPilot's "
                    "catalog", unplaced)
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
    """Write each cloud's vms.csv (in SkyPilot's name for it), common/accelerators.csv and common/metadata.csv
    under `root`."""
    root = Path(root).expanduser()
    runpod, vast = runpod_rows(offers), vast_rows(offers)
    runpod_dir, vast_dir = PROVIDERS[RUNPOD].skypilot_cloud, PROVIDERS[VAST].skypilot_cloud
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
        RUNPOD: (root / runpod_dir / "vms.csv", _csv(RUNPOD_COLUMNS, runpod)),
        VAST: (root / vast_dir / "vms.csv", _csv(VAST_COLUMNS, vast)),
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
