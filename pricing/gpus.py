"""The canonical GPU table: one entry per GPU model either provider lists, with the names each uses.

Figures are per GPU from the vendors' datasheets: dense (not 2:4 sparse) bf16 tensor TFLOPs, with
fp32 accumulation on GeForce cards (half their fp16-accumulate rate); GPUs without bf16 (V100, T4,
Turing) give their fp16 tensor rate and say so in `bf16`. The planner divides work by these peaks.
VRAM here is nominal: offers carry the VRAM the provider measured, which is what planning uses (a
modded 48 GB "RTX 4090" is an RTX4090 with 48 GB). A name not in the table resolves to None; the
provider module then keeps the offer under its raw name and reports it.

`compute_cap` is the CUDA compute capability from NVIDIA's "CUDA GPU Compute Capability" page
(developer.nvidia.com/cuda-gpus, and /cuda-legacy-gpus for Volta; A10G is AWS's A10, 8.6); None for
AMD. `image_compute_caps` says which of them a job image's PyTorch build has kernels for.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class GpuSpec:
    model: str  # canonical name, e.g. "H100-SXM"
    vram_gb: float  # nominal, per GPU
    bf16_tflops: float  # dense peak (fp16 tensor peak where `bf16` is False)
    memory_gbps: float
    vendor: str = "NVIDIA"
    bf16: bool = True
    compute_cap: float | None = None  # CUDA compute capability (major.minor); None for AMD
    aliases: tuple[str, ...] = field(default=(), repr=False)


def _g(model, vram, tflops, bandwidth, compute_cap, *aliases, vendor="NVIDIA", bf16=True) -> GpuSpec:
    return GpuSpec(model, vram, tflops, bandwidth, vendor, bf16, compute_cap, (model, *aliases))


GPUS: tuple[GpuSpec, ...] = (
    # data-centre Hopper / Blackwell
    _g("H100-SXM", 80, 989.4, 3350, 9.0, "NVIDIA H100 80GB HBM3", "H100 SXM", "H100 SXM5", "H100"),
    _g("H100-PCIe", 80, 756.0, 2000, 9.0, "NVIDIA H100 PCIe", "H100 PCIE"),
    _g("H100-NVL", 94, 835.0, 3900, 9.0, "NVIDIA H100 NVL", "H100 NVL"),
    _g("H200", 141, 989.4, 4800, 9.0, "NVIDIA H200", "H200 SXM", "H200 NVL", "NVIDIA H200 NVL"),
    _g("GH200", 96, 989.4, 4000, 9.0, "NVIDIA GH200 480GB", "GH200 SXM"),
    _g("B200", 180, 2250.0, 8000, 10.0, "NVIDIA B200", "B200 SXM"),
    # Ampere data centre: one name often covers 40 and 80 GB; resolve() picks by measured VRAM
    _g("A100-80GB-SXM", 80, 312.0, 2039, 8.0, "NVIDIA A100-SXM4-80GB", "A100 SXM4", "A100 SXM", "A100 80GB SXM"),
    _g("A100-40GB-SXM", 40, 312.0, 1555, 8.0, "NVIDIA A100-SXM4-40GB", "A100 SXM4", "A100 SXM"),
    _g("A100-80GB-PCIe", 80, 312.0, 1935, 8.0, "NVIDIA A100 80GB PCIe", "A100 PCIE", "A100 80GB", "A100X"),
    _g("A100-40GB-PCIe", 40, 312.0, 1555, 8.0, "NVIDIA A100-PCIE-40GB", "A100 PCIE", "A100 40GB"),
    _g("A40", 48, 149.7, 696, 8.6, "NVIDIA A40"),
    _g("A30", 24, 165.0, 933, 8.0, "NVIDIA A30"),
    _g("A10", 24, 125.0, 600, 8.6, "NVIDIA A10"),
    _g("A10G", 24, 70.0, 600, 8.6, "NVIDIA A10G"),
    _g("A16", 16, 36.0, 200, 8.6, "NVIDIA A16"),
    # Ada data centre / workstation
    _g("L4", 24, 121.0, 300, 8.9, "NVIDIA L4"),
    _g("L40", 48, 181.0, 864, 8.9, "NVIDIA L40"),
    _g("L40S", 48, 362.0, 864, 8.9, "NVIDIA L40S"),
    _g("RTX6000-Ada", 48, 364.2, 960, 8.9, "NVIDIA RTX 6000 Ada Generation", "RTX 6000Ada", "RTX 6000 Ada"),
    _g("RTX5000-Ada", 32, 261.0, 576, 8.9, "NVIDIA RTX 5000 Ada Generation", "RTX 5000Ada", "RTX 5000 Ada"),
    _g("RTX4500-Ada", 24, 158.0, 432, 8.9, "NVIDIA RTX 4500 Ada Generation", "RTX 4500Ada"),
    _g("RTX4000-Ada", 20, 106.9, 360, 8.9, "NVIDIA RTX 4000 Ada Generation", "RTX 4000Ada", "RTX 4000 Ada"),
    _g("RTX4000-SFF-Ada", 20, 76.7, 280, 8.9, "NVIDIA RTX 4000 SFF Ada Generation", "RTX 4000 SFF Ada"),
    _g("RTX2000-Ada", 16, 48.0, 224, 8.9, "NVIDIA RTX 2000 Ada Generation", "RTX 2000Ada", "RTX 2000 Ada"),
    # Ampere workstation
    _g("RTX-A6000", 48, 154.8, 768, 8.6, "NVIDIA RTX A6000", "RTX A6000", "A6000"),
    _g("RTX-A5000", 24, 111.1, 768, 8.6, "NVIDIA RTX A5000", "RTX A5000", "A5000"),
    _g("RTX-A4500", 20, 94.6, 640, 8.6, "NVIDIA RTX A4500", "RTX A4500", "A4500"),
    _g("RTX-A4000", 16, 76.7, 448, 8.6, "NVIDIA RTX A4000", "RTX A4000", "A4000"),
    _g("RTX-A2000", 12, 31.9, 288, 8.6, "NVIDIA RTX A2000", "RTX A2000", "RTX A2000 12GB"),
    # Blackwell workstation
    _g("RTX-PRO-6000", 96, 503.8, 1792, 12.0, "NVIDIA RTX PRO 6000 Blackwell Server Edition",
       "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "RTX PRO 6000 S", "RTX PRO 6000 WS", "RTX PRO 6000"),
    # GeForce (bf16 with fp32 accumulation)
    _g("RTX5090", 32, 209.5, 1792, 12.0, "NVIDIA GeForce RTX 5090", "RTX 5090"),
    _g("RTX5080", 16, 112.6, 960, 12.0, "NVIDIA GeForce RTX 5080", "RTX 5080"),
    _g("RTX5070Ti", 16, 87.9, 896, 12.0, "NVIDIA GeForce RTX 5070 Ti", "RTX 5070 Ti"),
    _g("RTX5070", 12, 61.7, 672, 12.0, "NVIDIA GeForce RTX 5070", "RTX 5070"),
    _g("RTX5060Ti", 16, 47.4, 448, 12.0, "NVIDIA GeForce RTX 5060 Ti", "RTX 5060 Ti"),
    _g("RTX4090", 24, 165.2, 1008, 8.9, "NVIDIA GeForce RTX 4090", "RTX 4090"),
    _g("RTX4080S", 16, 104.4, 736, 8.9, "NVIDIA GeForce RTX 4080 SUPER", "RTX 4080S", "RTX 4080 SUPER"),
    _g("RTX4080", 16, 97.5, 717, 8.9, "NVIDIA GeForce RTX 4080", "RTX 4080"),
    _g("RTX4070Ti", 12, 80.2, 504, 8.9, "NVIDIA GeForce RTX 4070 Ti", "RTX 4070 Ti", "RTX 4070 Ti SUPER"),
    _g("RTX4070", 12, 58.3, 504, 8.9, "NVIDIA GeForce RTX 4070", "RTX 4070", "RTX 4070S", "RTX 4070 SUPER"),
    _g("RTX4060Ti", 16, 44.1, 288, 8.9, "NVIDIA GeForce RTX 4060 Ti", "RTX 4060 Ti"),
    _g("RTX4060", 8, 30.2, 272, 8.9, "NVIDIA GeForce RTX 4060", "RTX 4060"),
    _g("RTX3090Ti", 24, 80.0, 1008, 8.6, "NVIDIA GeForce RTX 3090 Ti", "RTX 3090 Ti"),
    _g("RTX3090", 24, 71.0, 936, 8.6, "NVIDIA GeForce RTX 3090", "RTX 3090"),
    _g("RTX3080Ti", 12, 68.2, 912, 8.6, "NVIDIA GeForce RTX 3080 Ti", "RTX 3080 Ti"),
    _g("RTX3080", 10, 59.5, 760, 8.6, "NVIDIA GeForce RTX 3080", "RTX 3080"),
    _g("RTX3070", 8, 40.6, 448, 8.6, "NVIDIA GeForce RTX 3070", "RTX 3070", "RTX 3070 Ti"),
    _g("RTX3060Ti", 8, 32.4, 448, 8.6, "NVIDIA GeForce RTX 3060 Ti", "RTX 3060 Ti"),
    _g("RTX3060", 12, 25.6, 360, 8.6, "NVIDIA GeForce RTX 3060", "RTX 3060"),
    # Turing / Volta: no bf16; fp16 tensor peaks
    _g("V100-32GB", 32, 125.0, 900, 7.0, "Tesla V100-SXM2-32GB", "Tesla V100", "V100 32GB", bf16=False),
    _g("V100", 16, 125.0, 900, 7.0, "Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB", "Tesla V100", "V100", bf16=False),
    _g("T4", 16, 65.0, 320, 7.5, "Tesla T4", "NVIDIA T4", bf16=False),
    _g("TitanRTX", 24, 130.5, 672, 7.5, "NVIDIA TITAN RTX", "Titan RTX", bf16=False),
    _g("TitanV", 12, 110.0, 652, 7.0, "NVIDIA TITAN V", "Titan V", bf16=False),
    _g("QuadroRTX8000", 48, 130.5, 672, 7.5, "Quadro RTX 8000", "Q RTX 8000", bf16=False),
    _g("QuadroRTX6000", 24, 130.5, 672, 7.5, "Quadro RTX 6000", "Q RTX 6000", bf16=False),
    _g("RTX2080Ti", 11, 53.8, 616, 7.5, "NVIDIA GeForce RTX 2080 Ti", "RTX 2080 Ti", bf16=False),
    # AMD
    _g("MI300X", 192, 1307.4, 5300, None, "AMD Instinct MI300X OAM", "MI300X", vendor="AMD"),
    _g("MI250", 64, 181.0, 1600, None, "AMD Instinct MI250", "MI250", vendor="AMD"),
)

_NOISE = re.compile(r"\b(nvidia|geforce|tesla|amd|instinct|generation|oam)\b")


def normalize(name: str) -> str:
    """Case, spacing, punctuation and vendor words removed: 'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    return re.sub(r"[^a-z0-9]", "", _NOISE.sub("", name.lower()))


@lru_cache(maxsize=1)
def _index() -> dict[str, tuple[GpuSpec, ...]]:
    index: dict[str, list[GpuSpec]] = {}
    for spec in GPUS:
        for alias in spec.aliases:
            bucket = index.setdefault(normalize(alias), [])
            if spec not in bucket:
                bucket.append(spec)
    return {key: tuple(specs) for key, specs in index.items()}


def resolve(raw_name: str, vram_gb: float | None = None) -> GpuSpec | None:
    """The table entry for a provider's GPU name; where one name covers several memory sizes (A100,
    V100), the one nearest the measured `vram_gb`. None for a name the table does not know."""
    candidates = _index().get(normalize(raw_name or ""))
    if not candidates:
        return None
    if vram_gb is None or len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=lambda spec: abs(spec.vram_gb - vram_gb))


@lru_cache(maxsize=1)
def _models() -> dict[str, GpuSpec]:
    return {spec.model: spec for spec in reversed(GPUS)}  # the first entry wins, as a scan would


def by_model(model: str) -> GpuSpec | None:
    """The entry for a canonical model name (as stored on offers), or None. A dict lookup: the planner
    calls it once per offer of a 20,000-offer book."""
    return _models().get(model) or resolve(model)


# ------------------------------------------------------------------ which GPUs a job image runs on

def image_cuda(image: str) -> str | None:
    """The CUDA version an image tag names: 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime' -> '12.4',
    '...:2.8.0-cu128' -> '12.8'; None when the tag does not say."""
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
    if match := re.search(r"cuda[-_]?(\d+)\.(\d+)", tag, re.IGNORECASE):
        return f"{int(match.group(1))}.{int(match.group(2))}"
    if match := re.search(r"(?<![a-z])cu(\d{2})(\d)(?!\d)", tag, re.IGNORECASE):
        return f"{int(match.group(1))}.{int(match.group(2))}"
    return None


def image_torch(image: str) -> tuple[int, int] | None:
    """The PyTorch version of a pytorch/pytorch-style tag ('2.5.1-cuda12.4-...' -> (2, 5))."""
    tag = image.rpartition(":")[2]
    match = re.match(r"(\d+)\.(\d+)", tag)
    return (int(match.group(1)), int(match.group(2))) if match else None


CUDA_FOR_BLACKWELL = (12, 8)  # the first CUDA whose PyTorch builds carry sm_100 / sm_120 kernels


@lru_cache(maxsize=32)
def image_compute_caps(image: str) -> tuple[float, float] | None:
    """The compute capabilities a job image's PyTorch build has kernels for, as (lowest, upper bound,
    exclusive): builds for CUDA before 12.8 stop at sm_90 (no B200 = 10.0, no RTX 50xx / RTX PRO 6000 =
    12.0); cu128 builds start at sm_70, from torch 2.10 at sm_75 (Volta dropped, pytorch/pytorch#172352);
    CUDA 13 itself no longer targets Volta. None when the tag names no CUDA version (nothing known,
    nothing filtered). The placement's hard filter and Vast's `compute_cap` search filter both use it."""
    cuda = image_cuda(image)
    if cuda is None:
        return None
    version = tuple(int(p) for p in cuda.split("."))
    if version < CUDA_FOR_BLACKWELL:
        return (0.0, 10.0)
    torch = image_torch(image)
    return (7.5 if version >= (13, 0) or (torch is not None and torch >= (2, 10)) else 7.0, math.inf)
