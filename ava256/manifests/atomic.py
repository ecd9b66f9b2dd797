"""Atomic Parquet writes shared by the manifest modules: write to a temp file beside the target, then
``os.replace`` (readers never see a half-written manifest). At an fsspec URL (``s3://…``) the file is written
locally, then uploaded whole (an object store PUT is atomic)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ava256.atomic import atomic_write


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` to ``path`` atomically (parents created). Returns the path."""
    return write_batches_atomic([table], table.schema, path)


def write_batches_atomic(tables: Iterable[pa.Table], schema: pa.Schema, path: str | os.PathLike[str]) -> Path:
    """Stream ``tables`` (each conforming to ``schema``) into one Parquet file at ``path``, atomically;
    memory stays bounded by one table at a time."""
    if _is_url(path):
        return _write_url(tables, schema, os.fspath(path))
    path = Path(path)
    try:
        with atomic_write(path) as f, pq.ParquetWriter(f, schema) as writer:
            for t in tables:
                writer.write_table(t.select(schema.names).cast(schema))
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # e.g. ENOSPC from a write: name the manifest
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


def _is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(path)


def _write_url(tables: Iterable[pa.Table], schema: pa.Schema, url: str) -> str:  # type: ignore[return]
    import fsspec

    fd, tmp = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for t in tables:
                writer.write_table(t.select(schema.names).cast(schema))
        fs, p = fsspec.core.url_to_fs(url)
        fs.put_file(tmp, p)
    finally:
        os.unlink(tmp)
    return url


def read_table_any(path: str | os.PathLike[str], **kw) -> pa.Table | None:
    """``pq.read_table(path, **kw)`` of a local path or an fsspec URL; None if there is no such file."""
    if not _is_url(path):
        return pq.read_table(path, **kw) if Path(path).exists() else None
    import fsspec

    fs, p = fsspec.core.url_to_fs(os.fspath(path))
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as f:
        return pq.read_table(f, **kw)
