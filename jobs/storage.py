"""Paths and fsspec URIs the same way: atomic writes, done markers, and a local cache of remote inputs.

A job's outputs and checkpoints may live on s3://, gs:// or a local path. Local writes go to a
temporary name in the same directory and are renamed into place (atomic on POSIX), so a kill at any
instant leaves the old file or the new one, never a torn one. Remote object stores make each
object's PUT atomic already; their "rename" is copy + delete, so callers write a marker object last
and readers trust only what a marker vouches for.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec

_UMASK = os.umask(0)
os.umask(_UMASK)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_remote(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str | os.PathLike) -> Path:
    uri = str(uri)
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def join(uri: str | os.PathLike, *parts: str) -> str:
    uri = str(uri)
    return "/".join([uri.rstrip("/"), *parts]) if is_remote(uri) else str(local_path(uri).joinpath(*parts))


def exists(uri: str | os.PathLike) -> bool:
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(str(uri))
        return fs.exists(path)
    return local_path(uri).exists()


WEATHER_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                 "ThrottlingException", "RequestLimitExceeded"}  # S3's retry-later answers (besides any 5xx)


def is_weather(exc: BaseException) -> bool:
    """Whether a store's error says "not now" rather than "not so": a connection refused, reset or timed out
    (botocore's own errors, which are no OSError, or the socket's), a 5xx or S3's SlowDown. A 403, a missing
    bucket or key, or absent credentials are facts about the store; s3fs wraps the botocore error it
    translates, so the whole chain of causes is read."""
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        transient: tuple[type[BaseException], ...] = (HTTPClientError, BotoConnectionError)
    except ImportError:  # a local-only machine without the S3 stack
        ClientError, transient = None, ()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError, *transient)):
            return True
        if ClientError is not None and isinstance(exc, ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            return int(meta.get("HTTPStatusCode") or 0) >= 500 or exc.response.get("Error", {}).get("Code") in WEATHER_CODES
        exc = exc.__cause__ or exc.__context__
    return False


def read_bytes(uri: str | os.PathLike) -> bytes:
    with fsspec.open(str(uri), "rb") as handle:
        return handle.read()


def read_json(uri: str | os.PathLike) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    """Write the whole object or nothing (temp file + fsync + rename locally; one PUT remotely)."""
    if is_remote(uri):
        with fsspec.open(str(uri), "wb") as handle:
            handle.write(data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(uri: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def upload_tree(local_dir: Path, uri: str) -> None:
    """Copy a finished local directory to `uri` (files first; callers write their marker after)."""
    if not is_remote(uri):
        target = local_path(uri)
        if target.resolve() == Path(local_dir).resolve():
            return
        shutil.copytree(local_dir, target, dirs_exist_ok=True)
        return
    fs, root = fsspec.core.url_to_fs(uri)
    for file in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        fs.put_file(str(file), f"{root.rstrip('/')}/{file.relative_to(local_dir).as_posix()}")


def cached_local_copy(uri: str, cache_dir: Path) -> Path:
    """A local path for `uri`: the path itself when local, else a download cached by URI.

    Files are downloaded to a temporary name and renamed, so an interrupted download is redone,
    never half-used; a directory is complete when its `.complete` marker exists.
    """
    if not is_remote(uri):
        return local_path(uri)
    fs, root = fsspec.core.url_to_fs(uri)
    target = Path(cache_dir) / short_digest(uri)
    if fs.isdir(root):
        marker = target / ".complete"
        if not marker.exists():
            for remote in fs.find(root):
                rel = remote[len(root.rstrip("/")) + 1:]
                _download(fs, remote, target / rel)
            marker.touch()
        return target
    dest = target / Path(root).name
    if not dest.exists():
        _download(fs, root, dest)
    return dest


def _download(fs, remote: str, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    fs.get_file(remote, str(tmp))
    os.replace(tmp, dest)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(files: list[Path]) -> dict[Path, str]:
    """sha256 of each file, hashed in parallel (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(files, pool.map(sha256_file, files)))


def content_digest(path: Path) -> str:
    """The one content address of a file or directory (a model, a corpus, an upload): a file's sha256;
    a directory's is the sha256 of its sorted `relative/path<TAB>file sha256` lines. Hidden entries (a
    name starting with ".") are tools' metadata, e.g. huggingface_hub's download timestamps, not content."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    hashes = sha256_files(files)
    listing = "".join(f"{f.relative_to(path).as_posix()}\t{hashes[f]}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def looks_like_hub_id(model: str) -> bool:
    """`org/name` (or a bare legacy `name`) that is not a local path: a Hugging Face hub id."""
    return bool(_HUB_ID.match(model)) and not is_remote(model) and not local_path(model).exists()


def resolve_model(model: str, cache_dir: str | os.PathLike) -> Path:
    """Every job's --model (and a merge's --models) as a local directory, the one place that decides:
    a local directory as it is; an fsspec URI copied once into `cache_dir`; a hub id downloaded by
    huggingface_hub into `cache_dir`/hub (from_pretrained reads that snapshot as it would read the id).
    Anything else is a BadInput naming the model."""
    from jobs.lifecycle import BadInput

    if is_remote(model):
        try:
            found = exists(model)
        except (OSError, ValueError) as exc:
            raise BadInput(f"model {model}: cannot reach it ({' '.join(str(exc).split())[:200]})") from None
        if not found:
            raise BadInput(f"model {model} not found; give a model directory, an fsspec URI or a hub id")
        return cached_local_copy(model, Path(cache_dir))
    path = local_path(model)
    if path.exists():
        return path
    if not looks_like_hub_id(model):
        raise BadInput(f"model {model} not found (no such directory, and not a hub id); give a model directory, "
                       "an fsspec URI or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, cache_dir=str(Path(cache_dir) / "hub")))
    except Exception as exc:  # not on the hub, offline, gated: one line, exit 2
        raise BadInput(f"model {model}: not a local directory or URI, and the hub did not give it "
                       f"({type(exc).__name__}); give a model directory, an fsspec URI or a hub id") from None


def publish_file(local: Path, uri: str) -> None:
    """Move a finished local file to `uri` atomically (rename locally, one PUT remotely)."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        fs.put_file(str(local), path)
        Path(local).unlink()
    else:
        os.replace(local, local_path(uri))


def listing(uri: str) -> list[str]:
    """The names (not paths) in a directory, local or remote; a file lists as its own name."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]
    path = local_path(uri)
    return os.listdir(path) if path.is_dir() else [path.name]


def remove_tree(uri: str) -> None:
    """Delete a directory and everything under it, local or remote (a missing one is no error)."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(local_path(uri), ignore_errors=True)


def short_digest(text: str) -> str:
    """16 hex digits of sha256(text): a stable directory name for a URI's local staging copy."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
