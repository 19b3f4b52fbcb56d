"""Training checkpoints that survive kill -9 at any instant and move between machines.

Layout under the checkpoint URI (a local path, or an fsspec URL mirrored from a local staging dir):

    step-000040/trainable.safetensors   the trained tensors (all weights, or the LoRA adapter)
    step-000040/optimizer.pt            AdamW state
    step-000040/state.pt                scheduler, every RNG state, step, tokens seen, loss
    step-000040/identity.json           what run this is (model, data, bag hash, hyper-parameters)
    progress.json                       {step, total_steps, tokens_seen, loss, wall} for the planner
    LATEST                              the name of the newest complete step directory (written last)

A step directory is written under a temporary name and renamed, then LATEST is replaced atomically,
so a kill leaves LATEST naming a complete directory (old or new), never a torn one. For a remote URI
the same files are written locally first and a background thread uploads them, LATEST last, so
training never waits on the network; a fresh machine resumes from whatever the remote LATEST names.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jobs import storage
from jobs.protocol import CHECKPOINTS_KEPT, PROGRESS_FILE, progress_uri, stamped

LATEST = "LATEST"
FILES = ("trainable.safetensors", "optimizer.pt", "state.pt", "identity.json")


@dataclass
class Loaded:
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    state: dict
    identity: dict


def step_name(step: int) -> str:
    return f"step-{step:06d}"


class CheckpointStore:
    def __init__(self, uri: str, cache_dir: Path):
        self.uri = uri
        if storage.is_remote(uri):
            self.local = Path(cache_dir) / "checkpoints" / storage.short_digest(uri)
            self._uploads: queue.Queue[str | None] = queue.Queue()
            self._upload_error: BaseException | None = None
            self._uploader = threading.Thread(target=self._upload_loop, name="checkpoint-upload", daemon=True)
            self._uploader.start()
        else:
            self.local = storage.local_path(uri)
            self._uploader = None

    # --- writing ---------------------------------------------------------------------------------

    def save(self, step: int, tensors: dict[str, torch.Tensor], optimizer: dict, state: dict, identity: dict,
             progress: dict) -> int:
        """Write checkpoint `step` atomically; returns its size in bytes."""
        self.local.mkdir(parents=True, exist_ok=True)
        final = self.local / step_name(step)
        tmp = self.local / f".{step_name(step)}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(tmp / FILES[0]))
        torch.save(optimizer, tmp / FILES[1])
        torch.save(state, tmp / FILES[2])
        (tmp / FILES[3]).write_text(json.dumps(identity, sort_keys=True, indent=2))
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():  # left by an attempt killed after the rename but before LATEST moved
            shutil.rmtree(final)
        os.replace(tmp, final)
        storage.write_json_atomic(self.local / PROGRESS_FILE, stamped(progress))
        storage.write_bytes_atomic(self.local / LATEST, step_name(step).encode())
        self._prune(keep=step_name(step))
        if self._uploader is not None:
            if self._upload_error is not None:  # the newer checkpoint queued now supersedes the failed one
                print(f"warning: uploading a checkpoint to {self.uri} failed ({self._upload_error}); retrying with "
                      "this one", file=sys.stderr)
                self._upload_error = None
            self._uploads.put(step_name(step))
        return sum(f.stat().st_size for f in final.iterdir())

    def report_progress(self, progress: dict) -> None:
        """Between checkpoints: the progress file alone (a few hundred bytes), so people and the planner
        see where the job is; `checkpoint_step` says what a resume would restart from."""
        self.local.mkdir(parents=True, exist_ok=True)
        storage.write_json_atomic(self.local / PROGRESS_FILE, stamped(progress))
        if self._uploader is not None:
            try:
                storage.write_bytes_atomic(progress_uri(self.uri), (self.local / PROGRESS_FILE).read_bytes())
            except Exception as exc:  # the store is briefly unreachable: the next report or save catches up
                print(f"warning: could not write progress to {self.uri}: {exc}", file=sys.stderr)

    def _prune(self, keep: str) -> None:
        steps = sorted(p for p in self.local.glob("step-*") if p.is_dir())
        for old in steps[:-CHECKPOINTS_KEPT]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.local.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _upload_loop(self) -> None:
        finished = False
        while not finished:
            names = [self._uploads.get()]
            while not self._uploads.empty():  # newer checkpoints queued meanwhile: upload only the newest
                names.append(self._uploads.get())
            finished = None in names
            if newest := [n for n in names if n is not None][-1:]:
                self._upload(newest[0])

    def _upload(self, name: str) -> None:
        try:
            storage.upload_tree(self.local / name, storage.join(self.uri, name))
            storage.write_bytes_atomic(progress_uri(self.uri), (self.local / PROGRESS_FILE).read_bytes())
            storage.write_bytes_atomic(storage.join(self.uri, LATEST), name.encode())
        except Exception as exc:  # reported on the next save or at flush
            self._upload_error = exc
            return
        self._prune_remote(keep=name)

    def _prune_remote(self, keep: str) -> None:
        """The store keeps what the local directory keeps (CHECKPOINTS_KEPT newest), once LATEST names the new
        one: only steps older than it go, so a resume reading LATEST or the one before never loses its files."""
        try:
            steps = sorted(n for n in storage.listing(self.uri) if n.startswith("step-") and n[5:].isdigit())
            for old in steps[:-CHECKPOINTS_KEPT]:
                if old < keep:
                    storage.remove_tree(storage.join(self.uri, old))
        except Exception as exc:  # a store that refuses deletes costs space, not the checkpoint: say so, go on
            print(f"warning: could not remove old checkpoints under {self.uri}: {exc}", file=sys.stderr)

    def _raise_upload_error(self) -> None:
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            raise OSError(f"uploading the checkpoint to {self.uri} failed: {error}")

    def flush(self) -> None:
        """Wait for pending uploads (end of training, before DONE)."""
        if self._uploader is not None:
            self._uploads.put(None)
            self._uploader.join()
            self._raise_upload_error()

    # --- reading ---------------------------------------------------------------------------------

    def latest_step(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint, local or remote, downloaded to the staging dir if needed."""
        local = _read_latest(self.local / LATEST)
        if self._uploader is None:
            return (local, self.local / step_name(local)) if local is not None else None
        remote = _read_latest(storage.join(self.uri, LATEST))
        if remote is not None and (local is None or remote > local):
            target = self.local / step_name(remote)
            for name in FILES:
                storage.write_bytes_atomic(target / name, storage.read_bytes(storage.join(self.uri, step_name(remote), name)))
            return remote, target
        return (local, self.local / step_name(local)) if local is not None else None

    def load(self) -> Loaded | None:
        found = self.latest_step()
        if found is None:
            return None
        step, directory = found
        return Loaded(
            step=step,
            tensors=load_file(str(directory / FILES[0])),
            optimizer=torch.load(directory / FILES[1], weights_only=True),
            state=torch.load(directory / FILES[2], weights_only=True),
            identity=json.loads((directory / FILES[3]).read_text()),
        )

    def remove(self) -> None:
        """Delete the local checkpoints once the job's output is final (a 4B bag's optimizer state is 32 GB)."""
        shutil.rmtree(self.local, ignore_errors=True)


def _read_latest(uri) -> int | None:
    if not storage.exists(uri):
        return None
    name = storage.read_bytes(uri).decode().strip()
    return int(name.removeprefix("step-"))


def rng_state() -> dict:
    import random

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
