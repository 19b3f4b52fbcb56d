"""bf16 training precision, the figures behind tests/test_train_precision.py: the weight change of 40
train-bag steps at lr 1e-5 on the tiny model in bf16 (compensated AdamW, and plain torch AdamW) against
the float32 run's, as cosine and norm ratio.

    .venv/bin/python bench/bench_precision.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.test_train_precision import delta_cosine, run  # noqa: E402
from tests.tiny import build_tiny_model, write_toy_corpus  # noqa: E402


def norm_ratio(a: dict, b: dict, base: dict) -> float:
    da = torch.cat([(a[k].float() - base[k].float()).flatten() for k in sorted(base)])
    db = torch.cat([(b[k].float() - base[k].float()).flatten() for k in sorted(base)])
    return float(da.norm() / db.norm())


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    model, corpus = build_tiny_model(work / "model"), write_toy_corpus(work / "train.jsonl")
    base = load_file(str(model / "model.safetensors"))
    reference = run(model, corpus, work / "float32", "--dtype", "float32")
    for name, extra in (("compensated bf16 AdamW (default)", ()), ("plain torch AdamW on bf16", ("--optimizer", "torch-adamw"))):
        bf16 = run(model, corpus, work / name.split()[0], "--dtype", "bfloat16", *extra)
        print(f"{name}: cosine {delta_cosine(bf16, reference, base):.4f}, "
              f"norm ratio {norm_ratio(bf16, reference, base):.3f} (against float32)")


if __name__ == "__main__":
    main()
