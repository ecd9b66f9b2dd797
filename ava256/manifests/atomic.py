"""Atomic Parquet writes shared by the manifest modules: write to a temp file beside the target, then
``os.replace`` (readers never see a half-written manifest). Local paths only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` to ``path`` atomically (parents created). Returns the path."""
    return write_batches_atomic([table], table.schema, path)


def write_batches_atomic(tables: Iterable[pa.Table], schema: pa.Schema, path: str | os.PathLike[str]) -> Path:
    """Stream ``tables`` (each conforming to ``schema``) into one Parquet file at ``path``, atomically;
    memory stays bounded by one table at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for t in tables:
                writer.write_table(t.select(schema.names).cast(schema))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
