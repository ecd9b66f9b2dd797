"""The bytes of one sharded array's shard files, as the Zarr v3 specification defines them, from the array's
metadata (the spec's JSON: ``zarr.Array.metadata.to_dict()``), with public numcodecs codecs and google-crc32c.

A shard of a ``sharding_indexed`` array whose index sits at the end (what ``ava256.store.layout`` creates)::

    chunk | chunk | ... | index | crc32c(index)

``index``: one (offset, nbytes) pair of little-endian uint64 per inner chunk, in C order of the shard's chunk
grid; an absent chunk has offset = nbytes = 2**64 - 1. An inner chunk is its elements in C order (``bytes``
codec, little-endian) or one JPEG (``ava256.jpeg``, :mod:`ava256.store.codecs`), passed through the
bytes-to-bytes codecs in order: at most one compressor (none after JPEG), then ``crc32c`` (the chunk's CRC32C
as a little-endian uint32 appended) where the array has it.

:func:`chunk_format` returns a :class:`ChunkFormat` for an array of this layout and raises
:class:`LayoutMismatch` (saying why) for any other, so that the shard writer and the chunk reader that use it
fall back to zarr, and say so, instead of producing or accepting other bytes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr

from ava256.store.codecs import CODEC_NAME, JpegCodec, decode_jpeg, encode_jpeg

#: index entry of an absent chunk (offset and nbytes)
MISSING = np.uint64(2**64 - 1)
_BLOSC_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                  "bitshuffle": numcodecs.Blosc.BITSHUFFLE}  # fmt: skip


class LayoutMismatch(ValueError):
    """The array is not laid out as :func:`chunk_format` requires (the message says how)."""


def compressor_from_json(codec: dict[str, Any]) -> numcodecs.abc.Codec:
    """The numcodecs codec that implements a Zarr v3 bytes-to-bytes codec given as its metadata JSON: ``blosc``,
    ``zstd``, ``gzip`` (spec codecs) or ``numcodecs.<id>``. LayoutMismatch for anything else."""
    name, conf = codec.get("name"), dict(codec.get("configuration") or {})
    if name == "blosc":
        return numcodecs.Blosc(
            cname=conf["cname"],
            clevel=int(conf["clevel"]),
            shuffle=_BLOSC_SHUFFLE[conf["shuffle"]],
            blocksize=int(conf.get("blocksize", 0)),
            typesize=int(conf.get("typesize", 1)),
        )
    if name == "zstd":
        return numcodecs.Zstd(level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False)))
    if name == "gzip":
        return numcodecs.GZip(level=int(conf.get("level", 1)))
    if isinstance(name, str) and name.startswith("numcodecs."):
        try:
            return numcodecs.get_codec({**conf, "id": name.removeprefix("numcodecs.")})
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutMismatch(f"codec {name}: {exc}") from exc
    raise LayoutMismatch(f"codec {name!r} is not a compressor this reader/writer implements")


@dataclass(frozen=True)
class ChunkFormat:
    """Shard and inner-chunk bytes of one sharded array (module doc). Thread-safe."""

    shape: tuple[int, ...]
    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: np.dtype  # little-endian (as stored)
    fill_value: Any
    compressor: numcodecs.abc.Codec | None
    checksum: bool  # inner chunks end with their crc32c
    separator: str  # of the default chunk key encoding
    jpeg: JpegCodec | None = None  # the array-to-bytes codec when it is ``ava256.jpeg`` (else ``bytes``)

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))

    @property
    def n_per_shard(self) -> int:
        return int(np.prod(self.chunks_per_shard))

    @property
    def chunk_nbytes(self) -> int:
        return int(np.prod(self.chunk_shape)) * self.dtype.itemsize

    @property
    def index_nbytes(self) -> int:
        """Bytes of a shard's index plus its checksum."""
        return 16 * self.n_per_shard + 4

    def shard_key(self, shard_coords: tuple[int, ...]) -> str:
        """Key of shard ``shard_coords`` relative to the array (default chunk key encoding: ``c/i/j/...``)."""
        return self.separator.join(["c", *(str(int(c)) for c in shard_coords)])

    # --- inner chunks ---------------------------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> tuple[Any, ...]:
        """The stored bytes of one inner chunk (``chunk`` of ``chunk_shape``'s size), as parts to be written
        back to back: the encoded elements, then their crc32c if the array has one."""
        a = np.ascontiguousarray(chunk, dtype=self.dtype)
        if a.size * a.itemsize != self.chunk_nbytes:
            raise ValueError(f"chunk of shape {a.shape} does not fit chunk shape {self.chunk_shape}")
        if self.jpeg is not None:
            payload = encode_jpeg(a.reshape(self.chunk_shape), self.jpeg.quality, self.jpeg.subsampling)
        elif self.compressor is not None:
            payload = self.compressor.encode(a)
        else:
            payload = a.reshape(-1).view(np.uint8)
        if not self.checksum:
            return (payload,)
        return payload, _crc32c(payload).to_bytes(4, "little")

    def decode_into(self, data: bytes, out: np.ndarray, what: str) -> None:
        """Decode one inner chunk's stored bytes into ``out`` (C-contiguous, ``chunk_shape``, the array's
        dtype). ValueError naming ``what`` if its checksum or size is wrong."""
        view = self.payload(data, what)
        if self.jpeg is not None:
            try:
                out[...] = decode_jpeg(view, self.chunk_shape)
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from exc
            return
        flat = out.reshape(-1).view(np.uint8)
        c = self.compressor
        if c is None:
            got = view
        elif _decoded_size(c, view) == self.chunk_nbytes:  # the header says it fits: straight into out
            c.decode(view, out=flat)
            return
        else:
            got = np.frombuffer(c.decode(view), dtype=np.uint8)
        if got.size != self.chunk_nbytes:
            raise ValueError(f"{what}: chunk decodes to {got.size} bytes, expected {self.chunk_nbytes}")
        flat[:] = got

    def payload(self, data: bytes, what: str) -> np.ndarray:
        """The encoded elements of one stored inner chunk (uint8 view of ``data`` without its crc32c, which is
        checked): for ``ava256.jpeg`` arrays a JFIF file. ValueError naming ``what`` on a checksum mismatch."""
        view = np.frombuffer(data, dtype=np.uint8)
        if self.checksum:
            if view.size < 4 or _crc32c(view[:-4]) != int.from_bytes(data[-4:], "little"):
                raise ValueError(f"{what}: chunk checksum mismatch (corrupt chunk)")
            view = view[:-4]
        return view

    # --- shard index ----------------------------------------------------------------------------------------
    def index_bytes(self, sizes: list[int | None]) -> bytes:
        """Index + crc32c of a shard whose first ``len(sizes)`` chunks (C order) are stored back to back from
        offset 0 with these sizes (None: an absent chunk, as zarr leaves one equal to the fill value); the
        rest are absent."""
        if not 1 <= len(sizes) <= self.n_per_shard:
            raise ValueError(f"{len(sizes)} chunks for a shard of {self.n_per_shard}")
        index = np.full((self.n_per_shard, 2), MISSING, dtype="<u8")
        present = np.array([s is not None for s in sizes])
        n = np.asarray([s for s in sizes if s is not None], dtype="<u8")
        index[: len(sizes)][present, 0] = np.cumsum(n) - n
        index[: len(sizes)][present, 1] = n
        raw = index.tobytes()
        return raw + _crc32c(raw).to_bytes(4, "little")

    def parse_index(self, raw: bytes, what: str) -> np.ndarray:
        """(chunks per shard, 2) offsets/lengths from a shard's last :attr:`index_nbytes` bytes."""
        if len(raw) != self.index_nbytes:
            raise ValueError(f"{what}: shard index of {len(raw)} bytes, expected {self.index_nbytes}")
        body = np.frombuffer(raw, dtype=np.uint8, count=len(raw) - 4)
        if _crc32c(body) != int.from_bytes(raw[-4:], "little"):
            raise ValueError(f"{what}: shard index checksum mismatch (corrupt shard)")
        return body.view("<u8").reshape(self.n_per_shard, 2)


def chunk_format(arr: zarr.Array) -> ChunkFormat:
    """The :class:`ChunkFormat` of ``arr``: a Zarr v3 array with one ``sharding_indexed`` codec, its index
    (``bytes`` little-endian + ``crc32c``) at the end, inner codecs ``bytes`` (little-endian where it matters),
    at most one compressor :func:`compressor_from_json` implements, optionally ``crc32c`` last, and the default
    chunk key encoding. LayoutMismatch (saying what differs) otherwise."""
    meta = arr.metadata.to_dict()
    if meta.get("zarr_format") != 3:
        raise LayoutMismatch("not a Zarr v3 array")
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        raise LayoutMismatch(f"codecs {[c.get('name') for c in codecs]}, expected one sharding_indexed codec")
    conf = codecs[0]["configuration"]
    if conf.get("index_location", "end") != "end":
        raise LayoutMismatch(f"shard index at the {conf.get('index_location')}, expected the end")
    names = [c.get("name") for c in conf.get("index_codecs", [])]
    if names != ["bytes", "crc32c"] or _endian(conf["index_codecs"][0]) not in ("little", None):
        raise LayoutMismatch(f"index codecs {names}, expected little-endian bytes + crc32c")
    inner = list(conf.get("codecs", []))
    dtype = np.dtype(arr.dtype)
    jpeg = JpegCodec.from_dict(inner[0]) if inner and inner[0].get("name") == CODEC_NAME else None
    if not inner or (inner[0].get("name") != "bytes" and jpeg is None):
        raise LayoutMismatch(f"inner codecs {[c.get('name') for c in inner]} do not start with bytes")
    if jpeg is None and dtype.itemsize > 1 and _endian(inner[0]) != "little":
        raise LayoutMismatch("inner chunks are not little-endian")
    rest = inner[1:]
    checksum = bool(rest) and rest[-1].get("name") == "crc32c"
    if checksum:
        rest = rest[:-1]
    if len(rest) > 1 or (jpeg is not None and rest):
        raise LayoutMismatch(f"inner codecs {[c.get('name') for c in inner]}: more than one compressor")
    compressor = compressor_from_json(rest[0]) if rest else None
    key = meta.get("chunk_key_encoding") or {}
    sep = (key.get("configuration") or {}).get("separator", "/")
    if key.get("name") != "default" or sep not in ("/", "."):
        raise LayoutMismatch(f"chunk key encoding {key}, expected the default one")
    grid = meta.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        raise LayoutMismatch(f"chunk grid {grid.get('name')!r}, expected regular")
    shard_shape = tuple(int(x) for x in grid["configuration"]["chunk_shape"])
    chunk_shape = tuple(int(x) for x in conf["chunk_shape"])
    if len(shard_shape) != len(chunk_shape) or any(s % c for s, c in zip(shard_shape, chunk_shape)):
        raise LayoutMismatch(f"inner chunks {chunk_shape} do not tile shards {shard_shape}")
    fill = arr.fill_value
    return ChunkFormat(
        shape=tuple(int(x) for x in arr.shape),
        shard_shape=shard_shape,
        chunk_shape=chunk_shape,
        dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype,
        fill_value=fill.item() if hasattr(fill, "item") else fill,
        compressor=compressor,
        checksum=checksum,
        separator=sep,
        jpeg=jpeg,
    )


def _endian(codec: dict[str, Any]) -> str | None:
    return (codec.get("configuration") or {}).get("endian")


def _crc32c(data: Any) -> int:
    # google_crc32c takes bytes or numpy arrays (not memoryviews)
    return int(google_crc32c.value(data if isinstance(data, bytes) else np.asarray(data)))


def _decoded_size(codec: numcodecs.abc.Codec, data: np.ndarray) -> int | None:
    """Decompressed size recorded in the header of ``data`` for codecs whose header is known (numcodecs LZ4:
    a little-endian uint32 prefix; Blosc: bytes 4..8 of its 16-byte header), else None."""
    if isinstance(codec, numcodecs.LZ4):
        return int.from_bytes(data[:4].tobytes(), "little") if data.size >= 4 else -1
    if isinstance(codec, numcodecs.Blosc):
        return int.from_bytes(data[4:8].tobytes(), "little") if data.size >= 16 else -1
    return None


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(logger: logging.Logger, key: str, message: str, *args: Any) -> None:
    """``logger.warning(message, *args)`` the first time ``key`` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)
