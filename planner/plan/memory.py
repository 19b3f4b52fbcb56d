"""What the planner learns from the memory its jobs used, and from running out of it (issue 23).

The runner reports its peaks (jobs.memory: `memory.ranks[i]` in progress.json and DONE); the
supervisor stores the largest rank's on the attempt beside what the planner planned for it
(`record_peaks`). Two things follow for the next plans:

- a correction per (job kind and method, GPU model), learned like throughput: the median over our
  attempts of measured peak reserved VRAM / planned VRAM at the attempt's chunk, bounded to
  CORRECTION_BOUNDS so one odd run cannot make every card fit or none (`correction`);
- after an attempt ran out of memory (outcome "out-of-memory"), never the same memory again: CUDA's
  OOM at chunk c on a card of V GB rules out chunk c and larger on cards of V GB or less, so the next
  attempt runs a smaller chunk there or goes to a bigger card; the host's OOM killer (exit 137, or -9,
  without a report) rules out hosts with that much RAM or less (`failures`, handed to choose as Limits).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.protocol import EXIT_OUT_OF_MEMORY
from pricing import gpus

HOST_KILLED = (137, -9)  # SIGKILL as a shell reports it, and as a process status
CORRECTION_BOUNDS = (0.75, 2.0)


def out_of_memory(exit_code: int | None) -> str | None:
    """Why an attempt that ended with `exit_code` ran out of memory, or None. A SIGKILL the supervisor
    did not send (a preemption or a cancel is recorded as such before this is asked) is the host's OOM
    killer: nothing else on a rented box kills the job without a word."""
    if exit_code == EXIT_OUT_OF_MEMORY:
        return f"out of GPU memory (exit {EXIT_OUT_OF_MEMORY}: CUDA out of memory)"
    if exit_code in HOST_KILLED:
        return f"killed (exit {exit_code}): the host's OOM killer, out of RAM"
    return None


def peaks(report: dict | None) -> dict[str, float]:
    """The largest rank's peaks in a progress or DONE report (GB), {} when it has none."""
    ranks = ((report or {}).get("memory") or {}).get("ranks") or []
    out: dict[str, float] = {}
    for rank in ranks:
        for key in ("peak_vram_allocated_gb", "peak_vram_reserved_gb", "peak_rss_gb"):
            value = rank.get(key) if isinstance(rank, dict) else None
            if isinstance(value, (int, float)):
                out[key] = max(out.get(key, 0.0), float(value))
    return out


def record_peaks(attempt, report: dict | None) -> None:
    """Copy a report's peaks onto the attempt, never lowering one (DONE after progress, a resumed run)."""
    for key, value in peaks(report).items():
        if getattr(attempt, key) is None or value > getattr(attempt, key):
            setattr(attempt, key, value)


@dataclass(frozen=True)
class Failures:
    gpu: tuple[tuple[float, int | None], ...] = ()  # (VRAM GB of the card, chunk; None: unchunked) that ran out
    host_ram_gb: float | None = None  # the most RAM a host had when the OOM killer ended the job there


def failures(session: Session, job_id: str) -> Failures:
    from planner.records import Attempt

    rows = session.execute(select(Attempt.gpu_model, Attempt.mini_batch_size, Attempt.exit_code, Attempt.ram_gb,
                                  Attempt.planned_ram_gb)
                           .where(Attempt.job_id == job_id, Attempt.outcome == "out-of-memory")).all()
    gpu, host = [], None
    for gpu_model, chunk, code, ram_gb, planned_ram in rows:
        if code in HOST_KILLED:
            had = ram_gb or planned_ram
            if had is not None:
                host = max(host or 0.0, had)
        else:
            spec = gpus.by_model(gpu_model or "")
            if spec is not None:
                gpu.append((spec.vram_gb, chunk))
    return Failures(tuple(sorted(set(gpu), key=str)), host)


def ran_out_before(failed: Failures, vram_gb: float, chunk: int | None) -> bool:
    """Whether a card of `vram_gb` at `chunk` is no bigger and no smaller-chunked than one that ran out."""
    return any(vram_gb <= vram and (was is None or (chunk is not None and chunk >= was)) for vram, was in failed.gpu)


def correction(session: Session | None, needs_kind: str, gpu_model: str) -> float:
    """Measured / planned VRAM for `needs_kind` on `gpu_model` (median over our attempts with both), 1.0
    with no measurement; bounded to CORRECTION_BOUNDS."""
    if session is None:
        return 1.0
    from planner.records import Attempt, Job

    rows = session.execute(
        select(Attempt.peak_vram_reserved_gb, Attempt.planned_vram_gb, Job.requirements)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.gpu_model == gpu_model, Attempt.peak_vram_reserved_gb.is_not(None),
               Attempt.planned_vram_gb > 0, Job.kind == needs_kind.partition("/")[0])).all()
    ratios = [used / planned for used, planned, requirements in rows
              if json.loads(requirements or "{}").get("needs_kind", needs_kind) == needs_kind]
    if not ratios:
        return 1.0
    low, high = CORRECTION_BOUNDS
    return min(high, max(low, statistics.median(ratios)))
