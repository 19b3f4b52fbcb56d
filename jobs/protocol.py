"""What a job's box and the planner must agree on, declared once. Torch-free: both sides import it.

The planner hands a box its JobSpec in SPEC_ENV (a GCS service-account key by value in GCS_JSON) and
starts `python -m jobs.run --report REPORT`. The runner writes PROGRESS_FILE beside its checkpoints
while it works, keeps CHECKPOINTS_KEPT of them, one every CHECKPOINT_MINUTES by default (the planner
prices the work an interruption loses from the same number), writes DONE_MARKER at the output last,
and exits with one of the EXIT_ codes; `jobs.run --report` then writes `report_uri(...)`. Success is
DONE plus exit 0, never a provider's status (ARCHITECTURE.md, "How a job travels").
"""
from __future__ import annotations

import json
import os

from jobs import storage

SPEC_ENV = "PLANNER_JOB_SPEC"  # the JobSpec as JSON (jobs.spec)
ATTEMPT_ENV = "PLANNER_ATTEMPT"  # the attempt's number (1, 2, ...), stamped on the progress it writes
GCS_JSON = "PLANNER_GCS_CREDENTIALS_JSON"  # a GCS key passed by value; jobs.boxenv writes it to a 0600 file

DONE_MARKER = "DONE"  # at the output, written last: JSON with what the run measured (or empty)
PROGRESS_FILE = "progress.json"  # beside the checkpoints: {step, total_steps, tokens_seen, eta_s, ...}

# Exit codes: done; bad input (one line on stderr, a relaunch would refuse it again); out of GPU memory
# (CUDA's OOM, one line naming it: relaunch with a smaller chunk or on a bigger card, jobs.memory);
# interrupted by SIGTERM/SIGINT after saving what it could (relaunch: it resumes from its checkpoint).
EXIT_DONE, EXIT_BAD_INPUT, EXIT_OUT_OF_MEMORY, EXIT_INTERRUPTED = 0, 2, 3, 75

CHECKPOINTS_KEPT = 2  # the newest and its predecessor, in case the newest is still being uploaded
CHECKPOINT_MINUTES = 30.0  # a training job's default checkpoint interval (train-bag --save-every-minutes)
# seconds a checkpointing job counts on between SIGTERM and SIGKILL (train-bag --sigterm-grace-seconds; RunPod
# gives 5): it saves on SIGTERM only where the save fits, and the planner's budget stop waits this long for it
SIGTERM_GRACE_S = 5.0
CHARS_PER_TOKEN = 4.0  # planning estimate of tokens from text length where no tokenizer is at hand


def done_uri(output_uri: str) -> str:
    return storage.join(output_uri, DONE_MARKER)


def progress_uri(checkpoint_uri: str) -> str:
    return storage.join(checkpoint_uri, PROGRESS_FILE)


def report_uri(output_uri: str, label: str) -> str:
    """Where `jobs.run --report` writes how attempt `label` ended: {job_id, exit_code, log_tail}."""
    return storage.join(output_uri, ".attempts", f"{label}.json")


def duration(seconds: float | None) -> str:
    """A duration as people read it, in the job's log and the planner's views alike: 45s, 12m05s,
    3h05m, 2d04h; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def parse_progress(text: str | None) -> dict:
    """A progress report kept as text (the planner's Attempt.progress column) as a dict; {} when empty or unreadable."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def stamped(progress: dict) -> dict:
    """A progress report with the number of the attempt that wrote it: the file outlives its attempt, and the
    next one (another card, perhaps) must not be credited with the last one's throughput or memory."""
    number = os.environ.get(ATTEMPT_ENV, "")
    return {**progress, "attempt": int(number)} if number.isdecimal() else progress
