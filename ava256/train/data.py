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
    captures: capture folder of every identity index (for render).
    """

    topology: TopologyArrays
    vertmean: np.ndarray
    vertstd: float
    n_cameras: int
    n_identities: int
    captures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vertstd": float(self.vertstd),
            "n_cameras": int(self.n_cameras),
            "n_identities": int(self.n_identities),
            "captures": list(self.captures),
        }


class InMemoryDataset(Dataset):
    """Samples held in memory (a list of contract dicts); the benchmark's no-I/O baseline."""

    def __init__(self, samples: list[dict[str, Any]]):
        if not samples:
            raise ValueError("InMemoryDataset needs at least one sample")
        self.samples = samples

    @classmethod
    def from_dataset(cls, ds: Dataset, n: int) -> InMemoryDataset:
        """The first ``n`` samples of ``ds`` (cycled to fill ``n`` if ``ds`` is shorter)."""
        m = len(ds)
        return cls([ds[i % m] for i in range(n)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def _attr(ds: Any, *names: str) -> Any:
    for n in names:
        if hasattr(ds, n):
            return getattr(ds, n)
    return None


def dataset_info(ds: Dataset) -> DataInfo:
    """DataInfo from a :class:`ava256.data.ZarrSampleDataset`'s attributes."""
    vm = _attr(ds, "vertmean", "vertex_mean")
    vs = _attr(ds, "vertstd", "vertex_std")
    captures = list(_attr(ds, "captures", "capture_names") or [])
    n_ids = _attr(ds, "n_identities", "num_identities")
    n_cams = _attr(ds, "n_cameras", "num_cameras")
    if vm is None or vs is None or n_ids is None or n_cams is None:
        raise ValueError("dataset does not expose vertmean/vertstd/n_identities/n_cameras")
    vm = vm.numpy() if torch.is_tensor(vm) else np.asarray(vm)
    return DataInfo(load_topology(), vm.astype(np.float32), float(vs), int(n_cams), int(n_ids), captures)


def open_datasets(
    store: str | os.PathLike[str],
    split: str,
    data_cfg: dict[str, Any],
    parts: tuple[str, str] = ("train", "val"),
) -> tuple[Dataset, Dataset | None, DataInfo]:
    """Train and val datasets of ``STORE/_splits/<split>`` and their :class:`DataInfo`."""
    from ava256.data import ZarrSampleDataset
    from ava256.manifests.splits import read_split_part

    train_df = read_split_part(store, split, parts[0])
    val_df = read_split_part(store, split, parts[1])
    if len(train_df) == 0:
        raise ValueError(f"split {split!r} of {store} has no training samples")
    train_ds = ZarrSampleDataset(store, train_df, downsample=int(data_cfg["downsample"]))
    val_ds = ZarrSampleDataset(store, val_df, downsample=int(data_cfg["downsample"])) if len(val_df) else None
    return train_ds, val_ds, dataset_info(train_ds)
