"""How every job starts and ends: exit codes, bad input, and SIGTERM turned into a clean stop.

A job's body raises BadInput for anything the user must fix (one line, exit 2, nothing written) and
polls its StopRequest at safe points; `run_job` maps both to the exit codes the planner's supervisor
reads (jobs.protocol: 0 done, 2 bad input, 75 interrupted and resumable).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

from jobs.protocol import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY


class BadInput(ValueError):
    """A problem with what the user gave us: reported in one line, exit 2, nothing written."""


class Interrupted(Exception):
    """SIGTERM or SIGINT: what the job finished is safe; rerun the same command to resume."""


class StopRequest:
    """A signal handler that only notes SIGTERM/SIGINT and when it came; the job acts on it at its next
    safe point (`check()` raises Interrupted there). Raising from the handler wherever the main thread
    happens to be could tear a write or leave a worker queue's lock held. With `repeat_raises` a second
    signal raises at once (a user pressing Ctrl-C twice); without it, repeats are ignored (torchrun and
    a container stop may both deliver SIGTERM to a rank that is inside a collective)."""

    def __init__(self, repeat_raises: bool = False) -> None:
        self.repeat_raises = repeat_raises
        self.signal: str | None = None
        self.at = 0.0

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            if self.repeat_raises:
                raise Interrupted(name)
            return
        self.signal, self.at = name, time.monotonic()

    def check(self) -> None:
        if self.signal is not None:
            raise Interrupted(self.signal)


def quiet_progress_bars(stream=None) -> bool:
    """When the job's output is not a terminal (a log file, a provider's log), turn off progress bars
    (tqdm, huggingface_hub, transformers) so the log gets lines, not carriage-return redraws. Returns
    whether it did. The job's own log lines (step, loss, tok/s, ETA) carry the progress instead."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return False
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm >= 4.66 reads its defaults from TQDM_*
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows huggingface_hub's switch
    for module, switch in (("huggingface_hub.utils", "disable_progress_bars"),
                           ("transformers.utils.logging", "disable_progress_bar")):
        if module in sys.modules:  # already imported: its switch was read at import time
            getattr(sys.modules[module], switch)()
    std = sys.modules.get("tqdm.std")  # tqdm read TQDM_* when it was imported: default disable=True now
    if std is not None and not getattr(std.tqdm.__init__, "quiet", False):
        init = std.tqdm.__init__

        def quiet_init(self, *args, **kwargs):
            kwargs.setdefault("disable", True)
            init(self, *args, **kwargs)

        quiet_init.quiet = True
        std.tqdm.__init__ = quiet_init
    return True


def run_job(body: Callable[[StopRequest], int], resume_hint: str, *, repeat_raises: bool = False) -> int:
    """Run `body` with SIGTERM/SIGINT noted in a StopRequest; BadInput -> EXIT_BAD_INPUT, Interrupted -> EXIT_INTERRUPTED."""
    quiet_progress_bars()
    stop = StopRequest(repeat_raises)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return body(stop)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as exc:
        print(f"interrupted by {exc}; {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from jobs import memory

        if not memory.is_out_of_memory(exc):
            raise
        print(memory.out_of_memory_line(exc), file=sys.stderr)  # the planner relaunches smaller or bigger
        return EXIT_OUT_OF_MEMORY
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
