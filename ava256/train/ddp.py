"""Data-parallel setup: the DDP wrap with its tuned options, learning-rate scaling and a replica check.

Overlap design (docs/performance.md#multi-gpu): gradients are all-reduced in buckets of
``train.ddp_bucket_mb`` while the rest of the backward pass runs; with ``static_graph`` DDP records the
order in which gradients become ready in the first iteration and rebuilds its buckets in that order, so each
bucket is launched as soon as its last gradient is written; ``gradient_as_bucket_view`` makes every
``.grad`` a view into its bucket (no copy in, no copy out, one gradient-sized buffer less).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

LR_SCALINGS = ("none", "linear", "sqrt")
_DDP_ARGS = frozenset(inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters)


class ReplicaDivergence(RuntimeError):
    """The ranks' parameters differ: data-parallel training is no longer one model."""


def ddp_options(tc: dict[str, Any]) -> dict[str, Any]:
    """``DistributedDataParallel`` keyword arguments from the ``train`` config section.

    ``broadcast_buffers`` is off: the model's buffers (vertex normalisation, uv lookup tables) are constants
    that DDP already broadcasts from rank 0 once, when it wraps the model; a per-step broadcast would add a
    collective in front of every forward pass."""
    mb = float(tc["ddp_bucket_mb"])
    if mb <= 0:
        raise ValueError(f"train.ddp_bucket_mb must be > 0, got {mb}")
    # newer torch names the per-forward buffer sync forward_sync_buffers (the sync at wrap time stays)
    sync = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
    return {
        "bucket_cap_mb": mb,
        "static_graph": bool(tc["ddp_static_graph"]),
        "gradient_as_bucket_view": bool(tc["ddp_gradient_as_bucket_view"]),
        sync: bool(tc["ddp_broadcast_buffers"]),
    }


def wrap(model: nn.Module, device: torch.device, local_rank: int, tc: dict[str, Any]) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` with :func:`ddp_options` (one GPU per process)."""
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if device.type == "cuda" else None, **ddp_options(tc)
    )


def lr_factor(scaling: str, global_batch: int, ref_batch: int) -> float:
    """The learning-rate multiplier for ``global_batch`` samples per step against ``ref_batch``: 1
    (``none``), ``global / ref`` (``linear``) or ``sqrt(global / ref)`` (``sqrt``)."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"train.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {scaling!r}")
    if ref_batch <= 0 or global_batch <= 0:
        raise ValueError(f"batch sizes must be > 0 (global {global_batch}, train.lr_ref_batch {ref_batch})")
    ratio = global_batch / ref_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def scaled_lr(cfg: dict[str, Any], world: int) -> float:
    """``train.lr`` scaled by :func:`lr_factor` for the global batch ``data.batch_size * world``."""
    tc = cfg["train"]
    global_batch = int(cfg["data"]["batch_size"]) * world
    return float(tc["lr"]) * lr_factor(str(tc["lr_scaling"]), global_batch, int(tc["lr_ref_batch"]))


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes in ``named_parameters`` order (bitwise identity of two replicas)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_replicas(model: nn.Module) -> list[str]:
    """Every rank's :func:`parameter_digest` (collective; call on every rank). Raises
    :class:`ReplicaDivergence` naming the ranks that differ from rank 0."""
    mine = parameter_digest(model)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, mine)
    off = [r for r, d in enumerate(digests) if d != digests[0]]
    if off:
        raise ReplicaDivergence(f"DDP replicas differ: rank(s) {off} hold other parameters than rank 0")
    return digests


def parameter_table(model: nn.Module, depth: int = 2) -> list[tuple[str, int, bool]]:
    """(module prefix, parameter count, all trainable) per ``depth``-level module prefix, largest first: how
    the all-reduced gradient volume is spread over the model."""
    sizes: dict[str, int] = {}
    trainable: dict[str, bool] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        sizes[key] = sizes.get(key, 0) + p.numel()
        trainable[key] = trainable.get(key, True) and p.requires_grad
    return sorted(((k, n, trainable[k]) for k, n in sizes.items()), key=lambda r: -r[1])
