"""TEMPORARY: the private fast paths repack used before they were replaced by public ones (PIL._avif decode,
glibc mallopt via ctypes), kept only so that benchmarks/repack.py can measure private vs public in one run
(``AVA256_LEGACY_FASTPATHS=1``). Deleted in the next commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ava256.formats.images import decode_rgb

LEGACY_ENV = "AVA256_LEGACY_FASTPATHS"


def _decode_rgb_fast(data: bytes) -> np.ndarray:
    """:func:`decode_rgb` of ``data`` (same pixels, same errors), without Pillow's image round trip for an
    RGB AVIF: the decoder's packed RGB bytes are the (H, W, 3) array (read-only, no copy). ``Image.open`` +
    ``load`` + ``np.asarray`` copies those bytes twice more (into the image's block memory in 64 KiB tiles,
    then out again via ``tobytes``): ~2 ms of CPU per 667 x 1024 image, a quarter of the decode. Anything
    else (PNG, an RGBA or grey AVIF, an error) goes through :func:`decode_rgb`."""
    if _AVIF is not None:
        try:
            if _AVIF.accept(data[:16]):
                dec = _AVIF.module.AvifDecoder(data, _AVIF.plugin.DECODE_CODEC_CHOICE, _AVIF.threads())
                (w, h), _n_frames, mode = dec.get_info()[:3]
                limit = _AVIF.image.MAX_IMAGE_PIXELS
                if mode == "RGB" and (limit is None or w * h <= limit):  # bigger: decode_rgb warns / refuses
                    return np.frombuffer(dec.get_frame(0)[0], dtype=np.uint8).reshape(h, w, 3)
        except Exception:  # noqa: BLE001 - decode_rgb below raises the canonical ValueError (or decodes it)
            pass
    return decode_rgb(data)


@dataclass(frozen=True)
class _AvifApi:
    module: Any  # PIL._avif
    plugin: Any  # PIL.AvifImagePlugin
    image: Any  # PIL.Image

    def accept(self, prefix: bytes) -> bool:
        return self.plugin._accept(prefix) is True

    def threads(self) -> int:
        return int(self.plugin._get_default_max_threads())


def _load_avif_api() -> _AvifApi | None:
    try:
        from PIL import AvifImagePlugin, Image, _avif

        needed = (
            hasattr(_avif, "AvifDecoder")
            and all(
                hasattr(AvifImagePlugin, a)
                for a in ("_accept", "_get_default_max_threads", "DECODE_CODEC_CHOICE")
            )
            and hasattr(Image, "MAX_IMAGE_PIXELS")
        )
        # a Pillow without these (private) names, or without AVIF: decode_rgb only
        if not (needed and AvifImagePlugin.SUPPORTED):
            return None
        return _AvifApi(_avif, AvifImagePlugin, Image)
    except ImportError:
        return None


_AVIF = _load_avif_api()


#: glibc malloc settings of a process running repack tasks (see :func:`tune_malloc`): blocks up to 32 MiB (the
#: largest mmap threshold glibc accepts) come from the heap, and up to 16 MiB of free heap top are kept
#: (measured: 8, 16 or 64 MiB decode equally fast; the smaller, the less a worker keeps when idle).
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 16 * 2**20
_malloc_tuned: bool | None = None


def tune_malloc() -> bool:
    """Make this process reuse freed multi-MB blocks instead of returning them to the kernel (glibc
    ``mallopt``: ``M_MMAP_THRESHOLD`` = 32 MiB, ``M_TRIM_THRESHOLD`` = 16 MiB); once per process, on every
    ``run_task`` (decode-only too). Returns whether the settings are in effect (False off glibc).

    Why: each frame allocates and frees several 2-8 MB blocks (the AVIF decoder's planes and RGB output, the
    compressed chunk). Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's
    mmap threshold at 128 KiB, so every such block was a fresh ``mmap`` whose pages the kernel faults in
    and zeroes one by one, then unmapped: measured in-process with that environment, a 667 x 1024 AVIF
    decode + LZ4 chunk cost 12.0 ms of CPU instead of 5.5 ms (decode alone 10.5 vs 4.4 ms). Memory stays
    bounded: the heap never holds more than the task's peak working set (a few frames) plus <= 16 MiB of
    free top per malloc arena."""
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        _malloc_tuned = bool(
            mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
            and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
        )
    return _malloc_tuned
