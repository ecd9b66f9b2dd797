"""Where a store lives: a local folder or an fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``:
anything fsspec opens). Every stage that takes a STORE goes through these helpers for existence checks,
listings and reads; writes go through :mod:`ava256.atomic`, which takes the same locations.

Storage options are fsspec's defaults: for ``s3://`` s3fs (botocore) reads the endpoint and credentials from
the usual environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ...), as repack, info and a Dask cluster's workers do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ava256.store.layout import MANIFESTS_DIR, STORE_SUFFIX


class StoreNotFound(FileNotFoundError):
    """STORE names no store (neither a folder nor a URL prefix with content)."""


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL (``scheme://…``); False for a local path."""
    return "://" in os.fspath(path)


def join(root: str | os.PathLike[str], *parts: str) -> str | Path:
    """``root/part/…``: a :class:`~pathlib.Path` for a local root, a ``/``-joined string for a URL."""
    if is_url(root):
        return "/".join([os.fspath(root).rstrip("/"), *parts])
    return Path(root).joinpath(*parts)


def filesystem(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(fs, path-within-fs)`` of a local path or an fsspec URL (fsspec's instance cache makes this cheap)."""
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(path))


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file or folder (a URL prefix with content) is at ``path``."""
    if not is_url(path):
        return os.path.exists(path)
    fs, p = filesystem(path)
    return bool(fs.exists(p))


def isfile(path: str | os.PathLike[str]) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, p = filesystem(path)
    return bool(fs.isfile(p))


def isdir(path: str | os.PathLike[str]) -> bool:
    """A local folder, or a URL prefix that holds objects (object stores have no empty folders)."""
    if not is_url(path):
        return os.path.isdir(path)
    fs, p = filesystem(path)
    return bool(fs.isdir(p))


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Sorted names (last path component) of the entries directly under ``path``; [] if there is none."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, p = filesystem(path)
    try:
        entries = fs.ls(p, detail=False)
    except FileNotFoundError:
        return []
    base = p.rstrip("/")
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base})


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole file at ``path``; FileNotFoundError naming it if absent."""
    if not is_url(path):
        return Path(path).read_bytes()
    fs, p = filesystem(path)
    try:
        return fs.cat_file(p)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} does not exist") from exc


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode()


def require_store(store: str | os.PathLike[str]) -> str:
    """``store`` as a string if it is a store root (a folder, or a URL prefix holding ``_manifests/`` or a
    capture group); else :class:`StoreNotFound` with one line saying so. Contents are checked by each stage."""
    s = os.fspath(store)
    if not is_url(s):
        if not os.path.isdir(s):
            raise StoreNotFound(f"store {s} does not exist (or is not a folder)")
        return s
    try:
        names = listdir(s)
    except (OSError, ValueError) as exc:  # no such bucket, no access, bad endpoint: one line, not a traceback
        raise StoreNotFound(f"store {s} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if MANIFESTS_DIR not in names and not any(n.endswith(STORE_SUFFIX) for n in names):
        raise StoreNotFound(f"store {s} does not exist (no {MANIFESTS_DIR}/ or capture groups under it)")
    return s
