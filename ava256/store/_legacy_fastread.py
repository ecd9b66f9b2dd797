"""Synchronous single-chunk reads of sharded Zarr v3 arrays on a local file system.

The training loader reads one inner chunk of each of four arrays per sample. Through zarr-python every such
read is a round trip to zarr's event-loop thread, a shard-index read (with its checksum) and a trip through
the async codec pipeline: about 0.75 ms of Python per chunk, several times the cost of decompressing it
(``benchmarks/loader.py``). :class:`ChunkReader` does the same read directly: the shard index is read and
checksummed once per shard file and cached, then the chunk is one ``pread`` of its byte range and one
decompression, optionally straight into a caller's buffer (a slot of a shared-memory batch tensor).

It handles exactly the layout ``ava256 repack`` writes (``ava256.store.shards``): a ``sharding_indexed``
codec whose inner codecs are ``bytes`` plus at most one compressor (any numcodecs codec, Blosc, Zstd, Gzip), index
``bytes`` little-endian + ``crc32c`` at the end of the shard. :meth:`ChunkReader.for_array` returns None for
anything else (another store type, layout or codec), and callers fall back to zarr. The values returned are
identical to ``array[chunk]`` (tests/store/test_fastread.py checks every chunk of a repacked store).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ava256.store._legacy_shards import numcodecs_codec, sharded_layout

#: index entry of a chunk that is absent from its shard (all fill value)
_MISSING = np.uint64(2**64 - 1)


def _decompressor(codec: Any) -> Any | None:
    """A numcodecs codec whose ``decode(buf, out)`` undoes ``codec`` (what the repack writes, plus Gzip), or
    None if unsupported."""
    import numcodecs
    from zarr.codecs import GzipCodec

    return numcodecs.GZip() if isinstance(codec, GzipCodec) else numcodecs_codec(codec)


class ChunkReader:
    """Reads inner chunks of one sharded array (see module doc); build with :meth:`for_array`.

    ``index_cache``: how many shard indexes to keep (LRU; an index is 16 bytes per chunk of the shard). A
    cached index is re-read when the shard file's size or modification time changes. ``counts`` tallies
    ``chunk_reads``, ``index_reads`` and ``bytes`` read from disk. Safe to use from several threads.
    """

    def __init__(
        self,
        directory: Path,
        key_of: Any,
        shape: tuple[int, ...],
        shard_shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        dtype: np.dtype,
        fill_value: Any,
        decompressor: Any | None,
        index_cache: int = 4096,
    ) -> None:
        self.directory = directory
        self._key_of = key_of
        self.shape, self.shard_shape, self.chunk_shape = shape, shard_shape, chunk_shape
        self.dtype = dtype
        self.fill_value = fill_value
        self._decompressor = decompressor
        self._per_shard = tuple(s // c for s, c in zip(shard_shape, chunk_shape))
        self._n_per_shard = int(np.prod(self._per_shard))
        self.chunk_nbytes = int(np.prod(chunk_shape)) * dtype.itemsize
        self._index: OrderedDict[str, tuple[int, int, np.ndarray]] = OrderedDict()
        self._index_cache = max(1, int(index_cache))
        self.counts = {"chunk_reads": 0, "index_reads": 0, "bytes": 0}
        self._lock = threading.Lock()  # the index LRU is shared by a loader's threads

    @classmethod
    def for_array(cls, array: zarr.Array, index_cache: int = 4096) -> ChunkReader | None:
        """A reader for ``array`` if it is a sharded array of the supported layout in a local store, else
        None (read it with zarr)."""
        from zarr.storage import LocalStore

        if not isinstance(array.store, LocalStore):
            return None
        layout = sharded_layout(array, _decompressor)
        dtype = np.dtype(array.dtype)
        if layout is None or (dtype.itemsize > 1 and sys.byteorder != "little"):
            return None
        sc, decompressor = layout
        store, meta = array.store, array.metadata
        shard_shape = tuple(int(x) for x in meta.chunk_grid.chunk_shape)
        chunk_shape = tuple(int(x) for x in sc.chunk_shape)
        if len(shard_shape) != len(chunk_shape) or any(s % c for s, c in zip(shard_shape, chunk_shape)):
            return None
        fill = meta.fill_value
        fill = fill.item() if hasattr(fill, "item") else fill
        return cls(
            Path(str(store.root)) / array.path,
            meta.chunk_key_encoding.encode_chunk_key,
            tuple(int(x) for x in array.shape),
            shard_shape,
            chunk_shape,
            dtype,
            fill,
            decompressor,
            index_cache,
        )

    # --------------------------------------------------------------------------------------------------------
    def _shard_index(self, path: str, fd: int) -> np.ndarray | None:
        """(n_chunks, 2) uint64 offsets/lengths of the shard open as ``fd`` (None: no such shard)."""
        st = os.fstat(fd)
        with self._lock:
            hit = self._index.get(path)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                self._index.move_to_end(path)
                return hit[2]
        import google_crc32c

        n = 16 * self._n_per_shard
        if st.st_size < n + 4:
            raise ValueError(f"{path}: shard of {st.st_size} bytes is shorter than its index ({n + 4})")
        raw = os.pread(fd, n + 4, st.st_size - n - 4)
        self.counts["index_reads"] += 1
        self.counts["bytes"] += len(raw)
        if len(raw) != n + 4:
            raise OSError(f"{path}: short read of the shard index")
        if np.uint32(google_crc32c.value(raw[:n])).tobytes() != raw[n:]:
            raise ValueError(f"{path}: shard index checksum mismatch (corrupt shard)")
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(self._n_per_shard, 2)
        with self._lock:
            self._index[path] = (st.st_size, st.st_mtime_ns, index)
            while len(self._index) > self._index_cache:
                self._index.popitem(last=False)
        return index

    def read(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The chunk at chunk-grid ``coords`` (one index per dimension), shape ``chunk_shape``; decoded
        into ``out`` (C-contiguous, ``chunk_shape``, the array's dtype) when given."""
        if len(coords) != len(self.chunk_shape):
            raise IndexError(f"{len(coords)} chunk coordinates for a {len(self.chunk_shape)}-d array")
        for c, s, k in zip(coords, self.shape, self.chunk_shape):
            if not 0 <= c < -(-s // k):
                raise IndexError(f"chunk {coords} out of range of {self.directory} shape {self.shape}")
        if out is None:
            out = np.empty(self.chunk_shape, dtype=self.dtype)
        elif out.shape != self.chunk_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous {self.chunk_shape} {self.dtype}, got {out.shape} {out.dtype}"
            )
        shard = tuple(c // p for c, p in zip(coords, self._per_shard))
        within = tuple(c % p for c, p in zip(coords, self._per_shard))
        path = os.path.join(self.directory, self._key_of(shard))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            out[...] = self.fill_value
            return out
        try:
            entry = self._shard_index(path, fd)[int(np.ravel_multi_index(within, self._per_shard))]
            offset, nbytes = entry
            if offset == _MISSING and nbytes == _MISSING:
                out[...] = self.fill_value
                return out
            data = os.pread(fd, int(nbytes), int(offset))
            self.counts["chunk_reads"] += 1
            self.counts["bytes"] += len(data)
        finally:
            os.close(fd)
        if len(data) != int(nbytes):
            raise OSError(f"{path}: short read ({len(data)} of {int(nbytes)} bytes) of chunk {coords}")
        flat = out.reshape(-1).view(np.uint8)
        if self._decompressor is None:
            if len(data) != self.chunk_nbytes:
                raise ValueError(
                    f"{path}: chunk {coords} has {len(data)} bytes, expected {self.chunk_nbytes}"
                )
            flat[:] = np.frombuffer(data, dtype=np.uint8)
        elif (size := _decoded_size(self._decompressor, data)) is not None:
            if size != self.chunk_nbytes:
                raise ValueError(
                    f"{path}: chunk {coords} decodes to {size} bytes, expected {self.chunk_nbytes}"
                )
            self._decompressor.decode(data, out=flat)
        else:
            got = np.frombuffer(self._decompressor.decode(data), dtype=np.uint8)
            if got.size != self.chunk_nbytes:
                raise ValueError(
                    f"{path}: chunk {coords} decodes to {got.size} bytes, expected {self.chunk_nbytes}"
                )
            flat[:] = got
        return out


def _decoded_size(codec: Any, data: bytes) -> int | None:
    """The decompressed size recorded in ``data``'s header, for the codecs whose header is known (numcodecs
    LZ4: a 4-byte little-endian size prefix; Blosc: bytes 4..8 of its 16-byte header), else None."""
    import numcodecs

    if isinstance(codec, numcodecs.LZ4):
        return int.from_bytes(data[:4], "little") if len(data) >= 4 else -1
    if isinstance(codec, numcodecs.Blosc):
        return int.from_bytes(data[4:8], "little") if len(data) >= 16 else -1
    return None
