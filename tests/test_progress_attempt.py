"""A progress file outlives its attempt (it sits beside the checkpoints, one per job): the next attempt, perhaps
on another card, must not be credited with the last one's throughput or memory until it reports its own."""
from __future__ import annotations

import json

import torch

from jobs.checkpoint import CheckpointStore
from jobs.protocol import ATTEMPT_ENV, PROGRESS_FILE
from jobs.spec import JobSpec
from planner.records import Attempt, Job
from planner.run.supervisor import Supervisor
from pricing.db import session_factory


def test_the_runner_stamps_its_attempt_on_every_progress_report(tmp_path, monkeypatch):
    monkeypatch.setenv(ATTEMPT_ENV, "3")
    store = CheckpointStore(str(tmp_path / "ckpt"), tmp_path / "cache")
    store.report_progress({"step": 1})
    assert json.loads((tmp_path / "ckpt" / PROGRESS_FILE).read_text()) == {"step": 1, "attempt": 3}
    store.save(2, {"w": torch.zeros(2)}, {"state": {}}, {}, {"model": "x"}, {"step": 2})
    assert json.loads((tmp_path / "ckpt" / PROGRESS_FILE).read_text())["attempt"] == 3


def test_the_last_attempts_figures_are_not_this_attempts(tmp_path, db_url):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    spec = JobSpec("bag", "train-bag", str(tmp_path / "out"), {"fraction": 0.2}, checkpoint_uri=str(checkpoint))
    job = Job(id="bag", spec=spec.to_json())
    (checkpoint / PROGRESS_FILE).write_text(json.dumps({"step": 5, "total_steps": 10, "tflops_per_gpu": 1.5,
                                                       "attempt": 1}))
    supervisor = Supervisor(session_factory(db_url), {}, lambda *args: None)
    second = Attempt(job_id="bag", number=2)
    supervisor._read_progress(job, second)
    assert json.loads(second.progress)["step"] == 5  # where the job is still shows
    assert second.measured_tflops is None
    first = Attempt(job_id="bag", number=1)
    supervisor._read_progress(job, first)
    assert first.measured_tflops == 1.5
