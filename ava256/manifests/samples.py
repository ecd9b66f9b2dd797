"""``STORE/_manifests/samples.parquet``: one row per (capture, frame, camera) of the repacked stores.

``valid`` is True where the camera image, the head pose, the vertices and the uv texture of the frame were
all decoded (what a training sample needs); ``valid_image`` / ``valid_segmentation`` are per asset.
Pure pyarrow/numpy; no Dask.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ava256.manifests.atomic import read_table_any, write_batches_atomic

SAMPLES_MANIFEST = "samples.parquet"

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("capture", pa.string(), nullable=False),  # folder "mcd--mct--sid"
        pa.field("subject", pa.string(), nullable=False),  # sid
        pa.field("frame_index", pa.int32(), nullable=False),  # row in decoder/frame_list.csv = store axis 0
        pa.field("frame_id", pa.int32(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("camera_index", pa.int16(), nullable=False),  # position in the sorted camera ids
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("valid", pa.bool_(), nullable=False),
        pa.field("valid_image", pa.bool_(), nullable=False),
        pa.field("valid_segmentation", pa.bool_(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SAMPLES_SCHEMA.names)


def capture_samples(
    capture: str,
    subject: str,
    frame_ids: Sequence[int],
    segments: Sequence[str],
    camera_ids: Sequence[str],
    valid_image: np.ndarray,
    valid_segmentation: np.ndarray,
    valid_frame: np.ndarray,
) -> pa.Table:
    """Rows of one capture, frame-major then camera (F * C rows).

    ``valid_image``, ``valid_segmentation``: (F, C) bool; ``valid_frame``: (F,) bool, the AND of the
    per-frame assets a sample needs (head pose, vertices, uv texture)."""
    F, C = len(frame_ids), len(camera_ids)
    vi = np.asarray(valid_image, dtype=bool).reshape(F, C)
    vs = np.asarray(valid_segmentation, dtype=bool).reshape(F, C)
    vf = np.asarray(valid_frame, dtype=bool).reshape(F)
    if len(segments) != F:
        raise ValueError(f"{capture}: {len(segments)} segments for {F} frames")
    fi = np.repeat(np.arange(F, dtype=np.int32), C)
    ci = np.tile(np.arange(C, dtype=np.int16), F)
    cols = {
        "capture": pa.array(np.full(F * C, capture, dtype=object), pa.string()),
        "subject": pa.array(np.full(F * C, subject, dtype=object), pa.string()),
        "frame_index": pa.array(fi, pa.int32()),
        "frame_id": pa.array(np.asarray(frame_ids, dtype=np.int32)[fi], pa.int32()),
        "segment": pa.array(np.asarray(segments, dtype=object)[fi], pa.string()),
        "camera_index": pa.array(ci, pa.int16()),
        "camera_id": pa.array(np.asarray(camera_ids, dtype=object)[ci], pa.string()),
        "valid": pa.array((vi & vf[:, None]).reshape(-1), pa.bool_()),
        "valid_image": pa.array(vi.reshape(-1), pa.bool_()),
        "valid_segmentation": pa.array(vs.reshape(-1), pa.bool_()),
    }
    return pa.Table.from_pydict(cols, schema=SAMPLES_SCHEMA)


def write_samples(tables: Iterable[pa.Table], path: str | os.PathLike[str]) -> Path:
    """Stream per-capture tables into ``samples.parquet`` atomically (one capture in memory at a time)."""
    return write_batches_atomic(tables, SAMPLES_SCHEMA, path)


def read_samples(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read ``samples.parquet`` (FileNotFoundError naming the path if absent)."""
    table = read_table_any(path, columns=list(columns) if columns else None, schema=SAMPLES_SCHEMA)
    if table is None:
        raise FileNotFoundError(f"no samples manifest at {path} (run `ava256 repack` first)")
    return table.to_pandas()
