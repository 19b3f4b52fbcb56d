"""A job is done when its DONE marker exists at its output URI (ARCHITECTURE.md: never trust a pod's status alone)."""
from __future__ import annotations

from jobs import storage
from jobs.protocol import done_uri


def done_marker_exists(output_uri: str) -> bool:
    """Whether `output_uri`/DONE exists; a storage error counts as not (yet) done."""
    try:
        return storage.exists(done_uri(output_uri))
    except (OSError, ValueError):
        return False


def read_done(output_uri: str) -> dict | None:
    """The DONE marker's JSON (None: absent, unreadable, or not an object)."""
    try:
        done = storage.read_json(done_uri(output_uri))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None
