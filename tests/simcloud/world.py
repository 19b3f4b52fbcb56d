"""What a run on the simulated cloud sets up, shared by tests/test_simcloud.py and bench/cloud_drill.py:
the jobs wheel the boxes install, the price book the planner reads (the fakes' own asks and pods), the
planner settings that point at the fakes and the store, and the output weights as read back from it."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNPOD_KEY, VAST_KEY = "rp-sim-key-7f3a9c", "vast-sim-key-2b8e1d"
BILLING_TOLERANCE = {"rel": 0.05, "abs": 2e-4}  # settled dollars against what the fakes billed


def build_wheel(directory: Path) -> Path:
    """This checkout as a wheel (no dependencies: the box's image has them), what PLANNER_JOBS_INSTALL names."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(directory), str(ROOT)], check=True, timeout=300, capture_output=True)
    [built] = directory.glob("planner-*.whl")
    return built


def write_book(sessions) -> None:
    """A price book of exactly what the fakes rent: RunPod's community 4090 and secure A6000 pods, Vast's
    three asks (on-demand and interruptible, storage folded in as the refresh does)."""
    from pricing import store
    from pricing.offer import Offer

    def offer(provider, key, gpu, vram, on_demand, spot, tier):
        return Offer(provider=provider, offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=vram, gpu_count=1,
                     on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot, tier=tier, location="US",
                     available=True, fetched_at=store.utcnow(), reliability=0.99)

    with sessions() as session:
        store.write_snapshot(session, "runpod", store.utcnow(), [
            offer("runpod", "NVIDIA GeForce RTX 4090|community", "RTX4090", 24, 0.44, None, "community"),
            offer("runpod", "NVIDIA RTX A6000|secure", "A6000", 48, 0.79, None, "secure")])
        store.write_snapshot(session, "vast", store.utcnow(), [
            offer("vast", "101", "RTX4090", 24, 0.45 + 0.01, 0.30 + 0.01, "verified"),
            offer("vast", "102", "RTX4090", 24, 0.50 + 0.01, 0.35 + 0.01, "verified"),
            offer("vast", "103", "A6000", 48, 0.55 + 0.01, 0.33 + 0.01, "verified")])


def settings_overrides(*, db_url: str, runs_dir: Path, runpod, vast, storage_uri: str, wheel: Path,
                       **extra) -> dict:
    """The planner settings (but the API keys) for a run against these fakes: JSON-safe, so a supervisor in
    another process can load the same ones (`load_settings(**overrides)`, keys from its environment)."""
    return {"db_url": db_url, "runs_dir": str(runs_dir), "runpod_url": runpod.url, "vast_url": vast.url,
            "jobs_install": f"planner @ {wheel.as_uri()}", "storage_uri": storage_uri, "poll_interval_s": 0.3,
            "http_retry_wait_s": 0.01, "vast_min_interval_s": 0,
            "local_max_hours": 1e-9,  # auto: only the cloud
            **extra}


def keys() -> dict[str, str]:
    return {"RUNPOD_API_KEY": RUNPOD_KEY, "VAST_API_KEY": VAST_KEY}


def weights(output_uri: str) -> dict:
    """Every tensor of the output's .safetensors files, read through the store."""
    from safetensors.torch import load as load_safetensors

    from jobs import storage

    names = [n for n in storage.listing(output_uri) if str(n).endswith(".safetensors")]
    tensors = {}
    for name in sorted(names):
        tensors.update(load_safetensors(storage.read_bytes(storage.join(output_uri, Path(str(name)).name))))
    assert tensors, f"no weights at {output_uri}"
    return tensors


def weight_files(output_uri: str) -> dict[str, bytes]:
    """The output's .safetensors files as bytes, by name (for a bitwise comparison)."""
    from jobs import storage

    names = sorted(Path(str(n)).name for n in storage.listing(output_uri) if str(n).endswith(".safetensors"))
    return {name: storage.read_bytes(storage.join(output_uri, name)) for name in names}


def stop_fakes(*fakes) -> None:
    for fake in fakes:
        for box in list(fake.boxes.values()):
            box.stop("run over", wait=False)
        fake.close()


@contextmanager
def simulated_cloud(db_url: str, tmp_path: Path, monkeypatch, s3, wheel: Path, *, grace_s: float) -> Iterator[tuple]:
    """(settings, sessions, runpod, vast): both fakes (a box stopped gets SIGTERM, SIGKILL `grace_s` later),
    the store's keys in the lab's shell (this machine reaches the store with them), planner settings that
    point at all of them, and the price book written; the fakes stopped afterwards."""
    from planner.config import load_settings
    from pricing.db import session_factory
    from tests.simcloud.runpod import FakeRunPod
    from tests.simcloud.vast import FakeVast

    boxes = tmp_path / "boxes"
    runpod, vast = FakeRunPod(RUNPOD_KEY, boxes, grace_s=grace_s), FakeVast(VAST_KEY, boxes, grace_s=grace_s)
    try:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        settings = load_settings(runpod_api_key=RUNPOD_KEY, vast_api_key=VAST_KEY, **settings_overrides(
            db_url=db_url, runs_dir=tmp_path / "runs", runpod=runpod, vast=vast,
            storage_uri=f"s3://{s3.bucket()}/planner", wheel=wheel))
        sessions = session_factory(db_url)
        write_book(sessions)
        yield settings, sessions, runpod, vast
    finally:
        stop_fakes(runpod, vast)
