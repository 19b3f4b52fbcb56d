"""`python -m jobs.merge` against `mergekit-yaml` (0.1.5): the same Multi-SLERP config, side by side.

    .venv/bin/python bench/bench_merge.py [--mergekit bench/.venv-mergekit/bin/mergekit-yaml]

Writes five random Qwen3 embedders (float32, tied embeddings) that look like fine-tunes of one base
(base + small noise), merges them with the BOOM weights on the CPU, each tool as its own process
under /usr/bin/time, and reports wall time, peak RSS and the largest absolute differences:

1. ~250 M parameters (1 GB) per model: our merge against mergekit with `dtype: float32`, as in the
   BOOM card, both compared with a float64 evaluation of mergekit's steps done here tensor by tensor.
2. ~90 M parameters (0.36 GB) per model: our merge against mergekit computing in float64
   (`dtype: float64, out_dtype: float32`), which is mergekit's own exact answer; at 1 GB per model
   that run needs more than the 24 GB of RAM this box has.

Our peak RSS at the two sizes, fitted linearly in the largest tensor, is extrapolated to five
Qwen3-4B models (16 GB each in float32). Prints Markdown; the models are deleted afterwards.
mergekit lives in its own venv so it cannot disturb ours:
    python3 -m venv bench/.venv-mergekit && bench/.venv-mergekit/bin/pip install torch==2.13.0 mergekit==0.1.5
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = [0.2, 0.4, 0.6, 0.8, 1.0]  # the BOOM bagging recipe
QWEN3 = dict(vocab_size=151936, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6)
SIZES = {  # name -> Qwen3 config overrides
    "250M": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=6),
    "90M": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64),
}
QWEN3_4B_LARGEST = 151936 * 2560 * 4  # bytes of Qwen3-4B's embedding matrix in float32, its largest tensor


def write_models(directory: Path, size: str, count: int = len(WEIGHTS)) -> tuple[list[Path], int]:
    """`count` models = one random base + independent noise; returns their paths and the largest tensor's bytes."""
    from transformers import AutoModel, Qwen3Config

    config = Qwen3Config(**{**QWEN3, **SIZES[size]})
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in AutoModel.from_config(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    base = {name: torch.ones(shape) if name.endswith("norm.weight") else 0.02 * torch.randn(shape, generator=generator)
            for name, shape in shapes.items()}
    paths = []
    for i in range(count):
        path = directory / f"{size}-bag{i}"
        path.mkdir(parents=True, exist_ok=True)
        save_file({name: t + 0.002 * torch.randn(t.shape, generator=generator) for name, t in base.items()},
                  path / "model.safetensors", metadata={"format": "pt"})
        config.architectures = ["Qwen3Model"]
        config.save_pretrained(path)
        paths.append(path)
    return paths, max(t.numel() * 4 for t in base.values())


def write_config(path: Path, models: list[Path], **dtypes: str) -> Path:
    lines = ["merge_method: multislerp", *(f"{k}: {v}" for k, v in dtypes.items()), "models:"]
    lines += [f"  - model: {m}\n    parameters: {{weight: {w}}}" for m, w in zip(models, WEIGHTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(command: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (GB) of one process, as GNU time sees them."""
    stats = log.with_suffix(".time")
    with open(log, "wb") as out:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *command],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed; see {log}")
    seconds, kilobytes = stats.read_text().split()[-2:]
    return {"seconds": float(seconds), "peak_rss_gb": int(kilobytes) * 1024 / 1e9}


def tensor_files(directory: Path) -> dict[str, Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return {n: directory / f for n, f in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return dict.fromkeys(handle.keys(), directory / "model.safetensors")


def reference_multislerp(tensors: list[torch.Tensor], weights: list[float], eps: float = 1e-8) -> torch.Tensor:
    """mergekit's steps (unit vectors, tangent projection at the mean, exponential map) in float64, model by model."""
    w = [x / sum(weights) for x in weights]
    norms = [t.double().norm().item() for t in tensors]
    mean = sum(wi * t.double().flatten() / (n + eps) for wi, t, n in zip(w, tensors, norms))
    mean = mean / mean.norm()
    tangent = torch.zeros_like(mean)
    for wi, t, n in zip(w, tensors, norms):
        unit = t.double().flatten() / (n + eps)
        tangent += wi * (unit - (unit @ mean) * mean)
    length = tangent.norm() + eps
    merged = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    return (merged * sum(wi * n for wi, n in zip(w, norms))).view(tensors[0].shape)


def max_abs_differences(outputs: dict[str, Path], models: list[Path], with_reference: bool) -> dict[str, float]:
    """The largest |a - b| over all tensors: the outputs against each other (and the float64 reference)."""
    files = {label: tensor_files(path) for label, path in outputs.items()}
    inputs = [tensor_files(m) for m in models]
    pairs = [tuple(outputs)] + ([(label, "float64 reference") for label in outputs] if with_reference else [])
    worst = dict.fromkeys([f"{a} vs {b}" for a, b in pairs], 0.0)
    for name in sorted(files[next(iter(files))]):
        tensors = {label: _read(f[name], name).double() for label, f in files.items()}
        if with_reference:
            tensors["float64 reference"] = reference_multislerp([_read(f[name], name) for f in inputs], WEIGHTS)
        for a, b in pairs:
            worst[f"{a} vs {b}"] = max(worst[f"{a} vs {b}"], (tensors[a] - tensors[b]).abs().max().item())
    return worst


def compare(work: Path, mergekit: Path, size: str, mergekit_dtypes: dict, with_reference: bool) -> dict:
    """Both tools on five models of `size`: their runs, the output differences, the largest tensor."""
    models, largest = write_models(work, size)
    mergekit_label = f"mergekit {mergekit_dtypes['dtype']}"
    ours_config = write_config(work / f"{size}-ours.yaml", models, dtype="float32")
    runs = {
        "jobs.merge": measure([sys.executable, "-m", "jobs.merge", "--config", str(ours_config),
                               "--output", str(work / f"{size}-ours")], work / f"{size}-ours.log"),
        mergekit_label: measure([str(mergekit), str(write_config(work / f"{size}-mk.yaml", models, **mergekit_dtypes)),
                                 str(work / f"{size}-mk")], work / f"{size}-mk.log"),
    }
    outputs = {"jobs.merge": work / f"{size}-ours", mergekit_label: work / f"{size}-mk"}
    result = {"size": size, "model_gb": sum(f.stat().st_size for f in models[0].glob("*.safetensors")) / 1e9,
              "largest_gb": largest / 1e9, "runs": runs,
              "differences": max_abs_differences(outputs, models, with_reference)}
    for path in [*models, *outputs.values()]:
        shutil.rmtree(path)
    return result


def _read(file: Path, name: str) -> torch.Tensor:
    with safe_open(file, framework="pt") as handle:
        return handle.get_tensor(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mergekit", type=Path, default=ROOT / "bench/.venv-mergekit/bin/mergekit-yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "bench/out/merge")
    args = parser.parse_args()
    if not args.mergekit.exists():
        sys.exit(f"{args.mergekit} not found; create it as the module docstring says")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    big = compare(args.work, args.mergekit, "250M", {"dtype": "float32"}, with_reference=True)
    small = compare(args.work, args.mergekit, "90M", {"dtype": "float64", "out_dtype": "float32"},
                    with_reference=False)

    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, five models merged with weights {WEIGHTS}\n")
    print("| models | run | wall s | peak RSS GB |\n|---|---|---:|---:|")
    for result in (big, small):
        for name, run in result["runs"].items():
            print(f"| 5 x {result['model_gb']:.2f} GB | {name} | {run['seconds']:.1f} | {run['peak_rss_gb']:.2f} |")
    ours, theirs = big["runs"]["jobs.merge"], big["runs"]["mergekit float32"]
    print(f"\nAt 5 x {big['model_gb']:.2f} GB, jobs.merge / mergekit float32: wall time "
          f"{ours['seconds'] / theirs['seconds']:.2f}, peak RSS {ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f}\n")
    print("| models | outputs compared | max abs difference |\n|---|---|---:|")
    for result in (big, small):
        for name, value in result["differences"].items():
            print(f"| 5 x {result['model_gb']:.2f} GB | {name} | {value:.2e} |")

    # peak RSS = fixed + slope x largest tensor, through the two measured sizes
    rss = {r["largest_gb"]: r["runs"]["jobs.merge"]["peak_rss_gb"] for r in (small, big)}
    (x0, y0), (x1, y1) = sorted(rss.items())
    slope = (y1 - y0) / (x1 - x0)
    fixed = y0 - slope * x0
    print("\n| models | largest tensor GB | jobs.merge peak RSS GB |\n|---|---:|---:|")
    for result in (small, big):
        print(f"| 5 x {result['model_gb']:.2f} GB | {result['largest_gb']:.3f} | "
              f"{result['runs']['jobs.merge']['peak_rss_gb']:.2f} |")
    print(f"| 5 x 16 GB (Qwen3-4B), extrapolated | {QWEN3_4B_LARGEST / 1e9:.3f} | "
          f"{fixed + slope * QWEN3_4B_LARGEST / 1e9:.2f} |")
    print(f"\npeak RSS ~ {fixed:.2f} GB + {slope:.2f} x largest tensor")
    shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
