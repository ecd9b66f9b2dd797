"""Write whole shards of a local store's sharded arrays, each frame encoded as soon as it is decoded and streamed
to its shard's file.

The reference (and the fallback) is zarr's public write of a whole shard region, ``arr[s0:s1, c] = frames``:
it needs the shard's decoded frames in one buffer and costs zarr's per-chunk pipeline on top of compression.
:func:`shard_writer` instead encodes each frame with the array's own codecs (public numcodecs codecs and
crc32c, :mod:`ava256.store.chunks`), appends it to ``<shard>.<uuid>.partial`` beside the shard's path, and
after the last frame appends the index and renames the file into place (zarr's ``LocalStore`` writes by temp
file and rename too, so readers never see a partial shard). The bytes are the Zarr v3 sharding codec's: a test
compares them with zarr's own shards and reads them back with plain zarr. It applies to arrays laid out as
:mod:`ava256.store.layout` creates them (one frame per inner chunk, shards along axis 0) in a
``zarr.storage.LocalStore``; for anything else it says why (once per process) and returns None.

Direct I/O (:data:`DIRECT_IO_ENV`, on by default where ``os.O_DIRECT`` exists): shard files are opened with
``O_DIRECT`` and written from :data:`_SEGMENTS` page-aligned 8 MiB staging buffers, full ones by background
threads while the next frames are decoded, and each closed file is committed (its last block, truncation,
rename) by them too, since a rename can wait tens of ms on the file system's journal. Writes through the page
cache cost CPU per byte (and stall once a run outgrows the dirty-page limits, which every whole capture does);
``benchmarks/repack.py`` measures both.
A file system that refuses ``O_DIRECT`` is found by a probe when a writer is made; the writer then uses the
page cache and says so once.

Figures: ``python benchmarks/repack.py`` (rows "zarr write", "buffered"), current values in
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from ava256.store.chunks import ChunkFormat, LayoutMismatch, chunk_format, warn_once

log = logging.getLogger(__name__)

#: ``0``/``false``/``no``/``off`` in the writing processes' environment: shard files go through the page cache
DIRECT_IO_ENV = "AVA256_DIRECT_IO"
#: ``0`` in the writing processes' environment: shards go through zarr's own write path (what the benchmark
#: compares the shard writer with)
SHARD_WRITER_ENV = "AVA256_SHARD_WRITER"
_ALIGN = 4096  # O_DIRECT alignment of buffers, offsets and lengths (a multiple of common logical block sizes)
_SEGMENT = 8 << 20  # bytes per direct write
#: staging buffers per writer: while one fills, up to ``_SEGMENTS - 1`` are being written (one write in flight
#: does not hide a virtual disk's latency spikes)
_SEGMENTS = 4


def _flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off")


def direct_io_enabled() -> bool:
    """Whether shard files are to be written with ``O_DIRECT``: where the platform has it, unless
    :data:`DIRECT_IO_ENV` turns it off."""
    return hasattr(os, "O_DIRECT") and _flag(DIRECT_IO_ENV)


def shard_writer(arr: zarr.Array) -> ShardWriter | None:
    """A :class:`ShardWriter` for ``arr``, or None (after a one-time warning saying why) where it does not
    apply: the store is not a local folder, or the layout is not :mod:`ava256.store.layout`'s. Callers then
    write whole shard regions through zarr."""
    if not _flag(SHARD_WRITER_ENV):
        return None
    if not isinstance(arr.store, LocalStore):
        warn_once(log, f"writer:store:{type(arr.store).__name__}",
                  "shard writer: %s is not a local folder; shards are written through zarr (slower)",
                  type(arr.store).__name__)  # fmt: skip
        return None
    try:
        fmt = chunk_format(arr)
        if fmt.chunk_shape != (1, *fmt.shard_shape[1:]):
            raise LayoutMismatch(
                f"inner chunks {fmt.chunk_shape} are not one frame of shards {fmt.shard_shape}"
            )
    except LayoutMismatch as exc:
        warn_once(log, f"writer:{arr.store_path}:{exc}",
                  "shard writer: %s: %s; shards are written through zarr (slower)", arr.store_path, exc)  # fmt: skip
        return None
    return ShardWriter(fmt, Path(str(arr.store.root)) / arr.path, direct_io_enabled())


class ShardWriter:
    """Writes whole shards of one array (:meth:`open_shard`), one shard file at a time, its frames from one
    thread. With direct I/O it owns :data:`_SEGMENTS` staging buffers, used in rotation across its files, and
    writer threads that write full buffers and commit each closed file (last block, truncation, rename) in
    the background; :meth:`close` (or the ``with`` block) waits for them, raises the first failure and frees
    the buffers."""

    def __init__(self, fmt: ChunkFormat, directory: Path, direct: bool):
        self.fmt = fmt
        self.directory = directory
        self.frames_per_shard = fmt.shard_shape[0]
        self._fill: tuple[Any, ...] | None = None
        self.write_empty = bool(zarr.config.get("array.write_empty_chunks"))
        self.direct = direct and _takes_direct_io(directory)
        self._buffers: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._pending: list[Future | None] = [None] * _SEGMENTS  # the job in flight on each buffer
        self._next = 0  # the buffer the next segment is staged in
        self._commits: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, frame: np.ndarray | None) -> tuple[Any, ...] | None:
        """The stored bytes (as parts) of one frame, or None where zarr would store no chunk: a frame that is
        None or all fill value, unless zarr's ``array.write_empty_chunks`` is set."""
        fill = self.fmt.fill_value
        empty = frame is None or (frame.flat[0] == fill and bool((frame == fill).all()))
        if not empty:
            return self.fmt.encode(frame)
        if not self.write_empty:
            return None
        if self._fill is None:
            full = np.full(self.fmt.chunk_shape, fill, dtype=self.fmt.dtype)
            self._fill = tuple(bytes(p) for p in self.fmt.encode(full))
        return self._fill

    def open_shard(self, shard_coords: tuple[int, ...]) -> ShardFile:
        """A :class:`ShardFile` for shard ``shard_coords`` (chunk-grid coordinates of the shard)."""
        path = self.directory / self.fmt.shard_key(tuple(shard_coords))
        return ShardFile(self, path)

    # --- direct I/O staging --------------------------------------------------------------------------------
    def _take(self) -> int:
        """The next staging buffer, once the job that last used it has ended (re-raises its failure)."""
        if not self._buffers:
            for _ in range(_SEGMENTS):
                self._buffers.append(mmap.mmap(-1, _SEGMENT))  # page-aligned, as O_DIRECT needs
                self._views.append(memoryview(self._buffers[-1]))
            self._pool = ThreadPoolExecutor(_SEGMENTS - 1, thread_name_prefix="ava256-shard-write")
        i, self._next = self._next, (self._next + 1) % _SEGMENTS
        fut, self._pending[i] = self._pending[i], None
        if fut is not None:
            fut.result()
        return i

    def _submit(self, i: int, fn: Any, *args: Any) -> Future:
        """Run ``fn(*args)`` on a writer thread; buffer ``i`` is busy until it ends."""
        fut = self._pool.submit(fn, *args)
        self._pending[i] = fut
        return fut

    def close(self) -> None:
        """Wait for every write and commit in flight, stop the writer threads, free the staging buffers; raises
        the first failure of a background commit (that shard left no file)."""
        failure: BaseException | None = None
        for fut in [*self._pending, *self._commits]:
            if fut is not None:
                try:
                    fut.result()
                except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                    failure = failure or exc
        self._pending, self._commits = [None] * _SEGMENTS, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for v in self._views:
            with contextlib.suppress(BufferError):  # a failed write's traceback may still hold a slice
                v.release()
        for b in self._buffers:
            with contextlib.suppress(BufferError):  # then the mapping goes with the last reference
                b.close()
        self._views, self._buffers = [], []
        if failure is not None:
            raise failure


class ShardFile:
    """One shard being written: :meth:`append` its frames in order, then :meth:`close` (index, rename into
    place; with direct I/O finished in the background, see :class:`ShardWriter`) or :meth:`abort` (no file
    left)."""

    def __init__(self, writer: ShardWriter, path: Path):
        self._w = writer
        self.path = path
        self._tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        self._sizes: list[int | None] = []
        self.closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.direct = writer.direct
        self._fd = os.open(self._tmp, flags | (os.O_DIRECT if self.direct else 0), 0o666)
        self._writes: list[Future] = []  # this file's segment writes
        self._commit: Future | None = None
        self._buf = -1  # staging buffer being filled (direct I/O)
        self._offset = 0  # file offset of its first byte
        self._used = 0  # bytes in it

    def append(self, frame: np.ndarray | None) -> None:
        """Encode and add the shard's next frame (None: the fill value)."""
        parts = self._w.encode(frame)
        if parts is None:
            self._sizes.append(None)
            return
        for p in parts:
            self._write(p)
        self._sizes.append(sum(memoryview(p).nbytes for p in parts))

    def _write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        if not self.direct:
            while mv:
                mv = mv[os.write(self._fd, mv) :]
            return
        w = self._w
        while mv:
            if self._buf < 0:
                self._buf = w._take()
            k = min(len(mv), _SEGMENT - self._used)
            w._views[self._buf][self._used : self._used + k] = mv[:k]
            self._used += k
            mv = mv[k:]
            if self._used == _SEGMENT:
                view = w._views[self._buf]
                self._writes.append(w._submit(self._buf, _pwrite_all, self._fd, view, self._offset))
                self._buf, self._offset, self._used = -1, self._offset + _SEGMENT, 0

    def close(self) -> None:
        """Append the index, write what is staged and rename the file into place."""
        try:
            self._write(self._w.fmt.index_bytes(self._sizes))
        except BaseException:
            self.abort()
            raise
        self.closed = True
        if not self.direct:
            self._finish()
            return
        w = self._w
        if self._buf < 0:  # the index ended exactly at a buffer's end: commit from an idle buffer
            self._buf = w._take()
        self._commit = w._submit(self._buf, self._finish)
        w._commits.append(self._commit)

    def _finish(self) -> None:
        """(Direct I/O: on a writer thread, after this file's segment writes.) Write the staged tail, drop
        its padding, close and rename the file into place; on failure leave no file."""
        try:
            if self.direct:
                for fut in self._writes:  # submitted before this job: running or done, never queued behind it
                    fut.result()
                size = self._offset + self._used
                if self._used:
                    end = -(-self._used // _ALIGN) * _ALIGN
                    view = self._w._views[self._buf]
                    view[self._used : end] = bytes(end - self._used)
                    _pwrite_all(self._fd, view[:end], self._offset)
                os.ftruncate(self._fd, size)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Drop the shard: no file is left (once closed: waits for its background commit, which cleans up
        after itself on failure)."""
        if self.closed:
            if self._commit is not None:
                with contextlib.suppress(Exception):
                    self._commit.result()
            return
        self.closed = True
        for fut in self._writes:  # the buffers are reused by the next file: let writes in flight end
            with contextlib.suppress(Exception):
                fut.result()
        self._discard()

    def _discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _takes_direct_io(directory: Path) -> bool:
    """Whether the file system of ``directory`` takes an aligned ``O_DIRECT`` write (a probe file, removed);
    warns once per process where it does not."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".direct-io-probe.{uuid.uuid4().hex}"
    buf = mmap.mmap(-1, _ALIGN)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
        try:
            os.pwrite(fd, buf, 0)
        finally:
            os.close(fd)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        warn_once(log, f"direct:{os.stat(directory).st_dev}",
                  "shard writer: the file system of %s refuses O_DIRECT (%s); shard files are written through "
                  "the page cache (slower)", directory, exc.strerror)  # fmt: skip
        return False
    finally:
        probe.unlink(missing_ok=True)
        buf.close()
