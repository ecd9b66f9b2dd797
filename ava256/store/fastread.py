"""Synchronous single-chunk reads of a local store's sharded Zarr v3 arrays, for the training loader.

A sample reads one inner chunk of each of four arrays. Through ``zarr.Array.__getitem__`` each such read is a
trip to zarr's event-loop thread, a shard-index read and checksum, and zarr's codec pipeline: several times
the cost of decompressing the chunk (``benchmarks/loader.py``, rows ``zarr`` and ``zarr-via-zarr``).
:class:`ChunkReader` reads the same bytes itself, as the Zarr v3 sharding codec defines them
(:mod:`ava256.store.chunks`): a shard's index is read and checksummed once and cached, then a chunk is one
``pread`` of its byte range, its crc32c checked, and one decompression by the array's public numcodecs codec,
optionally straight into a caller's buffer (a slot of a batch tensor).

:meth:`ChunkReader.for_array` returns None for an array it does not cover (another store type or layout),
after a one-time warning saying why; callers then read through zarr. The values are those of ``array[chunk]``
(tests/store/test_fastread.py checks every chunk of every codec).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from ava256.store.chunks import MISSING, ChunkFormat, LayoutMismatch, chunk_format, warn_once

log = logging.getLogger(__name__)


class ChunkReader:
    """Reads inner chunks of one sharded array of a local store (module doc); build with :meth:`for_array`.

    ``index_cache``: how many shard indexes to keep (LRU; 16 bytes per chunk of the shard). A cached index is
    re-read when the shard file's size or modification time changes. ``counts`` tallies ``chunk_reads``,
    ``index_reads`` and ``bytes`` read. Safe to use from several threads."""

    def __init__(self, fmt: ChunkFormat, directory: Path, index_cache: int = 4096) -> None:
        self.fmt = fmt
        self.directory = directory
        self.shape, self.chunk_shape, self.dtype = fmt.shape, fmt.chunk_shape, fmt.dtype
        self._per_shard = fmt.chunks_per_shard
        self._index: OrderedDict[str, tuple[int, int, np.ndarray]] = OrderedDict()
        self._index_cache = max(1, int(index_cache))
        self.counts = {"chunk_reads": 0, "index_reads": 0, "bytes": 0}
        self._lock = threading.Lock()  # the index LRU is shared by a loader's threads

    @classmethod
    def for_array(cls, array: zarr.Array, index_cache: int = 4096) -> ChunkReader | None:
        """A reader for ``array``, or None (after a one-time warning saying why) where it does not apply."""
        if not isinstance(array.store, LocalStore):
            warn_once(log, f"reader:store:{type(array.store).__name__}",
                      "chunk reader: %s is not a local folder; chunks are read through zarr (slower)",
                      type(array.store).__name__)  # fmt: skip
            return None
        try:
            fmt = chunk_format(array)
        except LayoutMismatch as exc:
            warn_once(log, f"reader:{array.store_path}:{exc}",
                      "chunk reader: %s: %s; chunks are read through zarr (slower)", array.store_path, exc)  # fmt: skip
            return None
        return cls(fmt, Path(str(array.store.root)) / array.path, index_cache)

    def _shard_index(self, path: str, fd: int) -> np.ndarray:
        """(chunks per shard, 2) offsets/lengths of the shard open as ``fd``."""
        st = os.fstat(fd)
        with self._lock:
            hit = self._index.get(path)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                self._index.move_to_end(path)
                return hit[2]
        n = self.fmt.index_nbytes
        if st.st_size < n:
            raise ValueError(f"{path}: shard of {st.st_size} bytes is shorter than its index ({n})")
        raw = os.pread(fd, n, st.st_size - n)
        self.counts["index_reads"] += 1
        self.counts["bytes"] += len(raw)
        index = self.fmt.parse_index(raw, path)
        with self._lock:
            self._index[path] = (st.st_size, st.st_mtime_ns, index)
            while len(self._index) > self._index_cache:
                self._index.popitem(last=False)
        return index

    def read(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The chunk at chunk-grid ``coords`` (one index per dimension), shape ``chunk_shape``; decoded into
        ``out`` (C-contiguous, ``chunk_shape``, the array's dtype) when given. ValueError for a corrupt shard
        or chunk (checksums, sizes)."""
        if out is None:
            out = np.empty(self.chunk_shape, dtype=self.dtype)
        elif out.shape != self.chunk_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous {self.chunk_shape} {self.dtype}, got {out.shape} {out.dtype}"
            )
        stored = self._stored(coords)
        if stored is None:
            out[...] = self.fmt.fill_value
            return out
        self.fmt.decode_into(stored[1], out, stored[0])
        return out

    def read_payload(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """The encoded elements of the chunk at ``coords`` (its crc32c checked and removed: for an
        ``ava256.jpeg`` array a JFIF file), or None where the chunk is absent (the fill value)."""
        stored = self._stored(coords)
        return None if stored is None else self.fmt.payload(stored[1], stored[0])

    def _stored(self, coords: tuple[int, ...]) -> tuple[str, bytes] | None:
        """(what, stored bytes) of the chunk at ``coords``, or None where it is absent."""
        if len(coords) != len(self.chunk_shape):
            raise IndexError(f"{len(coords)} chunk coordinates for a {len(self.chunk_shape)}-d array")
        for c, s, k in zip(coords, self.shape, self.chunk_shape):
            if not 0 <= c < -(-s // k):
                raise IndexError(f"chunk {coords} out of range of {self.directory} shape {self.shape}")
        shard = tuple(c // p for c, p in zip(coords, self._per_shard))
        within = tuple(c % p for c, p in zip(coords, self._per_shard))
        path = os.path.join(self.directory, self.fmt.shard_key(shard))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            offset, nbytes = self._shard_index(path, fd)[int(np.ravel_multi_index(within, self._per_shard))]
            if offset == MISSING and nbytes == MISSING:
                return None
            data = os.pread(fd, int(nbytes), int(offset))
            self.counts["chunk_reads"] += 1
            self.counts["bytes"] += len(data)
        finally:
            os.close(fd)
        if len(data) != int(nbytes):
            raise OSError(f"{path}: short read ({len(data)} of {int(nbytes)} bytes) of chunk {coords}")
        return f"{path} chunk {coords}", data
