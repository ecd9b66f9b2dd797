"""Batched JPEG decoding on the training GPU (nvJPEG through ``torchvision.io.decode_jpeg``), for stores
repacked with ``--codec jpeg``.

The loader's workers then ship each picture's JFIF bytes (about 1/10 of its pixels) instead of decoding it;
:func:`ava256.data.finish_batch` decodes a batch's pictures in one call on the device. Where torchvision is
not installed, or its CUDA decoder fails its check, :func:`gpu_jpeg_decoder` says so once and returns None,
and the workers decode on the CPU (Pillow) as for any other codec.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch

from ava256.store.codecs import decode_jpeg, encode_jpeg

log = logging.getLogger(__name__)

#: decodes a list of 1-D uint8 CPU tensors (JFIF files) into a (B, 3, H, W) uint8 tensor on the device
BatchDecoder = Callable[[Sequence[torch.Tensor]], torch.Tensor]


@lru_cache(maxsize=8)
def gpu_jpeg_decoder(device: str) -> BatchDecoder | None:
    """A batch decoder on CUDA ``device`` ("cuda", "cuda:1"), or None (with one warning saying why) where
    there is none: not a CUDA device, no torchvision, or its decode of a test picture differs from Pillow's
    by more than JPEG decoders do (a mean of 1 grey level)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode_jpeg
    except ImportError as exc:
        log.warning(
            "GPU JPEG decode: torchvision is not importable (%s); pictures are decoded on the CPU", exc
        )
        return None

    def decode(payloads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tv_decode_jpeg(list(payloads), mode=ImageReadMode.RGB, device=dev))

    rng = np.random.default_rng(0)
    probe = np.clip(rng.normal(128, 40, (3, 1, 24, 40, 3)).cumsum(axis=3) / 4, 0, 255).astype(np.uint8)
    files = [encode_jpeg(p, 90, "4:4:4") for p in probe]
    try:
        got = decode([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]).cpu().numpy()
    except Exception as exc:  # any failure of the CUDA decoder means: use the CPU
        log.warning("GPU JPEG decode on %s failed its check (%s); pictures are decoded on the CPU", dev, exc)
        return None
    want = np.stack([decode_jpeg(f, p.shape)[0].transpose(2, 0, 1) for f, p in zip(files, probe)])
    err = float(np.abs(got.astype(np.float64) - want).mean())
    if got.shape != want.shape or err > 1.0:
        log.warning(
            "GPU JPEG decode on %s differs from Pillow's (mean %.2f levels); decoding on the CPU", dev, err
        )
        return None
    return decode
