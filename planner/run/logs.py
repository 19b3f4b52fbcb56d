"""A job attempt's log: its tail, the runner's reason for refusing its input, and following it until the
attempt ends (`planner jobs logs --follow`).

A backend that can stream its log implements `follow_logs(handle, stop, tail=N)`: an iterator of
lines (without newlines) that starts with the last `tail` lines, yields each new line as it comes
and returns once `stop` (a threading.Event) is set and what was written by then is out. The local
backend follows its log file; provider log APIs (RunPod, Vast) plug in the same way. A backend
without it is followed by polling `logs(handle, tail)` and printing what is new.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from planner.run.backends.base import Backend, BackendError, Handle, Status
from pricing.providers.base import ProviderError

LIVE = (Status.RUNNING, Status.PENDING)


def log_tail(backend: Backend, handle: Handle, lines: int = 30) -> str:
    """The last `lines` of the attempt's log, or why there is none (provider weather is no error here)."""
    try:
        return backend.logs(handle, tail=lines)
    except (BackendError, ProviderError) as exc:
        return f"(no log: {exc})"


def bad_input_reason(tail: str) -> str:
    """The runner's one-line reason for exit 2: its last `error: ...` line (file:line for a corpus)."""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line.startswith("error: "):
            return line[len("error: "):][:400]
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("(")]
    return lines[-1][:400] if lines else "the runner refused its input (no reason in its log)"


def attempt_ended(backend: Backend, handle: Handle) -> bool:
    try:
        return backend.poll(handle).status not in LIVE
    except (BackendError, ProviderError):
        return False  # provider weather: keep following


def follow(backend: Backend, handle: Handle, *, tail: int = 100, check_s: float = 1.0,
           ended: Callable[[], bool] | None = None, stop: threading.Event | None = None) -> Iterator[str]:
    """Lines of the attempt's log until it ends (`ended()`, by default the backend's poll, checked
    every `check_s`) or `stop` is set by the caller."""
    stop = stop or threading.Event()
    ended = ended or (lambda: attempt_ended(backend, handle))

    def watch() -> None:
        while not stop.wait(check_s):
            if ended():
                stop.set()

    watcher = threading.Thread(target=watch, name="logs-follow", daemon=True)
    watcher.start()
    try:
        streaming = getattr(backend, "follow_logs", None)
        if streaming is not None:
            yield from streaming(handle, stop, tail=tail)
        else:
            yield from _poll_logs(backend, handle, stop, tail, check_s)
    finally:
        stop.set()


def _poll_logs(backend: Backend, handle: Handle, stop: threading.Event, tail: int, every_s: float) -> Iterator[str]:
    seen: list[str] = []
    window = max(tail, 500)
    while True:
        stopping = stop.is_set()
        try:
            lines = backend.logs(handle, tail=window).splitlines()
        except (BackendError, ProviderError):
            lines = seen
        new = lines[-tail:] if not seen else lines[_overlap(seen, lines):]
        yield from new
        seen = lines or seen
        if stopping:
            return
        stop.wait(every_s)


def _overlap(seen: list[str], lines: list[str]) -> int:
    """How many leading `lines` were already printed: the longest suffix of `seen` they start with."""
    for size in range(min(len(seen), len(lines)), 0, -1):
        if seen[-size:] == lines[:size]:
            return size
    return 0
