"""Atomic Parquet writes shared by the manifest modules: write to a temp file beside the target, then
``os.replace`` (readers never see a half-written manifest). At an fsspec URL (``s3://…``) the file is written
locally, then uploaded whole (an object store PUT is atomic): both through :func:`ava256.atomic.atomic_write`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ava256.atomic import atomic_write


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path | str:
    """Write ``table`` to ``path`` atomically (parents created). Returns the path."""
    return write_batches_atomic([table], table.schema, path)


def write_batches_atomic(
    tables: Iterable[pa.Table], schema: pa.Schema, path: str | os.PathLike[str]
) -> Path | str:
    """Stream ``tables`` (each conforming to ``schema``) into one Parquet file at ``path`` (a local path or an
    fsspec URL), atomically; memory stays bounded by one table at a time."""
    try:
        with atomic_write(path) as f, pq.ParquetWriter(f, schema) as writer:
            for t in tables:
                writer.write_table(t.select(schema.names).cast(schema))
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # e.g. ENOSPC from a write: name the manifest
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise
    return os.fspath(path) if _is_url(path) else Path(path)


def _is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(path)


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
