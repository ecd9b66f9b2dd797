"""Atomic file writes, the one implementation every stage uses: write to a temp file beside the target,
flush + fsync, then ``os.replace`` onto it. Readers see the old file or the whole new one, never a torn one;
a crash leaves at most a hidden ``.<name>.*.tmp`` beside it (removed on any error we see). The file gets the
mode the umask gives (0o666 masked, like ``open``), not ``tempfile.mkstemp``'s 0o600.

At an fsspec URL (``s3://bucket/key``; :mod:`ava256.store.urls`) the data is staged in a local temp file, then
uploaded in one ``put``: an object store makes a PUT (or a multipart upload, on completion) visible whole or
not at all, so readers again see the old object or the new one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` (parents created) for writing in ``mode`` (``"wb"`` or ``"w"``);
    on a clean exit flush, fsync (unless ``fsync=False``) and rename it onto ``path``; on an error remove it."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    if "://" in os.fspath(path):
        with _atomic_write_url(os.fspath(path), mode) as f:
            yield f
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _atomic_write_url(url: str, mode: str) -> Iterator[IO[Any]]:
    import tempfile

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, key = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):  # file://: temp + rename as for a path
        with atomic_write(key, mode) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(suffix=".upload")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        fs.put_file(tmp, key)  # the object appears whole when the PUT (or multipart upload) completes
    finally:
        os.unlink(tmp)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusively created temp file beside ``path``; the kernel applies the umask (and a default ACL)
    to its 0o666, as for any file ``open`` creates."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            ), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {path}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path | str:
    """Write ``data`` to ``path`` (a local path or an fsspec URL) atomically. Returns the path (a
    :class:`~pathlib.Path`, or the URL string)."""
    if "://" in os.fspath(path):
        import fsspec

        fs, key = fsspec.core.url_to_fs(os.fspath(path))
        fs.pipe_file(key, bytes(data))  # one PUT
        return os.fspath(path)
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path | str:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode(), fsync=fsync)
