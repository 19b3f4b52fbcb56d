"""A job is done when its DONE marker exists at its output URI (ARCHITECTURE.md: never trust a pod's status alone)."""
from __future__ import annotations

from jobs import storage
from jobs.protocol import done_uri
from planner.run.backends.base import BackendError


def done_marker_exists(output_uri: str) -> bool:
    """Whether `output_uri`/DONE exists. A store that cannot answer (down, refusing: botocore's errors are no
    OSError) is weather, a BackendError the supervisor retries: never "exited 0 without DONE", a failure."""
    try:
        return storage.exists(done_uri(output_uri))
    except Exception as exc:  # noqa: BLE001 (whatever the store's library raises)
        raise BackendError(f"cannot read the DONE marker at {output_uri}: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]}") from None


def read_done(output_uri: str) -> dict | None:
    """The DONE marker's JSON (None: absent, unreadable, or not an object)."""
    try:
        done = storage.read_json(done_uri(output_uri))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None
