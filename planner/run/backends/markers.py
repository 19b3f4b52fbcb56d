"""A job is done when its DONE marker exists at its output URI (DESIGN: never trust a pod's status alone)."""
from __future__ import annotations

from jobs import storage


def done_marker_exists(output_uri: str) -> bool:
    """Whether `output_uri`/DONE exists; a storage error counts as not (yet) done."""
    try:
        return storage.exists(storage.join(output_uri, "DONE"))
    except (OSError, ValueError):
        return False
