"""Data parallelism for the jobs under torchrun: the few collectives they need, and nothing for one process.

`torchrun --nproc_per_node N -m jobs.train_bag ...` starts N copies with RANK, WORLD_SIZE and
LOCAL_RANK set; each takes GPU LOCAL_RANK (NCCL) or, without GPUs, the CPU (gloo). A plain run is a
group of one whose collectives return their input, so single-process code paths stay unchanged.
"""
from __future__ import annotations

import logging
import os
import sys

import torch

BUCKET_ELEMENTS = 1 << 26  # gradients are summed in buckets of this many elements (256 MB in fp32)


class Ranks:
    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self) -> str | None:
        """The device this rank uses (None: the default choice)."""
        return f"cuda:{self.local_rank}" if self.world > 1 and torch.cuda.is_available() else None

    def gather_rows(self, local: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Every rank's rows concatenated in rank order, and each rank's row count. The local slice keeps
        its autograd graph, so each rank back-propagates through its own rows of a loss over all rows."""
        if self.world == 1:
            return local, [local.shape[0]]
        import torch.distributed as dist

        count = torch.tensor([local.shape[0]], device=local.device)
        counts = [torch.zeros_like(count) for _ in range(self.world)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        rows = [part[:size] for part, size in zip(parts, sizes)]
        rows[self.rank] = local
        return torch.cat(rows), sizes

    def sum_(self, tensors) -> None:
        """Sum each tensor over the ranks, in place (the gradient sums: each rank holds its own rows')."""
        if self.world == 1:
            return
        import torch.distributed as dist

        tensors = list(tensors)
        start = 0
        while start < len(tensors):
            bucket, size = [], 0
            while start < len(tensors) and (not bucket or size + tensors[start].numel() <= BUCKET_ELEMENTS):
                bucket.append(tensors[start])
                size += tensors[start].numel()
                start += 1
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def total(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def gather_objects(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()

    def _collective_device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def leave(code: int) -> int:
    """End a rank of a multi-rank run without the interpreter's finalization, once its group is destroyed.

    Gloo's C++ threads can still hold work at finalization and abort the process ("terminate called without
    an active exception", SIGABRT; pytorch/pytorch PR #179291 describes the mechanism): seen once under load, on
    rank 1 after rank 0 had written DONE, which turned a finished job into a crash. Everything the job writes is
    flushed or waited for before this point (the checkpoint store waits for its uploads before DONE), so the rank
    flushes its streams and logs and exits with `code`. A single process returns `code` and ends normally."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
