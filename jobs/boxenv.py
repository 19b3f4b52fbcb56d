"""The box's environment as a provider can carry it, and back.

Some providers cap each environment entry (Vast: 256 characters), while a job spec or a session
token is longer. `split` cuts a long value into NAME__PART0, NAME__PART1, ... (with NAME__PARTS
giving their number) and `restore` joins them again on the box before the job starts; it also turns
PLANNER_GCS_CREDENTIALS_JSON (a service-account key passed by value) into a 0600 file named by
GOOGLE_APPLICATION_CREDENTIALS, which is how Google's libraries read it.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping

from jobs.protocol import GCS_JSON

PARTS = "__PARTS"


def split(env: dict[str, str], limit: int) -> dict[str, str]:
    """`env` with every entry whose `NAME=value` exceeds `limit` characters cut into numbered parts."""
    out: dict[str, str] = {}
    for name, value in env.items():
        if len(name) + 1 + len(value) <= limit:
            out[name] = value
            continue
        size = limit - len(name) - len("__PART0000=")
        if size < 16:
            raise ValueError(f"environment variable {name}: its name is too long to split within {limit} characters")
        pieces = [value[i:i + size] for i in range(0, len(value), size)]
        out[name + PARTS] = str(len(pieces))
        out.update({f"{name}__PART{i}": piece for i, piece in enumerate(pieces)})
    return out


def restore(environ: MutableMapping[str, str] | None = None) -> None:
    """Join split entries in place and write a GCS key passed by value to a private file."""
    environ = os.environ if environ is None else environ
    for key in [k for k in environ if k.endswith(PARTS)]:
        name, count = key[:-len(PARTS)], int(environ.pop(key))
        environ[name] = "".join(environ.pop(f"{name}__PART{i}") for i in range(count))
    if environ.get(GCS_JSON) and not environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        fd, path = tempfile.mkstemp(prefix="gcs-", suffix=".json")  # mkstemp: mode 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(environ.pop(GCS_JSON))
        environ["GOOGLE_APPLICATION_CREDENTIALS"] = path
