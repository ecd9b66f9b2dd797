"""Batching: a collate for sample dicts, memory pinning when CUDA is present, and ``make_loader``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, default_collate

from ava256.data.pictures import gpu_jpeg_decoder
from ava256.data.sampler import ResumableSampler
from ava256.store.codecs import decode_jpeg

#: suffix of a compact batch's keys that hold JPEG files instead of pixels (``ZarrSampleDataset(ship_jpeg=True)``)
JPEG_SUFFIX = "_jpeg"


def collate_samples(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack sample dicts into a batch: tensors gain a leading batch dimension, ``capture`` becomes a list
    of str and ``frame_index`` an int64 tensor. ``None`` entries are dropped (a dataset never returns None;
    this keeps a custom one from breaking a batch); an all-None batch gives None. Samples that could not be read
    (:class:`ava256.data.dataset.BadSample`) are left out and listed under ``batch["bad_samples"]``; a batch of
    only those is ``{"bad_samples": [...]}``.

    When the samples' tensors are the consecutive slots ``base[0], ..., base[B-1]`` of one batch tensor
    (``ZarrSampleDataset.__getitems__`` writes its float pictures that way), the batch is ``base`` itself:
    no second copy. (Broadcast views of per-worker constants are deliberately not used: ``pin_memory`` cannot
    copy into a tensor with overlapping elements.)"""
    from ava256.data.dataset import BadSample

    bad = [s for s in samples if isinstance(s, BadSample)]
    items = [s for s in samples if s is not None and not isinstance(s, BadSample)]
    if not items:
        return {BAD_SAMPLES: bad} if bad else None
    batch = _collate(items)
    if bad:
        batch[BAD_SAMPLES] = bad
    return batch


#: batch key listing the :class:`ava256.data.dataset.BadSample` s skipped from that batch (absent if none)
BAD_SAMPLES = "bad_samples"


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    shipped = [k for k in items[0] if k.endswith(JPEG_SUFFIX)]
    if shipped:  # JPEG files of different lengths stay lists, for finish_batch to decode
        rest = _collate([{k: v for k, v in s.items() if k not in shipped} for s in items])
        return {**rest, **{k: [s[k] for s in items] for k in shipped}}
    first = items[0]
    ready: dict[str, torch.Tensor] = {}
    for k, v in first.items():
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            continue
        base = _batch_base([s[k] for s in items])
        if base is not None:
            ready[k] = base
    if not ready:
        return default_collate(items)
    batch = default_collate([{k: v for k, v in s.items() if k not in ready} for s in items])
    return {k: ready[k] if k in ready else batch[k] for k in first}


def _batch_base(ts: list[torch.Tensor]) -> torch.Tensor | None:
    """A tensor ``base`` of ``len(ts)`` rows with ``base[b]`` the memory of ``ts[b]`` (each contiguous, one after
    another in one storage), or None."""
    first = ts[0]
    storage = first.untyped_storage()
    step = first.numel() * first.element_size()
    for b, t in enumerate(ts):
        same = t.untyped_storage().data_ptr() == storage.data_ptr() and t.dtype == first.dtype
        if not same or t.shape != first.shape or not t.is_contiguous():
            return None
        if t.data_ptr() != first.data_ptr() + b * step:
            return None
    base = first.new_empty(0)
    return base.set_(storage, first.storage_offset(), (len(ts), *first.shape))


def pin_batch(batch: Any) -> Any:
    """Page-lock every tensor of a (nested) batch when CUDA is available, so ``.to(device, non_blocking=True)``
    overlaps the copy with compute; returns the batch unchanged on CPU-only machines."""
    if not torch.cuda.is_available():
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):  # JPEG files are read by the decoder from pageable memory
        return {k: v if k.endswith(JPEG_SUFFIX) else pin_batch(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(pin_batch(v) for v in batch)
    return batch


def finish_batch(
    batch: dict[str, Any],
    dataset: Any,
    device: torch.device | str | None = None,
    non_blocking: bool = True,
) -> dict[str, Any]:
    """Turn a compact batch of ``dataset`` (a ``ZarrSampleDataset(..., normalize=False)``: uint8 ``image``
    (B, H, W, 3) and ``tex`` (B, T, T, 3), ``verts`` in mm, no per-capture constants) into the contract batch
    on ``device``: tensors moved (``non_blocking`` from pinned memory); ``image`` (B, 3, H, W) float32
    0..255; ``tex``, ``verts`` normalised with ``dataset.stats``; ``neut_tex``/``neut_verts`` of each
    sample's capture from ``dataset.device_constants`` (cached on the device); ``pixelcoords`` (B, H, W, 2)
    (a broadcast view of one grid). On a GPU this moves 7x fewer bytes through workers, shared memory and
    PCIe than the float contract batch and takes all float math off the CPU.
    ValueError for a batch that is not compact."""
    pictures = [k for k in ("image", "tex") if k in batch or k + JPEG_SUFFIX in batch]
    if (
        pictures != ["image", "tex"]
        or "neut_tex" in batch
        or any(batch[k].dtype != torch.uint8 for k in pictures if k in batch)
    ):
        raise ValueError(
            "finish_batch needs a compact batch of a ZarrSampleDataset(normalize=False) (uint8 image/tex or "
            "their JPEG bytes, no neut_tex)"
        )
    dev = torch.device(device) if device is not None else batch["verts"].device
    out = {
        k: v.to(dev, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
        if not k.endswith(JPEG_SUFFIX)
    }
    sizes = {"image": tuple(dataset.image_size), "tex": (dataset.texture_size,) * 2}
    for k in pictures:
        if k + JPEG_SUFFIX in batch:  # (B, 3, H, W) on the device -> the (B, H, W, 3) view finish expects
            out[k] = decode_jpeg_batch(batch[k + JPEG_SUFFIX], dev, sizes[k]).permute(0, 2, 3, 1)
    stats = dataset.stats
    tex_mean, vert_mean = stats.on(dev)
    inv_tex, inv_vert = 1.0 / stats.tex_std, 1.0 / stats.vert_std
    neut_tex, neut_verts, pixelcoords = dataset.device_constants(list(batch["capture"]), dev)
    image = out["image"]
    B, H, W, _ = image.shape
    out["image"] = torch.empty((B, 3, H, W), dtype=torch.float32, device=dev).copy_(image.permute(0, 3, 1, 2))
    for k, t in (("tex", out["tex"]), ("neut_tex", neut_tex)):
        f = torch.empty((B, 3, *t.shape[1:3]), dtype=torch.float32, device=dev).copy_(t.permute(0, 3, 1, 2))
        out[k] = f.sub_(tex_mean).mul_(inv_tex)
    out["verts"] = (out["verts"].float() - vert_mean).mul_(inv_vert)
    out["neut_verts"] = neut_verts
    out["pixelcoords"] = pixelcoords.expand(B, *pixelcoords.shape)
    return out


def decode_jpeg_batch(
    files: Sequence[torch.Tensor], device: torch.device, hw: tuple[int, int]
) -> torch.Tensor:
    """(B, 3, H, W) uint8 on ``device`` from B JFIF files of (H, W) = ``hw`` RGB pictures (1-D uint8 CPU
    tensors): nvJPEG on a CUDA device where it works (:func:`ava256.data.pictures.gpu_jpeg_decoder`), else
    Pillow on this thread."""
    decoder = gpu_jpeg_decoder(str(device)) if device.type == "cuda" else None
    if decoder is not None:
        return decoder(files)
    pics = [decode_jpeg(f.numpy(), (*hw, 3)) for f in files]
    return torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2).to(device)


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of samples in a collated batch (what to pass to ``ResumableSampler.advance``)."""
    return int(batch["idindex"].shape[0]) if "idindex" in batch else len(next(iter(batch.values())))


class ThreadLoader:
    """Batches of ``dataset`` read by ``num_workers`` threads of this process: no worker processes, no
    shared memory, no pickling. Iterating yields ``collate_fn(dataset.__getitems__(indices))`` for the
    ``batch_size`` groups of ``sampler``'s indices, in order, keeping ``prefetch`` batches in flight
    (pinned when ``pin_memory``). An exception of the dataset is raised here, at its batch.

    For :class:`ava256.data.ZarrSampleDataset` on a local store this is faster than a DataLoader's worker
    processes: a compact sample costs ~1 ms of which most is ``pread`` and decompression, which release the
    GIL, while moving it through a worker's shared memory costs more than reading it (fresh shared-memory
    pages are faulted in and zeroed for every batch). ``benchmarks/loader.py`` measures both.
    The dataset must be safe to read from several threads (``ZarrSampleDataset`` is).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        sampler: Any,
        num_workers: int = 4,
        prefetch: int | None = None,
        collate_fn: Any = None,
        pin_memory: bool = False,
        drop_last: bool = False,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"ThreadLoader needs at least one thread, got num_workers={num_workers}")
        self.dataset, self.sampler = dataset, sampler
        self.batch_size, self.num_workers, self.drop_last = int(batch_size), int(num_workers), bool(drop_last)
        self.prefetch = max(1, int(prefetch) if prefetch is not None else 2 * self.num_workers)
        self.collate_fn = collate_fn or collate_samples
        self.pin_memory = bool(pin_memory)
        self.batch_sampler = BatchSampler(sampler, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _load(self, indices: list[int]) -> Any:
        get = getattr(self.dataset, "__getitems__", None)
        items = get(indices) if get is not None else [self.dataset[i] for i in indices]
        batch = self.collate_fn(items)
        return pin_batch(batch) if self.pin_memory else batch

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.batch_sampler)
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="ava256-loader")
        pending: deque[Future] = deque(pool.submit(self._load, b) for b in islice(batches, self.prefetch))
        try:
            while pending:
                fut = pending.popleft()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))
                yield fut.result()
        finally:  # also when the consumer stops early: drop queued batches, wait for running ones
            pool.shutdown(wait=True, cancel_futures=True)


#: ``make_loader(workers=...)`` choices
WORKER_KINDS = ("threads", "processes")


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int = 4,
    num_workers: int = 2,
    workers: str = "threads",
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    sampler: ResumableSampler | None = None,
    prefetch_factor: int = 2,
    persistent_workers: bool | None = None,
    pin_memory: bool | None = None,
    collate_fn: Any = None,
    generator: torch.Generator | None = None,
) -> ThreadLoader | DataLoader:
    """A loader over ``dataset`` with a :class:`ResumableSampler` (rank/world from torch.distributed),
    ``collate_fn`` (default :func:`collate_samples`), ``num_workers`` workers and pinned memory when CUDA is
    present (``pin_memory=None``).

    ``workers="threads"`` (default): a :class:`ThreadLoader` (``num_workers`` threads, ``prefetch_factor *
    num_workers`` batches in flight); ``"processes"``: a torch DataLoader with worker processes
    (``persistent_workers`` default True; ``generator`` seeds their base seed). ``num_workers=0`` reads in
    the calling thread (a DataLoader without workers).

    The sampler is ``loader.sampler``; the training loop calls ``loader.sampler.advance(batch_size_of(b))``
    after using each batch and ``loader.sampler.next_epoch()`` after each epoch, and checkpoints
    ``loader.sampler.state_dict()``. ``drop_last`` drops the epoch's incomplete last batch (and, across
    ranks, the indices that would need padding)."""
    if workers not in WORKER_KINDS:
        raise ValueError(f"workers must be one of {WORKER_KINDS}, got {workers!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if sampler is None:
        sampler = ResumableSampler(len(dataset), seed=seed, shuffle=shuffle, drop_last=drop_last)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    collate_fn = collate_fn or collate_samples
    if workers == "threads" and num_workers > 0:
        return ThreadLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            prefetch=prefetch_factor * num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
        )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )
