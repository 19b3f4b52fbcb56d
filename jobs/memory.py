"""What a job process used, and how it ran out: peak VRAM and RSS for the progress file and DONE.

`usage(device)` is one rank's figures in GiB (the planner's GB): `peak_vram_allocated_gb` (tensors,
torch.cuda.max_memory_allocated: what the planner's estimate models), `peak_vram_reserved_gb` (what the
caching allocator held from the card, fragmentation included: what runs out) and `peak_rss_gb` (the
process's high-water RSS, getrusage ru_maxrss: host RAM, where the float32 output is built). The
supervisor stores them on the attempt and the planner learns its correction from them
(planner.plan.choose.memory_correction).

Running out is its own outcome: CUDA's `torch.OutOfMemoryError` makes the runner exit with
EXIT_OUT_OF_MEMORY after one line naming it (no traceback), so the planner relaunches with a smaller
chunk or on a bigger card instead of retrying the same thing; the host's OOM killer sends SIGKILL,
which no process can catch, and the supervisor reads exit 137 without a report as that.
"""
from __future__ import annotations

import resource
import sys

from jobs.protocol import EXIT_OUT_OF_MEMORY  # noqa: F401  (the runner's outcome, named beside its cause)

GB = 1024**3


def usage(device=None) -> dict:
    """This process's peaks so far, in GB (GiB); VRAM only on a CUDA device."""
    figures = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3)}
    torch = sys.modules.get("torch")
    if torch is not None and device is not None and getattr(device, "type", device) == "cuda":
        figures |= {"peak_vram_allocated_gb": round(torch.cuda.max_memory_allocated(device) / GB, 3),
                    "peak_vram_reserved_gb": round(torch.cuda.max_memory_reserved(device) / GB, 3)}
    return figures


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error (torch.OutOfMemoryError, a RuntimeError subclass since torch 2.5; older
    builds raise a plain RuntimeError with the same words)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def out_of_memory_line(exc: BaseException) -> str:
    """The one line the runner prints before exiting EXIT_OUT_OF_MEMORY (the supervisor shows it)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"out of memory: {first}"
