"""``STORE/_manifests/repack.parquet``: one row per repack task (capture, asset, camera, frame range).

A row with ``status == "done"`` means every shard of the task was written before the row was; frames that
could not be decoded are counted (``n_missing``: member absent, i.e. a dropped frame; ``n_corrupt``: present
but unreadable or of the wrong shape) and described in ``errors``. ``status == "failed"`` means the task
itself raised (e.g. a store write error); it is retried on the next run. Pure pyarrow; no Dask.

A row is a :class:`RepackRow` (its error records :class:`ErrorRecord`): one field per column of
:data:`REPACK_SCHEMA`, in its order, converted to and from the Parquet record in one place each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class ErrorRecord:
    """One entry of a row's ``errors``: a raw file (or zip member) that could not be used, and why. Probe and
    plan problems of a capture are recorded the same way (on its ``meta`` row)."""

    capture: str
    file: str  # relative to RAW (or the store, for a chunk ``ava256 verify STORE`` found corrupt)
    member: str  # zip member name ("" for a whole file)
    reason: str

    def to_record(self) -> dict[str, Any]:
        """The :data:`ERROR_TYPE` struct value."""
        return {"capture": self.capture, "file": self.file, "member": self.member, "reason": self.reason}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ErrorRecord:
        return cls(rec["capture"], rec["file"], rec["member"], rec["reason"])


@dataclass(frozen=True)
class RepackRow:
    """One row of the repack manifest: the fields are the columns of :data:`REPACK_SCHEMA`, in its order."""

    capture: str
    task_id: str  # "<capture>/<asset>/<camera>/<start>-<stop>"
    asset: str
    camera_id: str  # "" for per-frame assets
    camera_index: int  # -1 for per-frame assets
    frame_start: int
    frame_stop: int  # exclusive
    status: str  # STATUS_DONE or STATUS_FAILED
    n_frames: int
    n_valid: int
    n_missing: int
    n_corrupt: int
    errors: tuple[ErrorRecord, ...]
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    source_hash: str
    worker: str
    finished_at: datetime
    shard_bytes: tuple[int, ...] | None = None  # see REPACK_SCHEMA

    def to_record(self) -> dict[str, Any]:
        """The Parquet record: one value per column of :data:`REPACK_SCHEMA`."""
        rec = {name: getattr(self, name) for name in COLUMNS}
        rec["errors"] = [e.to_record() for e in self.errors]
        rec["shard_bytes"] = None if self.shard_bytes is None else list(self.shard_bytes)
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RepackRow:
        """A row from a record read back (``pyarrow.Table.to_pylist``); an absent optional column is None."""
        kw = {name: rec.get(name) if name in OPTIONAL else rec[name] for name in COLUMNS}
        kw["errors"] = tuple(ErrorRecord.from_record(e) for e in (rec["errors"] or ()))
        shards = kw["shard_bytes"]
        kw["shard_bytes"] = None if shards is None else tuple(int(n) for n in shards)
        return cls(**kw)


def empty_table() -> pa.Table:
    return REPACK_SCHEMA.empty_table()


def rows_to_table(rows: Iterable[RepackRow]) -> pa.Table:
    """Rows -> a table of :data:`REPACK_SCHEMA`."""
    records = [r.to_record() for r in rows]
    if not records:
        return empty_table()
    return pa.Table.from_pylist(records, schema=REPACK_SCHEMA)


def read_repack_rows(path: str | os.PathLike[str]) -> list[RepackRow]:
    """The rows of a repack manifest (a local path or an fsspec URL); empty if there is none."""
    table = read_table_any(path, schema=REPACK_SCHEMA)
    return [] if table is None else [RepackRow.from_record(r) for r in table.to_pylist()]


def read_repack_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a repack manifest into a DataFrame (empty frame with the schema's columns if absent)."""
    table = read_table_any(path, schema=REPACK_SCHEMA)  # a local path or an fsspec URL
    return (empty_table() if table is None else table).to_pandas()


def write_repack_manifest(table: pa.Table | pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the whole manifest atomically (temp file + rename)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=REPACK_SCHEMA, preserve_index=False)
    return write_table_atomic(table.select(COLUMNS).cast(REPACK_SCHEMA), path)
