"""Glue between the split/loader stage (``ava256.data``) and the trainer: datasets and what the model must
know about them (topology, vertex normalisation, camera and identity counts)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ava256.models.uvmap import TopologyArrays, load_topology

log = logging.getLogger(__name__)


@dataclass
class DataInfo:
    """What the model needs to know about the data.

    topology: face mesh; vertmean (V, 3) float32 mm and vertstd (mm): the loader's vertex normalisation
    (``verts = (v - vertmean) / vertstd``); n_cameras / n_identities: ranges of ``camindex`` / ``idindex``;
    captures / camera_ids: the identity and camera tables (``idindex`` / ``camindex`` = position); stats: the
    loader's ``NormStats.state_dict()`` (render re-opens the store with it).
    """

    topology: TopologyArrays
    vertmean: np.ndarray
    vertstd: float
    n_cameras: int
    n_identities: int
    captures: list[str] = field(default_factory=list)
    camera_ids: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the topology (the package's), for checkpoints."""
        return {
            "vertmean": np.asarray(self.vertmean),
            "vertstd": float(self.vertstd),
            "n_cameras": int(self.n_cameras),
            "n_identities": int(self.n_identities),
            "captures": list(self.captures),
            "camera_ids": list(self.camera_ids),
            "stats": self.stats,
        }


class InMemoryDataset(Dataset):
    """Samples held in memory (a list of contract dicts); the benchmark's no-I/O baseline."""

    def __init__(self, samples: list[dict[str, Any]]):
        if not samples:
            raise ValueError("InMemoryDataset needs at least one sample")
        self.samples = samples

    @classmethod
    def from_dataset(cls, ds: Dataset, n: int, device: str | None = None) -> InMemoryDataset:
        """The first ``n`` samples of ``ds`` (cycled to fill ``n`` if ``ds`` is shorter), their tensors moved
        to ``device`` if given (then use ``pin_memory=False``)."""
        m = len(ds)
        samples = [ds[i % m] for i in range(n)]
        if device is not None:
            samples = [{k: v.to(device) if hasattr(v, "to") else v for k, v in s.items()} for s in samples]
        return cls(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def dataset_info(ds: Any, topology: TopologyArrays | None = None) -> DataInfo:
    """DataInfo of a :class:`ava256.data.ZarrSampleDataset` (its stats, identity and camera tables)."""
    st = ds.stats
    return DataInfo(
        topology if topology is not None else load_topology(),
        np.asarray(st.vert_mean, dtype=np.float32),
        float(st.vert_std),
        len(ds.camera_ids),
        len(ds.captures),
        list(ds.captures),
        list(ds.camera_ids),
        st.state_dict(),
    )


def open_datasets(
    store: str | os.PathLike[str],
    split: str,
    data_cfg: dict[str, Any],
    *,
    info: dict[str, Any] | None = None,
    parts: tuple[str, ...] = ("train", "val"),
) -> tuple[Dataset, Dataset | None, DataInfo]:
    """Datasets of ``STORE/_splits/<split>`` parts (default train and val) and their :class:`DataInfo`.

    The identity and camera tables (``idindex``/``camindex``) cover every part of the split (so a held-out
    subject still has an index); normalisation statistics are the first part's. ``info``: a checkpoint's
    ``DataInfo.to_dict()`` whose statistics and tables are reused instead (render, evaluation).
    """
    from ava256.data import NormStats, ZarrSampleDataset
    from ava256.manifests.splits import PARTS, read_split_part

    frames = {p: read_split_part(store, split, p) for p in PARTS}
    first = frames[parts[0]]
    if len(first) == 0:
        raise ValueError(f"split {split!r} of {store} has no {parts[0]} samples")
    if info is not None:
        captures, camera_ids = info["captures"], info["camera_ids"]
        stats = NormStats.from_state_dict(info["stats"])
    else:
        allrows = [df for df in frames.values() if len(df)]
        captures = sorted({str(c) for df in allrows for c in df["capture"].unique()})
        camera_ids = sorted({str(c) for df in allrows for c in df["camera_id"].unique()})
        stats = None
    ds_kw = {
        "downsample": data_cfg.get("downsample"),
        "captures": captures,
        "camera_ids": camera_ids,
        "normalize": not data_cfg.get("compact", True),
        "ship_jpeg": _gpu_decode(data_cfg),
    }
    first_ds = ZarrSampleDataset(store, first, stats=stats, **ds_kw)
    second = None
    if len(parts) > 1 and len(frames[parts[1]]):
        second = ZarrSampleDataset(store, frames[parts[1]], stats=first_ds.stats, **ds_kw)
    return first_ds, second, dataset_info(first_ds)


def _gpu_decode(data_cfg: dict[str, Any]) -> bool:
    """Whether compact samples of ``--codec jpeg`` stores ship JPEG bytes for nvJPEG on the training GPU
    (``data.gpu_decode``, default true, on a CUDA machine whose decoder passes its check)."""
    if (
        not data_cfg.get("compact", True)
        or not data_cfg.get("gpu_decode", True)
        or not torch.cuda.is_available()
    ):
        return False
    from ava256.data.pictures import gpu_jpeg_decoder

    return gpu_jpeg_decoder("cuda") is not None
