"""Training data: a torch Dataset over repacked Zarr stores and split manifests, a seeded resumable DDP-aware
sampler, and batching helpers. ``ava256.data.legacy`` is the raw-zip baseline used only by benchmarks/tests.
"""

from ava256.data.dataset import ZarrSampleDataset, compute_norm_stats, split_dataset
from ava256.data.loader import batch_size_of, collate_samples, finish_batch, make_loader, pin_batch
from ava256.data.normalization import NormStats
from ava256.data.sampler import ResumableSampler

__all__ = [
    "NormStats",
    "ResumableSampler",
    "ZarrSampleDataset",
    "batch_size_of",
    "collate_samples",
    "compute_norm_stats",
    "finish_batch",
    "make_loader",
    "pin_batch",
    "split_dataset",
]
