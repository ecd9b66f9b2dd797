"""Schemas and atomic read/write of split manifests: ``STORE/_splits/<name>/{train,val,test}.parquet`` plus
``STORE/_splits/<name>/split.json`` (the parameters and counts that produced them).

A split part has exactly the columns of ``samples.parquet`` (one row per (capture, frame, camera)), restricted
to valid samples, sorted by (capture, frame_index, camera_index). Pure pyarrow/pandas: no Dask, no torch.
STORE is a local folder or an fsspec URL (:mod:`ava256.store.urls`); paths returned for a URL are strings.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ava256.atomic import atomic_write_bytes
from ava256.manifests.samples import SAMPLES_SCHEMA
from ava256.store import urls

#: Names of the three parts of every split, in order.
PARTS: tuple[str, ...] = ("train", "val", "test")

#: Folder (under the store root) holding one sub-folder per named split.
SPLITS_DIR = "_splits"
PARAMS_FILE = "split.json"
SPLIT_FORMAT_VERSION = 1

#: Columns of ``samples.parquet`` (defined once in ``ava256.manifests.samples``) and therefore of every split
#: part.
SPLIT_SCHEMA = SAMPLES_SCHEMA
SAMPLE_COLUMNS: tuple[str, ...] = tuple(SAMPLES_SCHEMA.names)
SORT_KEYS: tuple[str, ...] = ("capture", "frame_index", "camera_index")


def split_dir(store: str | os.PathLike[str], name: str) -> Path | str:
    """``STORE/_splits/<name>`` (a Path, or a URL string); ValueError for a name that is not a plain folder
    name."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"split name must be a plain folder name, got {name!r}")
    return urls.join(store, SPLITS_DIR, name)


def split_part_path(store: str | os.PathLike[str], name: str, part: str) -> Path | str:
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; expected one of {', '.join(PARTS)}")
    return urls.join(split_dir(store, name), f"{part}.parquet")


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the split columns, in order, with the schema's dtypes.

    Raises ValueError naming the missing columns."""
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"samples table lacks column(s) {missing}; has {list(df.columns)}")
    table = pa.Table.from_pandas(df[list(SAMPLE_COLUMNS)], preserve_index=False)
    table = table.cast(SPLIT_SCHEMA)
    return table.to_pandas()


def write_part(path: Path | str, df: pd.DataFrame) -> None:
    """Write one split part atomically (temp file + ``os.replace``) with :data:`SPLIT_SCHEMA`."""
    table = pa.Table.from_pandas(conform(df), schema=SPLIT_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_split(
    store: str | os.PathLike[str], name: str, parts: Mapping[str, pd.DataFrame], params: Mapping[str, Any]
) -> Path:
    """Write ``train/val/test.parquet`` then ``split.json`` (written last: its presence marks a complete
    split). Every file is replaced atomically. Returns the split folder."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise ValueError(f"split {name!r} lacks part(s) {missing}")
    folder = split_dir(store, name)
    _remove(urls.join(folder, PARAMS_FILE))  # an interrupted rewrite must not look complete
    for part in PARTS:
        write_part(urls.join(folder, f"{part}.parquet"), parts[part])
    payload = {"format_version": SPLIT_FORMAT_VERSION, **params}
    data = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(urls.join(folder, PARAMS_FILE), data)
    return folder


def _remove(path: Path | str) -> None:
    if isinstance(path, Path):
        path.unlink(missing_ok=True)
        return
    fs, p = urls.filesystem(path)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass


def read_split_part(store: str | os.PathLike[str], name: str, part: str) -> pd.DataFrame:
    """Read one part of a written split as a DataFrame with :data:`SPLIT_SCHEMA` columns.

    FileNotFoundError names the split and lists the splits that exist."""
    path = split_part_path(store, name, part)
    try:
        if not urls.isfile(urls.join(split_dir(store, name), PARAMS_FILE)):
            raise FileNotFoundError(path)
        data = urls.read_bytes(path)
    except FileNotFoundError:
        root = urls.join(store, SPLITS_DIR)
        have = [n for n in urls.listdir(root) if urls.isfile(urls.join(root, n, PARAMS_FILE))]
        raise FileNotFoundError(
            f"no complete split {name!r} under {root} (missing {part}.parquet or {PARAMS_FILE}); "
            f"existing splits: {have or 'none'} — run `ava256 split {store} --protocol ...`"
        ) from None
    return pq.read_table(io.BytesIO(data), schema=SPLIT_SCHEMA).to_pandas()


def read_split_params(store: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """The ``split.json`` of a written split."""
    path = urls.join(split_dir(store, name), PARAMS_FILE)
    try:
        return json.loads(urls.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"no complete split {name!r}: {path} does not exist") from None
