"""``STORE/_manifests/repack.parquet``: one row per repack task (capture, asset, camera, frame range).

A row with ``status == "done"`` means every shard of the task was written before the row was; frames that
could not be decoded are counted (``n_missing``: member absent, i.e. a dropped frame; ``n_corrupt``: present
but unreadable or of the wrong shape) and described in ``errors``. ``status == "failed"`` means the task
itself raised (e.g. a store write error); it is retried on the next run. Pure pyarrow; no Dask.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ava256.manifests.atomic import read_table_any, write_table_atomic

REPACK_MANIFEST = "repack.parquet"

STATUS_DONE = "done"
STATUS_FAILED = "failed"

ERROR_TYPE = pa.struct(
    [
        pa.field("capture", pa.string()),
        pa.field("file", pa.string()),  # raw file relative to RAW (e.g. <capture>/decoder/image/cam1.zip)
        pa.field("member", pa.string()),  # zip member name ("" for a whole file)
        pa.field("reason", pa.string()),
    ]
)

REPACK_SCHEMA = pa.schema(
    [
        pa.field("capture", pa.string(), nullable=False),
        pa.field("task_id", pa.string(), nullable=False),  # "<capture>/<asset>/<camera>/<start>-<stop>"
        pa.field("asset", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),  # "" for per-frame assets
        pa.field("camera_index", pa.int16(), nullable=False),  # -1 for per-frame assets
        pa.field("frame_start", pa.int32(), nullable=False),
        pa.field("frame_stop", pa.int32(), nullable=False),  # exclusive
        pa.field("status", pa.string(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("n_valid", pa.int32(), nullable=False),
        pa.field("n_missing", pa.int32(), nullable=False),
        pa.field("n_corrupt", pa.int32(), nullable=False),
        pa.field("errors", pa.list_(ERROR_TYPE), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),  # wall time of the task
        pa.field(
            "cpu_seconds", pa.float64(), nullable=False
        ),  # CPU time of the worker process during the task
        pa.field("peak_rss_mb", pa.float64(), nullable=False),  # peak RSS of the worker process so far
        pa.field("source_hash", pa.string(), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # bytes of each shard file the task wrote, in frame order (-1: no file), recorded when it finished;
        # a re-run redoes a task whose shards differ. Null for rows without shards (meta, failed).
        pa.field("shard_bytes", pa.list_(pa.int64()), nullable=True),
    ]
)
COLUMNS: tuple[str, ...] = tuple(REPACK_SCHEMA.names)
OPTIONAL = frozenset({"shard_bytes"})  # columns a row may lack (older manifests; rows without shards)

#: ``errors[].reason`` of a task that ``ava256 verify STORE`` found a corrupt chunk in (the task is redone)
VERIFY_FAILED_PREFIX = "verify: "


def empty_table() -> pa.Table:
    return REPACK_SCHEMA.empty_table()


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with every column of :data:`REPACK_SCHEMA`) -> a table of that schema."""
    rows = list(rows)
    if not rows:
        return empty_table()
    cols = {name: [r.get(name) if name in OPTIONAL else r[name] for r in rows] for name in COLUMNS}
    return pa.Table.from_pydict(cols, schema=REPACK_SCHEMA)


def read_repack_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a repack manifest into a DataFrame (empty frame with the schema's columns if absent)."""
    table = read_table_any(path, schema=REPACK_SCHEMA)  # a local path or an fsspec URL
    return (empty_table() if table is None else table).to_pandas()


def write_repack_manifest(table: pa.Table | pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the whole manifest atomically (temp file + rename)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=REPACK_SCHEMA, preserve_index=False)
    return write_table_atomic(table.select(COLUMNS).cast(REPACK_SCHEMA), path)
