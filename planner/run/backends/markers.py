"""A job is done when its DONE marker exists at its output URI (ARCHITECTURE.md: never trust a pod's status alone)."""
from __future__ import annotations

from jobs import storage


DONE_MARKER = "DONE"  # written last by every runner (jobs.train_bag.DONE, ...): JSON with what the run measured


def done_marker_exists(output_uri: str) -> bool:
    """Whether `output_uri`/DONE exists; a storage error counts as not (yet) done."""
    try:
        return storage.exists(storage.join(output_uri, DONE_MARKER))
    except (OSError, ValueError):
        return False


def read_done(output_uri: str) -> dict | None:
    """The DONE marker's JSON (None: absent, unreadable, or not an object)."""
    try:
        done = storage.read_json(storage.join(output_uri, DONE_MARKER))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None
