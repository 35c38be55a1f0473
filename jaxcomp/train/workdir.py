"""A run's working directory: config identity, one writer at a time, atomic files.

- ``config_dict`` / ``config_hash`` / ``config_diff``: a config (``ml_collections.ConfigDict``,
  dataclass or mapping) as canonical JSON, its SHA-256, and the dotted fields in which two differ.
  ``fit`` stores the hash and the config in every checkpoint and refuses to resume under another.
- ``WorkdirLock``: an exclusive lock (``fcntl.flock``) on ``<dir>/.jaxcomp.lock`` that names its
  holder (host, pid, run id). The kernel drops it when the holder dies (``kill -9`` included), so
  there are no stale locks. On object stores (``gs://``) there is no lock primitive; the lock is a
  no-op there and one writer per workdir is the caller's responsibility (documented).
- ``write_json_atomic`` / ``write_text_atomic``: a temporary file then a rename, so a reader never
  sees a half-written file and a crash mid-write leaves the previous version.

Paths are ``etils.epath.Path``: local paths and ``gs://`` / ``memory://`` go through one code path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from etils import epath

#: Config fields that do not change what a run computes (never part of its identity).
IGNORED_FIELDS = ("force_resume",)


def _plain(x: Any) -> Any:
    if hasattr(x, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        x = x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / jax scalars
        return x.item()
    if hasattr(x, "tolist") and hasattr(x, "ndim"):  # numpy / jax arrays
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def config_dict(config: Any) -> dict[str, Any]:
    """``config`` as a JSON-ready dict (tuples as lists, numpy scalars as Python numbers), without
    the fields in ``IGNORED_FIELDS`` (at any depth)."""
    if config is None:
        return {}
    d = _plain(config)
    if not isinstance(d, dict):
        raise TypeError(f"config must be a ConfigDict, dataclass or mapping, got {type(config)}")
    return _drop_ignored(d)


def _drop_ignored(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_ignored(v) for k, v in d.items() if k not in IGNORED_FIELDS}
    return d


def config_hash(config: Any) -> str:
    """SHA-256 (hex, 16 chars) of the canonical JSON of ``config_dict(config)``."""
    blob = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dict with dotted keys (``{"a": {"b": 1}} -> {"a.b": 1}``)."""
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten_dict(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(old: Any, new: Any) -> list[str]:
    """The fields in which two configs differ, as ``"field: old -> new"`` lines (dotted names for
    nested fields; ``<absent>`` for a field only one of them has)."""
    a, b = flatten_dict(config_dict(old)), flatten_dict(config_dict(new))
    lines = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            lines.append(f"{k}: {va!r} -> {vb!r}")
    return lines


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> epath.Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (atomic on POSIX and
    on object stores, where the object appears whole)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    if is_local(path):
        os.replace(tmp, path)
    else:
        tmp.replace(path)  # overwrites; rename refuses an existing object
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> epath.Path:
    """``text`` (UTF-8) written atomically (see ``write_bytes_atomic``)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> epath.Path:
    """``json.dumps(obj)`` written atomically (see ``write_text_atomic``)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=_plain))


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir."""


class WorkdirLock:
    """Exclusive lock on ``directory`` for one writer (see module docstring).

    ``with WorkdirLock(d, run_id=...) as lock:`` or ``acquire()`` / ``release()``. Raises
    ``WorkdirLockedError`` naming the holder's host, pid and run id.
    """

    FILENAME = ".jaxcomp.lock"

    def __init__(self, directory: str | os.PathLike, *, run_id: str | None = None):
        self.directory = epath.Path(directory)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._fd: int | None = None

    @property
    def path(self) -> epath.Path:
        return self.directory / self.FILENAME

    def acquire(self) -> WorkdirLock:
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        if not is_local(self.directory):
            return self
        import fcntl

        fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.directory} is in use by another run ({holder}); wait for it to finish, "
                "or use another workdir"
            ) from None
        info = f"host={socket.gethostname()} pid={os.getpid()} run_id={self.run_id}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
