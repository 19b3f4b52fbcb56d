"""Out of memory is its own outcome (issue 23): on the local backend, a runner that raises CUDA's
out-of-memory error (tests/oomjob.py, through jobs.lifecycle) is relaunched with a smaller chunk, never
the same (GPU, chunk) twice, and one the host's OOM killer ends is never put back on that much RAM;
`jobs show` says so, and an attempt keeps what was planned and what the job measured."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

pytest.importorskip("torch")

from jobs import memory as job_memory  # noqa: E402
from jobs.spec import JobSpec  # noqa: E402
from planner.config import load_settings  # noqa: E402
from planner.plan import memory  # noqa: E402
from planner.plan.budget import Ledger  # noqa: E402
from planner.plan.campaigns import NewJob  # noqa: E402
from planner.plan.plans import Placer  # noqa: E402
from planner.records import Attempt, Job  # noqa: E402
from planner.run.launching import JobOptions, add_jobs, run_until_final  # noqa: E402
from planner.run.supervisor import Supervisor  # noqa: E402
from pricing.db import session_factory, utcnow  # noqa: E402
from pricing.offer import Offer  # noqa: E402
from tests.oomjob import oom_local  # noqa: E402

GPU_BOX = dict(provider="local", offer_key="local", gpu_model="RTX4090", gpu_name_raw="NVIDIA GeForce RTX 4090",
               vram_gb=24.0, gpu_count=1, on_demand_usd_per_gpu_hour=0.0, spot_usd_per_gpu_hour=None, tier="local",
               location="localhost", available=True, vcpus=8.0, ram_gb=64.0)


def test_the_exit_codes_agree():
    from jobs import protocol

    assert memory.EXIT_OUT_OF_MEMORY == job_memory.EXIT_OUT_OF_MEMORY
    assert memory.EXIT_OUT_OF_MEMORY is protocol.EXIT_OUT_OF_MEMORY == 3  # declared once, in jobs.protocol
    assert len({protocol.EXIT_DONE, protocol.EXIT_BAD_INPUT, protocol.EXIT_OUT_OF_MEMORY, protocol.EXIT_INTERRUPTED}) == 4
    assert memory.out_of_memory(3) and memory.out_of_memory(137) and memory.out_of_memory(1) is None


def test_the_runner_turns_cuda_oom_into_its_exit_code(capsys):
    import torch

    from jobs.lifecycle import run_job

    def body(stop):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    assert run_job(body, "rerun") == job_memory.EXIT_OUT_OF_MEMORY
    assert capsys.readouterr().err.strip() == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    with pytest.raises(ValueError):  # anything else still crashes with its traceback
        run_job(lambda stop: (_ for _ in ()).throw(ValueError("boom")), "rerun")


@pytest.fixture
def world(tmp_path, db_url, tiny_model_dir, toy_corpus):
    settings = load_settings(runs_dir=tmp_path / "runs", poll_interval_s=0.05)
    sessions = session_factory(db_url)
    backends = {"local": oom_local(settings.runs_dir)}

    def supervisor(ram_gb: float = 64.0) -> Supervisor:
        offer = Offer(**{**GPU_BOX, "ram_gb": ram_gb}, fetched_at=utcnow())
        return Supervisor(sessions, backends, Placer(settings, backends, offer), budget=Ledger(),
                          poll_interval_s=0.05, cooldown=timedelta(0))

    def add(rules: dict) -> JobSpec:
        spec = JobSpec("bag", "train-bag", str(tmp_path / "out"), {"model": str(tiny_model_dir),
                                                                  "data": str(toy_corpus), "fraction": 1.0, "seed": 0},
                       checkpoint_uri=str(tmp_path / "ckpt"))
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "oom.json").write_text(json.dumps(rules))
        with sessions() as session:
            add_jobs(session, [NewJob("bag", spec)], JobOptions(backend="local", max_failures=1))
            session.commit()
        return spec

    return sessions, supervisor, add


def attempts(sessions, job_id="bag"):
    with sessions() as session:
        return session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)).all()


def test_cuda_oom_relaunches_with_a_smaller_chunk_never_the_same_twice(world, cli):
    sessions, supervisor, add = world
    add({"gpu_above_chunk": 8})
    states = run_until_final(supervisor(), ["bag"], interval_s=0.05, timeout_s=120)
    assert states == {"bag": "succeeded"}
    tried = attempts(sessions)
    assert [(a.outcome, a.gpu_model, a.mini_batch_size) for a in tried] == [
        ("out-of-memory", "RTX4090", 32), ("out-of-memory", "RTX4090", 16), ("succeeded", "RTX4090", 8)]
    assert len({(a.gpu_model, a.mini_batch_size) for a in tried}) == len(tried)
    assert tried[0].exit_code == job_memory.EXIT_OUT_OF_MEMORY and "out of GPU memory" in tried[0].detail
    assert "at chunk 32" in tried[0].detail and "CUDA out of memory. Tried to allocate" in tried[0].detail
    last = tried[-1]  # planned at its chunk, and what the job reported
    assert last.planned_vram_gb > 0 and last.planned_ram_gb > 0 and last.ram_gb == 64.0
    assert last.peak_vram_reserved_gb == pytest.approx(4.8) and last.peak_rss_gb > 0
    shown = cli("jobs", "show", "bag").stdout
    assert "attempt 1: local RTX4090" in shown and "out-of-memory exit 3" in shown
    assert "out of GPU memory (exit 3: CUDA out of memory) on 1x RTX4090 at chunk 32" in shown
    assert f"memory: chunk 8; VRAM planned {last.planned_vram_gb:.1f} GB, used 4.8 GB reserved (4.0 GB allocated)" \
        in shown
    as_json = json.loads(cli("jobs", "show", "bag", "--json").stdout)["jobs"][0]["attempts"]
    assert [a["memory"]["mini_batch_size"] for a in as_json] == [32, 16, 8]


def test_the_host_oom_killer_is_never_met_on_that_much_ram_again(world):
    sessions, supervisor, add = world
    add({"host": True})
    states = run_until_final(supervisor(ram_gb=64.0), ["bag"], interval_s=0.05, timeout_s=120)
    assert states == {"bag": "failed"}  # this machine was the only offer, and it has no more RAM
    (only,) = attempts(sessions)
    assert only.outcome == "out-of-memory" and only.exit_code == 137 and "OOM killer" in only.detail
    with sessions() as session:
        error = session.get(Job, "bag").error
    assert "ran out of memory before" in error
