"""Remote checkpoints rotate like local ones (issue 24): a store kept every checkpoint ever saved, one more
per save (a 4B bag's optimizer state alone is 32 GB), while the README promised two."""
from __future__ import annotations

import time

import fsspec
import torch

from jobs import storage
from jobs.checkpoint import CheckpointStore, step_name
from jobs.protocol import CHECKPOINTS_KEPT


def uploaded(uri: str, step: int) -> bool:
    latest = storage.join(uri, "LATEST")
    return storage.exists(latest) and storage.read_bytes(latest).decode() == step_name(step)


def test_a_remote_store_keeps_the_newest_checkpoints_like_the_local_directory(tmp_path):
    uri = f"memory://ckpt-rotation-{tmp_path.name}/job"
    store = CheckpointStore(uri, tmp_path / "cache")
    for step in (2, 4, 6, 8, 10):
        store.save(step, {"w": torch.full((4,), float(step))}, {"state": {}}, {"epoch": 0}, {"model": "x"},
                   {"step": step})
        deadline = time.monotonic() + 30  # each one uploaded before the next is saved (else the newest wins)
        while not uploaded(uri, step):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    store.flush()
    steps = sorted(name for name in storage.listing(uri) if name.startswith("step-"))
    assert steps == [step_name(8), step_name(10)] and CHECKPOINTS_KEPT == 2
    assert sorted(p.name for p in (tmp_path / "cache").rglob("step-*") if p.is_dir()) == steps
    resumed = CheckpointStore(uri, tmp_path / "fresh-cache").load()  # a new box resumes from the newest
    assert resumed.step == 10 and torch.equal(resumed.tensors["w"], torch.full((4,), 10.0))
    fsspec.filesystem("memory").rm(f"ckpt-rotation-{tmp_path.name}", recursive=True)
