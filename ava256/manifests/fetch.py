"""The fetch manifest ``OUT/_manifests/fetch.parquet``: one row per object of the raw tree.

Pure pyarrow; no Dask. A row is a :class:`FetchRow`, one field per column of the schema; ``(capture, key)`` is
unique.
Writes are atomic (temp file in the same directory + ``os.replace``), so a crash never leaves a torn manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ava256.manifests.atomic import write_table_atomic

MANIFEST_DIR = "_manifests"
FETCH_MANIFEST = "fetch.parquet"

#: Object status values.
STATUS_OK = "ok"  # present, size (+ ETag/MD5 where single-part) checked, sha256 recorded
STATUS_FAILED = "failed"  # download failed after retries / mismatch after one re-download; see ``error``
STATUS_MISSING = "missing"  # verify: the local file is gone
STATUS_CORRUPT = "corrupt"  # verify: the local file no longer matches its size/sha256
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_MISSING, STATUS_CORRUPT)

FETCH_SCHEMA = pa.schema(
    [
        pa.field(
            "capture", pa.string(), nullable=False
        ),  # canonical capture folder, e.g. 20230405--1635--AAN112
        pa.field("asset", pa.string()),  # catalog asset: meta, image, segmentation, ...
        pa.field("key", pa.string(), nullable=False),  # key relative to the capture folder
        pa.field("path", pa.string(), nullable=False),  # file path relative to OUT (posix)
        pa.field("source", pa.string()),  # where it came from: s3://bucket/key or a local path
        pa.field("bytes", pa.int64()),  # object size (bytes)
        pa.field("etag", pa.string()),  # S3 ETag without quotes ("" for a local source)
        pa.field("md5", pa.string()),  # hex MD5 of the content when the ETag is single-part, else ""
        pa.field("sha256", pa.string()),  # hex sha256 of the content, computed while streaming
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("error", pa.string()),  # reason for a non-ok status, "" when ok
        pa.field("attempts", pa.int32()),  # HTTP attempts used by the last fetch of this object
        pa.field("resumed_from", pa.int64()),  # bytes already on disk (.part) when the last fetch started
        pa.field("seconds", pa.float64()),  # wall time of the last fetch of this object
        pa.field("mtime_ns", pa.int64()),  # st_mtime_ns of the local file when it was written/verified
        pa.field("time", pa.timestamp("us", tz="UTC")),  # when the row was last written
    ]
)
COLUMNS = tuple(FETCH_SCHEMA.names)


@dataclass(frozen=True, kw_only=True)
class FetchRow:
    """One row of the fetch manifest: the fields are the columns of :data:`FETCH_SCHEMA`, in its order (see
    there for what each holds). Nullable columns default to None, which is also what a row read from an older
    manifest lacking the column holds."""

    capture: str
    asset: str | None = None
    key: str
    path: str
    source: str | None = None
    bytes: int | None = None
    etag: str | None = None
    md5: str | None = None
    sha256: str | None = None
    status: str
    error: str | None = None
    attempts: int | None = None
    resumed_from: int | None = None
    seconds: float | None = None
    mtime_ns: int | None = None
    time: datetime | None = None

    def to_record(self) -> dict[str, Any]:
        """The Parquet record: one value per column of :data:`FETCH_SCHEMA`."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> FetchRow:
        """A row from a record read back; a column the record lacks is None."""
        return cls(**{name: rec.get(name) for name in COLUMNS})


def manifest_path(out: str | os.PathLike) -> Path:
    return Path(out) / MANIFEST_DIR / FETCH_MANIFEST


def rows_to_table(rows: Iterable[FetchRow]) -> pa.Table:
    """Rows -> table in FETCH_SCHEMA, sorted by (capture, key)."""
    ordered = sorted(rows, key=lambda r: (r.capture, r.key))
    cols = {name: [getattr(r, name) for r in ordered] for name in COLUMNS}
    return pa.table(cols, schema=FETCH_SCHEMA)


def write_fetch_manifest(out: str | os.PathLike, rows: Iterable[FetchRow]) -> Path:
    """Atomically write the rows as ``OUT/_manifests/fetch.parquet``; returns its path."""
    path = manifest_path(out)
    write_table_atomic(rows_to_table(rows), path)
    return path


def update_fetch_manifest(out: str | os.PathLike, rows: Iterable[FetchRow]) -> Path:
    """Write ``rows`` over the manifest on disk: rows of other (capture, key)s stay as they are on disk, so a
    writer never drops what it did not touch. Call it holding the raw tree's lock (read-modify-write)."""
    merged = read_fetch_manifest(out)
    for row in rows:
        merged[(row.capture, row.key)] = row
    return write_fetch_manifest(out, merged.values())


def torn_manifest_hint(out: str | os.PathLike) -> str:
    """How to recover from an unreadable fetch manifest (the files it described are still on disk)."""
    return (
        f"to recover, rebuild it from the files on disk with `ava256 fetch {out} --rebuild-manifest` "
        f"(re-hashes them; the next fetch checks them against the source), or delete {manifest_path(out)} "
        "and fetch again"
    )


def read_fetch_manifest(out: str | os.PathLike) -> dict[tuple[str, str], FetchRow]:
    """Read ``OUT/_manifests/fetch.parquet`` as ``{(capture, key): row}``; empty if there is none yet.

    Raises ValueError naming the file, and how to recover, if it exists but is not a readable fetch manifest."""
    path = manifest_path(out)
    if not path.exists():
        return {}
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a torn/foreign file
        raise ValueError(f"cannot read fetch manifest {path}: {exc}; {torn_manifest_hint(out)}") from exc
    missing = set(COLUMNS) - set(table.column_names)
    required = {"capture", "key", "path", "status"}
    if missing & required:
        raise ValueError(
            f"{path} is not a fetch manifest: lacks column(s) {sorted(missing & required)}; "
            f"{torn_manifest_hint(out)}"
        )
    rows = {}
    for rec in table.to_pylist():
        row = FetchRow.from_record(rec)  # columns the file lacks are None
        rows[(row.capture, row.key)] = row
    return rows
