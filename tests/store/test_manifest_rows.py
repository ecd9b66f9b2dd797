"""The typed manifest rows match the Parquet schemas they are written with, and survive a write and a read."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pyarrow.parquet as pq

from ava256.manifests import fetch as fm
from ava256.manifests import repack as rm


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_row_fields_are_the_schema_columns_in_order():
    assert _names(rm.RepackRow) == rm.REPACK_SCHEMA.names
    assert _names(rm.ErrorRecord) == [f.name for f in rm.ERROR_TYPE]
    assert _names(fm.FetchRow) == fm.FETCH_SCHEMA.names


def _repack_row(**kw) -> rm.RepackRow:
    row = rm.RepackRow(
        capture="c", task_id="c/image/1/000000-000004", asset="image", camera_id="1", camera_index=0,
        frame_start=0, frame_stop=4, status=rm.STATUS_DONE, n_frames=4, n_valid=2, n_missing=1, n_corrupt=1,
        errors=(rm.ErrorRecord("c", "c/x.zip", "m1", "missing member (dropped frame)"),
                rm.ErrorRecord("c", "c/x.zip", "m2", "decoded shape (1, 1), expected (2, 2)")),
        seconds=1.5, cpu_seconds=1.25, peak_rss_mb=100.0, source_hash="h", worker="w",
        finished_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), shard_bytes=(10, -1),
    )  # fmt: skip
    return dataclasses.replace(row, **kw)


def test_repack_rows_round_trip_through_parquet(tmp_path):
    rows = [_repack_row(), _repack_row(task_id="c/meta", asset="meta", errors=(), shard_bytes=None)]
    path = tmp_path / "repack.parquet"
    rm.write_repack_manifest(rm.rows_to_table(rows), path)
    assert pq.read_schema(path).remove_metadata() == rm.REPACK_SCHEMA
    assert rm.read_repack_rows(path) == rows
    assert rm.read_repack_rows(tmp_path / "absent.parquet") == []


def test_repack_rows_read_from_a_manifest_without_shard_bytes(tmp_path):
    """Manifests written before ``shard_bytes`` existed read back with None there."""
    path = tmp_path / "old.parquet"
    pq.write_table(rm.rows_to_table([_repack_row()]).drop_columns(["shard_bytes"]), path)
    assert rm.read_repack_rows(path) == [_repack_row(shard_bytes=None)]


def test_fetch_rows_round_trip_through_parquet(tmp_path):
    full = fm.FetchRow(
        capture="c", asset="meta", key="k", path="c/k", source="s3://b/c/k", bytes=3, etag="e", md5="m",
        sha256="s", status=fm.STATUS_OK, error="", attempts=1, resumed_from=0, seconds=0.5, mtime_ns=7,
        time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    )  # fmt: skip
    sparse = fm.FetchRow(capture="a", key="k", path="a/k", status=fm.STATUS_FAILED)
    fm.write_fetch_manifest(tmp_path, [full, sparse])
    assert pq.read_schema(fm.manifest_path(tmp_path)).remove_metadata() == fm.FETCH_SCHEMA
    assert fm.read_fetch_manifest(tmp_path) == {("a", "k"): sparse, ("c", "k"): full}
