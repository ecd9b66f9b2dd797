"""Synchronous chunk reads of a store's sharded Zarr v3 arrays (local or at an fsspec URL), for the training
loader.

A sample reads one inner chunk of each of four arrays. Through ``zarr.Array.__getitem__`` each such read is a
trip to zarr's event-loop thread, a shard-index read and checksum, and zarr's codec pipeline: several times
the cost of decompressing the chunk (``benchmarks/loader.py``, rows ``zarr`` and ``zarr-via-zarr``).
:class:`ChunkReader` reads the same bytes itself, as the Zarr v3 sharding codec defines them
(:mod:`ava256.store.chunks`): a shard's index is read and checksummed once and cached, then a chunk is one
``pread`` of its byte range, its crc32c checked, and one decompression by the array's public numcodecs codec,
optionally straight into a caller's buffer (a slot of a batch tensor).

On a remote store (zarr's ``FsspecStore``: ``s3://`` and anything fsspec opens) the same reader uses ranged
reads through a synchronous twin of the store's filesystem: a shard index is one suffix-range GET (cached for
the reader's life: a store that training reads is not being rewritten), a chunk one range GET. :func:`read_chunks`
reads the chunks of a whole batch at once: the missing indexes in one concurrent ``cat_ranges`` call, then
every chunk in another, ranges of one shard closer than :data:`MERGE_GAP` merged into one request. A warm
sample thus costs at most one request per chunk (four), fewer where a batch's chunks share a shard, and a
batch costs one round trip, not one per chunk. A shard whose chunks total at most :data:`SMALL_SHARD` bytes (a
capture's head poses) is read whole once and kept, so its chunks then cost no request.

:meth:`ChunkReader.for_array` returns None for an array it does not cover (another store type or layout),
after a one-time warning saying why; callers then read through zarr. The values are those of ``array[chunk]``
(tests/store/test_fastread.py checks every chunk of every codec).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from ava256.store.chunks import MISSING, ChunkFormat, LayoutMismatch, chunk_format, warn_once

log = logging.getLogger(__name__)

#: a remote shard whose chunk data is at most this many bytes is read whole once and kept by its reader (head
#: poses: 48 bytes a frame), so later samples of it cost no request
SMALL_SHARD = 256 * 1024
#: bytes of small shards a reader keeps (LRU)
SMALL_SHARD_CACHE = 64 << 20

#: two chunk ranges of one remote shard at most this many bytes apart are read by one request (on a real
#: bucket a request costs about what ~1 MiB more of its body does: tens of ms of latency against ~100 MB/s)
MERGE_GAP = 1 << 20


class ChunkReader:
    """Reads inner chunks of one sharded array of a store (module doc); build with :meth:`for_array`.

    ``fs``: None for a local folder ``directory``; else a synchronous fsspec filesystem and ``directory`` the
    array's path in it. ``index_cache``: how many shard indexes to keep (LRU; 16 bytes per chunk of the
    shard). A cached local index is re-read when the shard file's size or modification time changes.
    ``counts`` tallies ``chunk_reads``, ``index_reads``, ``bytes`` read and ``requests`` (preads, or GETs of
    a remote store). Safe to use from several threads."""

    def __init__(
        self, fmt: ChunkFormat, directory: Path | str, index_cache: int = 4096, fs: Any = None
    ) -> None:
        self.fmt = fmt
        self.directory = directory
        self.fs = fs
        self.shape, self.chunk_shape, self.dtype = fmt.shape, fmt.chunk_shape, fmt.dtype
        self._per_shard = fmt.chunks_per_shard
        # path -> (size, mtime, index); remote: (0, 0, index or None for an absent shard)
        self._index: OrderedDict[str, tuple[int, int, np.ndarray | None]] = OrderedDict()
        self._index_cache = max(1, int(index_cache))
        self.counts = {"chunk_reads": 0, "index_reads": 0, "bytes": 0, "requests": 0}
        self._lock = threading.Lock()  # the index LRU is shared by a loader's threads
        self._small: OrderedDict[str, bytes] = OrderedDict()  # remote small shards' chunk data (LRU)
        self._small_bytes = 0

    @property
    def remote(self) -> bool:
        return self.fs is not None

    @classmethod
    def for_array(cls, array: zarr.Array, index_cache: int = 4096) -> ChunkReader | None:
        """A reader for ``array``, or None (after a one-time warning saying why) where it does not apply."""
        store = array.store
        if not isinstance(store, (LocalStore, FsspecStore)):
            warn_once(log, f"reader:store:{type(store).__name__}",
                      "chunk reader: %s is neither a local folder nor an fsspec store; chunks are read through "
                      "zarr (slower)", type(store).__name__)  # fmt: skip
            return None
        try:
            fmt = chunk_format(array)
        except LayoutMismatch as exc:
            warn_once(log, f"reader:{array.store_path}:{exc}",
                      "chunk reader: %s: %s; chunks are read through zarr (slower)", array.store_path, exc)  # fmt: skip
            return None
        if isinstance(store, LocalStore):
            return cls(fmt, Path(str(store.root)) / array.path, index_cache)
        directory = "/".join(p for p in (store.path.rstrip("/"), array.path) if p)
        return cls(fmt, directory, index_cache, fs=sync_filesystem(store.fs))

    def shard_path(self, coords: tuple[int, ...]) -> tuple[str, int]:
        """(path of the shard holding chunk ``coords``, the chunk's position in the shard's index)."""
        if len(coords) != len(self.chunk_shape):
            raise IndexError(f"{len(coords)} chunk coordinates for a {len(self.chunk_shape)}-d array")
        for c, s, k in zip(coords, self.shape, self.chunk_shape):
            if not 0 <= c < -(-s // k):
                raise IndexError(f"chunk {coords} out of range of {self.directory} shape {self.shape}")
        shard = tuple(c // p for c, p in zip(coords, self._per_shard))
        within = tuple(c % p for c, p in zip(coords, self._per_shard))
        key = self.fmt.shard_key(shard)
        path = f"{self.directory}/{key}" if self.remote else os.path.join(self.directory, key)
        return path, int(np.ravel_multi_index(within, self._per_shard))

    def _out(self, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return np.empty(self.chunk_shape, dtype=self.dtype)
        if out.shape != self.chunk_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be C-contiguous {self.chunk_shape} {self.dtype}, got {out.shape} {out.dtype}"
            )
        return out

    def _cached_index(self, path: str) -> tuple[bool, np.ndarray | None]:
        """(hit, index) of a remote shard (index None: the shard is absent)."""
        with self._lock:
            hit = self._index.get(path)
            if hit is None:
                return False, None
            self._index.move_to_end(path)
            return True, hit[2]

    def _kept_shard(self, path: str) -> bytes | None:
        with self._lock:
            blob = self._small.get(path)
            if blob is not None:
                self._small.move_to_end(path)
            return blob

    def _keep_shard(self, path: str, blob: bytes) -> None:
        with self._lock:
            if path in self._small:
                return
            self._small[path] = blob
            self._small_bytes += len(blob)
            while self._small_bytes > SMALL_SHARD_CACHE and len(self._small) > 1:
                self._small_bytes -= len(self._small.popitem(last=False)[1])

    def _remember(self, path: str, size: int, mtime: int, index: np.ndarray | None) -> None:
        with self._lock:
            self._index[path] = (size, mtime, index)
            while len(self._index) > self._index_cache:
                self._index.popitem(last=False)

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
        self.counts["requests"] += 1
        self.counts["bytes"] += len(raw)
        index = self.fmt.parse_index(raw, path)
        self._remember(path, st.st_size, st.st_mtime_ns, index)
        return index

    def read(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The chunk at chunk-grid ``coords`` (one index per dimension), shape ``chunk_shape``; decoded into
        ``out`` (C-contiguous, ``chunk_shape``, the array's dtype) when given. ValueError for a corrupt shard
        or chunk (checksums, sizes)."""
        if self.remote:
            return read_chunks([(self, coords, out)])[0]
        out = self._out(out)
        stored = self._local_stored(coords)
        if stored is None:
            out[...] = self.fmt.fill_value
            return out
        self.fmt.decode_into(stored[1], out, stored[0])
        return out

    def read_payload(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """The encoded elements of the chunk at ``coords`` of a local store (its crc32c checked and removed:
        for an ``ava256.jpeg`` array a JFIF file), or None where the chunk is absent (the fill value)."""
        if self.remote:
            raise NotImplementedError("read_payload reads local stores; remote chunks go through read_chunks")
        stored = self._local_stored(coords)
        return None if stored is None else self.fmt.payload(stored[1], stored[0])

    def _local_stored(self, coords: tuple[int, ...]) -> tuple[str, bytes] | None:
        """(what, stored bytes) of the chunk at ``coords`` of a local store, or None where it is absent."""
        path, pos = self.shard_path(coords)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            offset, nbytes = self._shard_index(path, fd)[pos]
            if offset == MISSING and nbytes == MISSING:
                return None
            data = os.pread(fd, int(nbytes), int(offset))
            self.counts["chunk_reads"] += 1
            self.counts["requests"] += 1
            self.counts["bytes"] += len(data)
        finally:
            os.close(fd)
        if len(data) != int(nbytes):
            raise OSError(f"{path}: short read ({len(data)} of {int(nbytes)} bytes) of chunk {coords}")
        return f"{path} chunk {coords}", data


def sync_filesystem(fs: Any) -> Any:
    """A synchronous fsspec filesystem equivalent to zarr's asynchronous ``fs`` (same class and options)."""
    if getattr(fs, "sync_fs", None) is not None:  # zarr's wrapper of a synchronous filesystem
        return fs.sync_fs
    if not getattr(fs, "asynchronous", False):
        return fs
    opts = {k: v for k, v in fs.storage_options.items() if k not in ("asynchronous", "loop")}
    return type(fs)(*getattr(fs, "storage_args", ()), **opts)


def read_chunks(
    requests: Sequence[tuple[ChunkReader, tuple[int, ...], np.ndarray | None]],
) -> list[np.ndarray]:
    """Read many chunks, each ``(reader, chunk coords, out or None)``, as :meth:`ChunkReader.read` would;
    returns the arrays. Local readers read one by one; remote ones in two batched, concurrent rounds (module
    doc): the shard indexes not yet cached, then the chunks, merged by shard. ValueError for a corrupt shard
    or chunk, OSError for a failed read, each naming the shard."""
    outs: list[np.ndarray | None] = [None] * len(requests)
    remote: list[tuple[tuple[int, ...], ChunkReader, str, int, np.ndarray]] = []
    for i, (reader, coords, out) in enumerate(requests):
        if not reader.remote:
            outs[i] = reader.read(coords, out)
            continue
        path, pos = reader.shard_path(coords)
        remote.append((coords, reader, path, pos, reader._out(out)))
        outs[i] = remote[-1][4]
    by_fs: dict[int, list[tuple[tuple[int, ...], ChunkReader, str, int, np.ndarray]]] = {}
    for item in remote:
        by_fs.setdefault(id(item[1].fs), []).append(item)
    for items in by_fs.values():
        _read_remote(items)
    return outs  # type: ignore[return-value]


def _read_remote(items: list[tuple[tuple[int, ...], ChunkReader, str, int, np.ndarray]]) -> None:
    fs = items[0][1].fs
    # round 1: the shard indexes not cached yet (one suffix-range GET each)
    index: dict[str, np.ndarray | None] = {}
    need: dict[str, ChunkReader] = {}
    for _, reader, path, _, _ in items:
        if path in index or path in need:
            continue
        hit, idx = reader._cached_index(path)
        if hit:
            index[path] = idx
        else:
            need[path] = reader
    if need:
        paths = list(need)
        sizes = [need[p].fmt.index_nbytes for p in paths]
        got = fs.cat_ranges(paths, [-n for n in sizes], [None] * len(paths), on_error="return")
        for path, n, raw in zip(paths, sizes, got):
            reader = need[path]
            reader.counts["index_reads"] += 1
            reader.counts["requests"] += 1
            if isinstance(raw, FileNotFoundError):
                idx = None  # an absent shard: every chunk is the fill value
            elif isinstance(raw, BaseException):
                raise OSError(f"{path}: reading the shard index failed: {type(raw).__name__}: {raw}") from raw
            else:
                reader.counts["bytes"] += len(raw)
                if len(raw) < n:
                    raise ValueError(f"{path}: shard of {len(raw)} bytes is shorter than its index ({n})")
                idx = reader.fmt.parse_index(bytes(raw), path)
            reader._remember(path, 0, 0, idx)
            index[path] = idx
    # round 2: the chunks, ranges of one shard merged where they are close
    wanted: dict[str, list[tuple[int, int, ChunkReader, np.ndarray, tuple[int, ...]]]] = {}
    for coords, reader, path, pos, out in items:
        idx = index[path]
        if idx is None or (idx[pos, 0] == MISSING and idx[pos, 1] == MISSING):
            out[...] = reader.fmt.fill_value
            continue
        offset, nbytes = int(idx[pos, 0]), int(idx[pos, 1])
        wanted.setdefault(path, []).append((offset, offset + nbytes, reader, out, coords))
    paths, starts, ends = [], [], []
    spans: list[list[tuple[int, int, ChunkReader, np.ndarray, tuple[int, ...]]]] = []
    whole: set[int] = set()  # positions of requests that fetch a small shard whole (kept by its reader)
    for path, ranges in wanted.items():
        ranges.sort(key=lambda r: (r[0], r[1]))
        reader = ranges[0][2]
        kept = reader._kept_shard(path)
        if kept is not None:  # a small shard read before: no request
            _decode_span(path, 0, kept, ranges)
            continue
        extent = _data_extent(index[path])
        if extent <= SMALL_SHARD:
            whole.add(len(paths))
            paths.append(path)
            starts.append(0)
            ends.append(extent)
            spans.append(ranges)
            continue
        for r in ranges:
            if spans and paths[-1] == path and r[0] - ends[-1] <= MERGE_GAP:
                ends[-1] = max(ends[-1], r[1])
                spans[-1].append(r)
            else:
                paths.append(path)
                starts.append(r[0])
                ends.append(r[1])
                spans.append([r])
    if not paths:
        return
    got = fs.cat_ranges(paths, starts, ends, on_error="return")
    for i, (path, start, end, blob, span) in enumerate(zip(paths, starts, ends, got, spans)):
        reader = span[0][2]
        reader.counts["requests"] += 1
        if isinstance(blob, BaseException):
            raise OSError(
                f"{path}: reading bytes {start}-{end} failed: {type(blob).__name__}: {blob}"
            ) from blob
        if len(blob) != end - start:
            raise OSError(f"{path}: short read ({len(blob)} of {end - start} bytes at {start})")
        reader.counts["bytes"] += len(blob)
        if i in whole:
            reader._keep_shard(path, bytes(blob))
        _decode_span(path, start, blob, span)


def _decode_span(
    path: str, start: int, blob: Any, span: list[tuple[int, int, ChunkReader, np.ndarray, tuple[int, ...]]]
) -> None:
    """Decode the chunks ``span`` (byte ranges of the shard ``path``) out of ``blob``, its bytes from ``start``."""
    view = memoryview(blob)
    for lo, hi, rd, out, coords in span:
        rd.counts["chunk_reads"] += 1
        rd.fmt.decode_into(view[lo - start : hi - start], out, f"{path} chunk {coords}")


def _data_extent(index: np.ndarray) -> int:
    """End of the last present chunk of a shard (its chunk data is ``[0, extent)``)."""
    present = ~((index[:, 0] == MISSING) & (index[:, 1] == MISSING))
    return int((index[present, 0] + index[present, 1]).max()) if present.any() else 0
