"""A stand-in runner for tests of what people watch (progress, logs, cancel): no torch, ten steps.

Run as a script by `ScriptedLocal` (the local backend with this command instead of jobs.run). It
reads its JobSpec from the environment like jobs.run, writes `progress.json` beside its checkpoints
after every step the way jobs.train_bag does, logs one line per step, and writes DONE at the end.
With a file `gate` in the checkpoint directory it only runs as many steps as the file's number says,
so a test can move it forward; SIGTERM exits 75 (resumable).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

TOTAL = 10


def main() -> int:
    spec = json.loads(os.environ["PLANNER_JOB_SPEC"])
    checkpoint, output = Path(spec["checkpoint_uri"]), Path(spec["output_uri"])
    checkpoint.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
    print(f"env TQDM_DISABLE={os.environ.get('TQDM_DISABLE')} "
          f"HF_HUB_DISABLE_PROGRESS_BARS={os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS')}", flush=True)
    started = time.monotonic()
    step = 0
    while step < TOTAL:
        gate = checkpoint / "gate"
        allowed = int(gate.read_text() or 0) if gate.exists() else TOTAL
        if step >= allowed:
            time.sleep(0.05)
            continue
        step += 1
        wall = time.monotonic() - started
        progress = {"step": step, "total_steps": TOTAL, "tokens_seen": 1000 * step, "loss": 1.0 / step,
                    "wall": wall, "tokens_per_s": 1000 * step / max(wall, 1e-3),
                    "eta_s": 2.0 * (TOTAL - step)}
        tmp = checkpoint / "progress.json.tmp"
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, checkpoint / "progress.json")
        print(f"step {step}/{TOTAL} loss {progress['loss']:.4f} ETA 0:00:{2 * (TOTAL - step):02d}", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "DONE").write_text("{}")
    print("done", flush=True)
    return 0


def scripted_local(runs_dir):
    """The local backend, running this script instead of `python -m jobs.run`."""
    from dataclasses import replace

    from planner.run.backends.local import LocalBackend

    class ScriptedLocal(LocalBackend):
        def plan(self, spec, offer, **kwargs):
            return replace(super().plan(spec, offer, **kwargs), command=(sys.executable, str(Path(__file__).resolve())))

    return ScriptedLocal(runs_dir)


def add_fake_job(settings, sessions, model_dir, corpus, *, budget_usd=None, campaign=None, name="fake run"):
    """A job row whose spec plans like an evaluation of `model_dir` and has a checkpoint directory."""
    from dataclasses import replace

    from planner.plan import campaigns
    from planner.run.launching import JobOptions, add_jobs

    item = campaigns.evaluate_job(settings, "fake", str(model_dir), str(corpus), ())
    spec = replace(item.spec, checkpoint_uri=str(Path(item.spec.output_uri).parent / "checkpoint"))
    item = replace(item, spec=spec, name=name)
    with sessions() as session:
        add_jobs(session, [item], JobOptions(backend="local", budget_usd=budget_usd), campaign)
    return spec


def open_gate(spec, steps: int) -> None:
    gate = Path(spec.checkpoint_uri) / "gate"
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.write_text(str(steps))


if __name__ == "__main__":
    raise SystemExit(main())
