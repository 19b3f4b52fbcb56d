"""Local inputs of a cloud launch, uploaded once under PLANNER_STORAGE_URI so the box can read them.

A cloud box cannot see this machine's disk. Before a launch that may run in the cloud, every input
parameter of every job that names a local file or directory (--data, --eval, --input / --encode,
--replay-data, a local --model or --previous, a merge's local --models) is uploaded, content-
addressed, to `<storage>/inputs/<sha256>/<name>` and the job's spec points at that URI instead.
An upload whose marker (`<storage>/inputs/<sha256>/.uploaded`) exists is skipped, so relaunching
a campaign on the same corpus uploads nothing. A directory's address hashes its relative paths and
the hash of each file. A model that is neither a local path nor a URI is a hub id: the box passes
it to from_pretrained (jobs.storage.resolve_model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import fsspec

from jobs import storage
from jobs.spec import KINDS, JobSpec

MARKER = ".uploaded"


class InputError(ValueError):
    """An input a cloud box could not read: one line naming the flag and the fix (the CLI exits 2)."""


@dataclass(frozen=True)
class Upload:
    path: str  # on this machine
    uri: str  # under the storage URI
    skipped: bool  # already there


def is_local_input(value: str, *, model: bool) -> bool:
    """A value naming this machine's disk: an existing path, or (for data) anything that is not a URI.
    A model value that does not exist here and looks like `org/name` is a hub id, not a local path."""
    if storage.is_remote(value):
        return False
    if Path(os.path.expanduser(value)).exists():
        return True
    if model and storage.looks_like_hub_id(value) and not value.startswith((".", "~")):
        return False
    return True


def local_inputs(spec: JobSpec) -> list[tuple[str, str]]:
    """(parameter, value) for each input of `spec` on this machine's disk (a list parameter: each item)."""
    found, kind = [], KINDS[spec.kind]
    for param in kind.inputs:
        value = spec.params.get(param)
        values = value if isinstance(value, list) else ([] if value is None else [value])
        found += [(param, str(v)) for v in values if is_local_input(str(v), model=param in kind.model_inputs)]
    return found


def local_input_problem(specs: list[JobSpec]) -> str | None:
    """Why a cloud launch without PLANNER_STORAGE_URI cannot run these specs (None: every input is remote)."""
    for spec in specs:
        for param, value in local_inputs(spec):
            return (f"{KINDS[spec.kind].flag(param)} {value} is on this machine, which a cloud box cannot read: set "
                    "PLANNER_STORAGE_URI (e.g. s3://bucket/planner) so launch uploads it, or pass an s3://... URI")
    return None


def stage_inputs(specs: list[JobSpec], storage_uri: str, *, upload_files: bool = True
                 ) -> tuple[list[JobSpec], list[Upload]]:
    """`specs` with every local input uploaded under `storage_uri` and replaced by its URI; with
    `upload_files` False (a dry run) the same URIs, nothing written or read remotely."""
    uploads: dict[str, Upload] = {}

    def staged(spec: JobSpec, param: str, value: str) -> str:
        kind = KINDS[spec.kind]
        if not is_local_input(value, model=param in kind.model_inputs):
            return value
        path = Path(os.path.expanduser(value))
        if not path.exists():
            raise InputError(f"{kind.flag(param)} {value}: no such file or directory")
        key = str(path.resolve())
        if key not in uploads:
            uploads[key] = upload(path, storage_uri) if upload_files else \
                Upload(str(path), input_uri(path, storage_uri)[1], skipped=True)
        return uploads[key].uri

    out = []
    for spec in specs:
        params = dict(spec.params)
        for param in KINDS[spec.kind].inputs:
            value = params.get(param)
            if isinstance(value, list):
                params[param] = [staged(spec, param, str(v)) for v in value]
            elif value is not None:
                params[param] = staged(spec, param, str(value))
        out.append(replace(spec, params=params))
    return out, list(uploads.values())


def input_uri(path: Path, storage_uri: str) -> tuple[str, str]:
    """(`<storage>/inputs/<sha256>`, the URI under it that `path` is uploaded to)."""
    home = storage.join(storage_uri, "inputs", storage.content_digest(path))
    return home, storage.join(home, path.name)


def upload(path: Path, storage_uri: str) -> Upload:
    """Upload `path` to `<storage>/inputs/<sha256>/<name>` unless its marker says it is there already."""
    home, uri = input_uri(path, storage_uri)
    if storage.exists(storage.join(home, MARKER)):
        return Upload(str(path), uri, skipped=True)
    if path.is_dir():
        storage.upload_tree(path, uri)
    elif storage.is_remote(uri):
        fs, root = fsspec.core.url_to_fs(uri)
        fs.put_file(str(path), root)
    else:
        _copy(path, uri)
    storage.write_bytes_atomic(storage.join(home, MARKER), b"")
    return Upload(str(path), uri, skipped=False)


def _copy(path: Path, uri: str) -> None:
    import shutil

    target = storage.local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
