"""``ava256.jpeg``: a Zarr v3 array-to-bytes codec that stores each uint8 picture chunk as one baseline JPEG.

A chunk holds one picture: shape ``(1, ..., H, W, 3)`` (RGB) or ``(1, ..., H, W)`` (grey), leading axes of size
1. Encoding goes through Pillow's libjpeg-turbo at the configured ``quality`` and chroma ``subsampling``;
decoding through Pillow on the CPU, or nvJPEG on a GPU (:mod:`ava256.data.pictures`), since the stored bytes
are a plain JFIF file. The codec is lossy: figures (bytes per image against the source AVIF, PSNR against the
lossless decode) come from ``python benchmarks/codecs.py``; docs/store-format.md states them.

Zarr finds the codec by its name through the ``zarr.codecs`` entry point that ava256's installation declares
(so zarr and xarray open a store wherever ava256 is installed); importing this module registers it too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr.registry
from PIL import Image
from zarr.abc.buffer import Buffer, NDBuffer
from zarr.abc.codec import ArrayBytesCodec

CODEC_NAME = "ava256.jpeg"
#: Pillow's names of the chroma subsamplings the codec accepts
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")


def picture_shape(chunk_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W) or (H, W, 3) of the picture in a chunk of ``chunk_shape``; ValueError if it holds more than one."""
    shape = tuple(int(s) for s in chunk_shape)
    tail = shape[-3:] if len(shape) >= 3 and shape[-1] == 3 else shape[-2:]
    lead = shape[: len(shape) - len(tail)]
    if len(tail) < 2 or any(s != 1 for s in lead):
        raise ValueError(f"chunk shape {shape} is not one (H, W) or (H, W, 3) picture")
    return tail


def encode_jpeg(picture: np.ndarray, quality: int, subsampling: str) -> bytes:
    """JFIF bytes of a uint8 (…, H, W, 3) or (…, H, W) picture (leading axes of size 1)."""
    a = np.ascontiguousarray(picture, dtype=np.uint8).reshape(picture_shape(picture.shape))
    out = io.BytesIO()
    Image.fromarray(a).save(out, "JPEG", quality=quality, subsampling=subsampling if a.ndim == 3 else 0)
    return out.getvalue()


def decode_jpeg(data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 picture of JFIF ``data``, as an array of ``shape`` (a chunk shape); ValueError if the
    picture's size or channels do not match it."""
    want = picture_shape(shape)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            pic = np.asarray(im.convert("RGB" if len(want) == 3 else "L"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"not a decodable JPEG: {exc}") from exc
    if pic.shape != want:
        raise ValueError(f"JPEG of shape {pic.shape}, expected {want}")
    return pic.reshape(shape)


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Zarr v3 codec ``ava256.jpeg`` (configuration: ``quality`` 1..100, ``subsampling`` one of
    :data:`SUBSAMPLINGS`): one picture per chunk, uint8 only."""

    quality: int = 90
    subsampling: str = "4:2:0"
    is_fixed_size = False

    def __post_init__(self) -> None:
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"{CODEC_NAME}: quality {self.quality} is not in 1..100")
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(
                f"{CODEC_NAME}: subsampling {self.subsampling!r}, expected one of {SUBSAMPLINGS}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegCodec:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"codec {data.get('name')!r} is not {CODEC_NAME}")
        conf = dict(data.get("configuration") or {})
        return cls(quality=int(conf.get("quality", 90)), subsampling=str(conf.get("subsampling", "4:2:0")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": CODEC_NAME,
            "configuration": {"quality": self.quality, "subsampling": self.subsampling},
        }

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        native = np.dtype(dtype.to_native_dtype()) if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if native != np.uint8:
            raise ValueError(f"{CODEC_NAME} stores uint8 pictures, not {native}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> NDBuffer:
        pic = decode_jpeg(chunk_bytes.to_bytes(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(pic)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: Any) -> Buffer | None:
        data = encode_jpeg(chunk_array.as_numpy_array(), self.quality, self.subsampling)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        raise NotImplementedError(f"{CODEC_NAME} output has no fixed size")


zarr.registry.register_codec(CODEC_NAME, JpegCodec)
