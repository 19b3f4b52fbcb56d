"""`bash bench/gpu.sh --smoke`: the one-command GPU benchmark's code on tiny models, on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_sh_smoke_writes_json_and_markdown(tmp_path):
    env = os.environ | {"GPU_BENCH_OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["bash", "bench/gpu.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    runs = report["train"]["runs"]
    assert {r["method"] for r in runs} == {"lora", "full"} and not report["failed"]
    assert all(r["tokens_per_s"] > 0 and r["job_tflops_per_gpu"] > 0 for r in runs)
    # each chunk it runs: the planner's VRAM need at that chunk, growing with it, beside what the job measured
    assert sorted((r["method"], r["mini_batch_size"]) for r in runs) == [("full", 2), ("full", 4), ("lora", 2), ("lora", 4)]
    planned = {(r["method"], r["mini_batch_size"]): r["planner_vram_gb"] for r in runs}
    assert all(v > 0 for v in planned.values()) and planned[("lora", 4)] >= planned[("lora", 2)]
    assert report["encode"]["runs"]
    markdown = (tmp_path / "gpu.md").read_text()
    assert "### Training" in markdown and "### Encoding" in markdown and "planner's VRAM estimate" in markdown
    assert "peak VRAM GiB: allocated / reserved" in markdown and "| lora | 4 | 2 |" in markdown
