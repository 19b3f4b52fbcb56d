"""A stand-in runner that runs out of memory on purpose (issue 23's injected OOM), no model.

Run as a script by the local backend (`oom_local`) in place of `python -m jobs.run`. It reads its JobSpec
like jobs.run and goes through jobs.lifecycle.run_job, so CUDA's out-of-memory error is the runner's own
path: with `{"gpu_above_chunk": N}` in oom.json beside its checkpoints, a chunk (mini_batch_size, default
jobs.recipe.DEFAULT_MINI_BATCH) above N raises torch.OutOfMemoryError as a CUDA allocation would; with
`{"host": true}` it SIGKILLs itself as the kernel's OOM killer would. Otherwise it reports its memory
(jobs.memory) in progress.json and DONE and writes DONE.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def body(stop) -> int:
    import torch

    from jobs import memory, recipe

    spec = json.loads(os.environ["PLANNER_JOB_SPEC"])
    checkpoint, output = Path(spec["checkpoint_uri"]), Path(spec["output_uri"])
    checkpoint.mkdir(parents=True, exist_ok=True)
    chunk = int(spec["params"].get("mini_batch_size") or recipe.DEFAULT_MINI_BATCH)
    print(f"chunk {chunk}", flush=True)
    rules = json.loads((checkpoint / "oom.json").read_text()) if (checkpoint / "oom.json").exists() else {}
    if rules.get("host"):
        os.kill(os.getpid(), signal.SIGKILL)
    if chunk > rules.get("gpu_above_chunk", chunk):
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {chunk * 512} MiB (chunk {chunk})")
    used = {"memory": {"ranks": [memory.usage() | {"peak_vram_allocated_gb": 0.5 * chunk,
                                                   "peak_vram_reserved_gb": 0.6 * chunk}]}}
    (checkpoint / "progress.json").write_text(json.dumps({"step": 1, "total_steps": 1} | used))
    output.mkdir(parents=True, exist_ok=True)
    (output / "DONE").write_text(json.dumps(used))
    return 0


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.lifecycle import run_job

    return run_job(body, "rerun to resume")


def oom_local(runs_dir):
    """The local backend, running this script instead of `python -m jobs.run`."""
    from dataclasses import replace

    from planner.run.backends.local import LocalBackend

    class OomLocal(LocalBackend):
        def plan(self, spec, offer, **kwargs):
            return replace(super().plan(spec, offer, **kwargs), command=(sys.executable, str(Path(__file__).resolve())))

    return OomLocal(runs_dir)


if __name__ == "__main__":
    raise SystemExit(main())
