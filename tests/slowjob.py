"""A stand-in runner whose speed depends on the card it runs on (issue 23's slow attempt), no model.

Run as a script by `slow_backend` in place of `python -m jobs.run`, with the offer's GPU model as its
argument. It goes through jobs.lifecycle.run_job like the real runner: it resumes from the step its
progress file says was checkpointed, reports one more step checkpointed with `tflops_per_gpu` from
speeds.json beside its checkpoints ({"tflops": {gpu model: TFLOP/s}, "finish_after_s": {gpu model: s}}),
then works until SIGTERM (it saved: exit 75) or, on a GPU model with a `finish_after_s`, until that has
passed, when it writes DONE and exits 0 (elsewhere it gives up after MAX_SECONDS: exit 1).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TOTAL_STEPS = 1000
MAX_SECONDS = 60.0


def body(stop) -> int:
    from jobs.protocol import stamped

    spec = json.loads(os.environ["PLANNER_JOB_SPEC"])
    checkpoint, output = Path(spec["checkpoint_uri"]), Path(spec["output_uri"])
    checkpoint.mkdir(parents=True, exist_ok=True)
    rules = json.loads((checkpoint / "speeds.json").read_text())
    progress = checkpoint / "progress.json"
    step = (json.loads(progress.read_text()).get("checkpoint_step", 0) if progress.exists() else 0) + 1
    gpu = sys.argv[1]
    print(f"on {gpu}, resuming at step {step - 1}", flush=True)
    progress.write_text(json.dumps(stamped({"step": step, "total_steps": TOTAL_STEPS, "checkpoint_step": step,
                                            "tflops_per_gpu": rules["tflops"][gpu]})))
    finish = time.monotonic() + rules["finish_after_s"].get(gpu, MAX_SECONDS)
    while time.monotonic() < finish:
        stop.check()
        time.sleep(0.02)
    if gpu not in rules["finish_after_s"]:
        return 1
    output.mkdir(parents=True, exist_ok=True)
    (output / "DONE").write_text(json.dumps({"tflops_per_gpu": rules["tflops"][gpu]}))
    return 0


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.lifecycle import run_job

    return run_job(body, "rerun to resume")


def slow_backend(runs_dir, name: str):
    """The local backend under a provider's name, running this script on the offer's GPU model."""
    from dataclasses import replace

    from planner.run.backends.local import LocalBackend

    class SlowLocal(LocalBackend):
        def plan(self, spec, offer, **kwargs):
            return replace(super().plan(spec, offer, **kwargs),
                           command=(sys.executable, str(Path(__file__).resolve()), offer.gpu_model))

    backend = SlowLocal(runs_dir)
    backend.name = name
    return backend


if __name__ == "__main__":
    sys.exit(main())
