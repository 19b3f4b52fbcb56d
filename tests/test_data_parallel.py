"""Every GPU of an offer: on a 2-GPU local machine (PLANNER_LOCAL_GPUS=2; CPU ranks over gloo here)
the supervisor places train-bag on both, jobs.run starts two ranks, and the attempt records the
throughput the planner learns from."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from jobs import storage
from planner.config import load_settings
from planner.plan import campaigns
from planner.records import Attempt, Job
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor, run_until_final
from pricing.db import session_factory


def test_a_bag_runs_on_both_local_gpus_through_the_supervisor(db_url, tmp_path, tiny_model_dir, toy_corpus):
    settings = load_settings(db_url=db_url, runs_dir=tmp_path / "runs", poll_interval_s=0.2, local_gpus=2)
    sessions = session_factory(db_url)
    job = campaigns.train_bag_job(settings, model=str(tiny_model_dir), data=str(toy_corpus), fraction=0.5, seed=3,
                                  method="full", extra={"batch_size": 6, "max_steps": 4, "lr": 1e-3})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="local"))
    states = run_until_final(build_supervisor(settings, sessions), [job.spec.job_id], interval_s=0.1, timeout_s=300)
    assert states == {job.spec.job_id: "succeeded"}
    done = json.loads(storage.read_bytes(storage.join(job.spec.output_uri, "DONE")))
    assert done["gpus"] == 2 and done["steps"] == 4
    with sessions() as session:
        (attempt,) = attempts_of(session, job.spec.job_id)
        assert attempt.gpu_count == 2 and attempt.measured_tflops and attempt.measured_tflops > 0
        assert json.loads(session.get(Job, job.spec.job_id).requirements)["ranks"] == 2
        assert isinstance(attempt, Attempt)


def test_a_rank_leaves_with_its_code_and_its_output_flushed_without_finalization():
    """jobs.distributed.leave: a rank of a multi-rank run exits with its code, streams flushed, and skips the
    interpreter's finalization (where gloo's threads can abort a finished rank; an atexit hook stands for it).
    A single process returns the code and finalizes as usual."""
    script = ("import atexit, sys; from jobs.distributed import leave\n"
              "atexit.register(lambda: print('finalized'))\n"
              "print('trained', end=''); sys.stderr.write('saved')\n"
              "raise SystemExit(leave(75))\n")
    for world, finalized in (("2", False), ("1", True)):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "WORLD_SIZE": world})
        assert run.returncode == 75 and run.stderr.endswith("saved")
        assert run.stdout.startswith("trained") and ("finalized" in run.stdout) == finalized
