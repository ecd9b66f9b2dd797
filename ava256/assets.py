"""The asset registry: one :class:`Asset` per per-frame asset of a capture, saying how it goes from its raw
archive to its store array.

Each record holds the naming facts of its archive (:class:`ava256.capture.FrameArchive`: key, member
patterns, member cap, camera axis, side files; kept in :mod:`ava256.capture` so that naming needs no
decoder), the name and spec of its data array, and the decoder of one member. Fetch and synth read the
naming facts; repack, the store layout, ``info``, ``verify-store``, the repack selection and the loader read
the rest. The order of :data:`REGISTRY` is the store order (``assets`` attribute, selections, info).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ava256 import capture as cat
from ava256.capture import CAMERA, ENCODER, FRAME, NUM_KEYPOINTS
from ava256.formats.head_pose import read_head_pose
from ava256.formats.images import decode_gray, decode_labels, decode_rgb
from ava256.formats.keypoints import read_keypoints
from ava256.formats.ply import read_ply
from ava256.store.resample import resize_labels, resize_rgb

__all__ = ["CAMERA", "ENCODER", "FRAME", "Asset", "REGISTRY", "asset", "names"]

#: How an asset's array is compressed (:func:`ava256.store.layout.array_specs` maps each to codecs):
#: uint8 pictures with the selectable image codec (JPEG under a lossy ``--codec``), part labels with the
#: selectable lossless codec (the label codec under a lossy one), or numbers (Blosc zstd, byte shuffle).
PICTURE, LABELS, NUMERIC = "picture", "labels", "numeric"

#: ``(member bytes, source size, stored (H, W)) -> the stored per-frame slice``; ValueError (with the reason)
#: for undecodable data or a shape other than the source size says. The source size is the (H, W) of images,
#: labels and IR images, (T, T) of uv textures, (V,) of meshes and None for the others; the stored (H, W) is
#: that of camera images and labels (None for the others).
Decoder = Callable[[bytes, Sequence[int] | None, Sequence[int] | None], np.ndarray]


@dataclass(frozen=True)
class Asset:
    """One per-frame asset: its archive's naming facts, its data array (``array`` name, ``dtype``, ``fill``
    value, dimension names ``dims`` and ``frame_shape``: the shape of one frame of one camera for a
    :class:`ava256.store.layout.CaptureGeometry`, None where the capture has no such array), its ``codec``
    kind (:data:`PICTURE`, :data:`LABELS` or :data:`NUMERIC`) and its member ``decode``\\ r."""

    archive: cat.FrameArchive
    array: str
    dtype: str
    fill: Any
    dims: tuple[str, ...]
    frame_shape: Callable[[Any], tuple[int, ...] | None]
    codec: str
    decode: Decoder

    @property
    def name(self) -> str:
        return self.archive.asset

    @property
    def axis(self) -> str:
        """:data:`CAMERA` ((F, C, ...) arrays), :data:`ENCODER` ((Fe, 5, ...)) or :data:`FRAME` ((F, ...))."""
        return self.archive.axis


def check_shape(x: np.ndarray, shape: Sequence[int]) -> None:
    """ValueError unless ``x`` has ``shape``."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"decoded shape {tuple(x.shape)}, expected {tuple(shape)}")


# --- decoders: member bytes -> the stored per-frame slice ---------------------------------------------------
def _image(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = decode_rgb(data)
    check_shape(x, (*source_hw, 3))
    return resize_rgb(x, out_hw)


def _segmentation(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = decode_labels(data)
    check_shape(x, source_hw)
    return resize_labels(x, out_hw)


def _uv_texture(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = decode_rgb(data)
    check_shape(x, (*source_hw, 3))
    return x


def _vertices(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = read_ply(data)
    check_shape(x, (source_hw[0], 3))
    return x


def _keypoints(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    return read_keypoints(data)


def _head_pose(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = read_head_pose(data)
    if not np.isfinite(x).all():  # the tracker lost the head: mask it (formats/head_pose.py NaN policy)
        raise ValueError("head pose has non-finite values (tracking lost)")
    return x


def _encoder_image(data: bytes, source_hw: Sequence[int] | None, out_hw: Sequence[int] | None) -> np.ndarray:
    x = decode_gray(data)
    check_shape(x, source_hw)
    return x


# --- the registry ---------------------------------------------------------------------------------------------
def _entry(name: str, *spec: Any) -> Asset:
    return Asset(cat.FRAME_ARCHIVES[name], *spec)


_NAN = math.nan

REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in (
        _entry("image", "image", "uint8", 0, ("frame", "camera", "height", "width", "rgb"),
               lambda g: (*g.image_hw, 3) if g.image_hw else None, PICTURE, _image),
        _entry("segmentation", "segmentation", "uint8", 0, ("frame", "camera", "height", "width"),
               lambda g: tuple(g.image_hw) if g.image_hw else None, LABELS, _segmentation),
        _entry("uv_texture", "uv_texture", "uint8", 0, ("frame", "tex_v", "tex_u", "rgb"),
               lambda g: (g.texture_size, g.texture_size, 3) if g.texture_size else None, PICTURE, _uv_texture),
        _entry("vertices", "vertices", "float32", _NAN, ("frame", "vertex", "xyz"),
               lambda g: (g.n_vertices, 3) if g.n_vertices else None, NUMERIC, _vertices),
        _entry("keypoints_3d", "keypoints_3d", "float32", _NAN, ("frame", "keypoint", "keypoint_field"),
               lambda g: (NUM_KEYPOINTS, 5), NUMERIC, _keypoints),
        _entry("head_pose", "head_pose", "float32", _NAN, ("frame", "pose_row", "pose_col"),
               lambda g: (3, 4), NUMERIC, _head_pose),
        _entry("encoder_image", "encoder/image", "uint8", 0,
               ("encoder_frame", "encoder_camera", "encoder_height", "encoder_width"),
               lambda g: tuple(g.encoder_hw) if g.encoder_hw and g.n_encoder_frames else None, PICTURE,
               _encoder_image),
    )
}  # fmt: skip

if list(REGISTRY) != list(cat.FRAME_ARCHIVES) or set(cat.ASSETS) != {"meta", *REGISTRY}:
    raise AssertionError("the asset registry, capture.FRAME_ARCHIVES and capture.ASSETS name other assets")


def asset(name: str) -> Asset:
    """The registry record of ``name``; ValueError for another name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown asset {name!r}; expected one of {', '.join(REGISTRY)}") from None


def names(*axes: str) -> tuple[str, ...]:
    """Asset names in store order, only those of the given axes where any are given."""
    return tuple(n for n, a in REGISTRY.items() if not axes or a.axis in axes)
