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

Figures: ``python benchmarks/repack.py`` (row "zarr write": zarr's own write path instead), current values in
docs/performance.md.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from ava256.store.chunks import ChunkFormat, LayoutMismatch, chunk_format, warn_once

log = logging.getLogger(__name__)

#: ``0`` in the writing processes' environment: shards go through zarr's own write path (what the benchmark
#: compares the shard writer with)
SHARD_WRITER_ENV = "AVA256_SHARD_WRITER"


def _flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off")


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
    return ShardWriter(fmt, Path(str(arr.store.root)) / arr.path)


class ShardWriter:
    """Writes whole shards of one array (:meth:`open_shard`), one shard file at a time, its frames from one
    thread."""

    def __init__(self, fmt: ChunkFormat, directory: Path):
        self.fmt = fmt
        self.directory = directory
        self.frames_per_shard = fmt.shard_shape[0]
        self._fill: tuple[Any, ...] | None = None
        self.write_empty = bool(zarr.config.get("array.write_empty_chunks"))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, frame: np.ndarray | None) -> tuple[Any, ...] | None:
        """The stored bytes (as parts) of one frame, or None where zarr would store no chunk: a frame that is
        None or all fill value, unless zarr's ``array.write_empty_chunks`` is set."""
        if frame is not None:
            parts = self.fmt.encode(frame)
            if not (self._may_be_fill(parts[0]) and bool((frame == self.fmt.fill_value).all())):
                return parts
        if not self.write_empty:
            return None
        if self._fill is None:
            full = np.full(self.fmt.chunk_shape, self.fmt.fill_value, dtype=self.fmt.dtype)
            self._fill = tuple(bytes(p) for p in self.fmt.encode(full))
        return self._fill

    def _may_be_fill(self, payload: Any) -> bool:
        """Whether a frame whose encoded elements are ``payload`` can be all fill value: a lossless compressor
        shrinks a chunk of one repeated value far below 1/16 of its bytes, so only such small payloads (or
        uncompressed / JPEG ones) pay for comparing every element (a dark photo often starts with a fill-valued
        pixel)."""
        fmt = self.fmt
        small = memoryview(payload).nbytes <= fmt.chunk_nbytes // 16
        return fmt.compressor is None or fmt.jpeg is not None or small

    def open_shard(self, shard_coords: tuple[int, ...]) -> ShardFile:
        """A :class:`ShardFile` for shard ``shard_coords`` (chunk-grid coordinates of the shard)."""
        path = self.directory / self.fmt.shard_key(tuple(shard_coords))
        return ShardFile(self, path)

    def close(self) -> None:
        """Nothing is left to do once every :class:`ShardFile` was closed or aborted (kept for the ``with``
        block that callers use)."""


class ShardFile:
    """One shard being written: :meth:`append` its frames in order, then :meth:`close` (index, rename into
    place) or :meth:`abort` (no file left)."""

    def __init__(self, writer: ShardWriter, path: Path):
        self._w = writer
        self.path = path
        self._tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        self._sizes: list[int | None] = []
        self.closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self._tmp, flags, 0o666)  # the umask applies

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
        try:
            while mv:
                mv = mv[os.write(self._fd, mv) :]
        except OSError as exc:  # os.write names no file: say which (e.g. ENOSPC)
            raise OSError(exc.errno, exc.strerror, str(self._tmp)) from exc

    def close(self) -> None:
        """Append the index and rename the file into place; on failure no file is left."""
        try:
            self._write(self._w.fmt.index_bytes(self._sizes))
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)  # a delayed write error (ENOSPC on NFS) can surface here
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(self._tmp)) from exc
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Drop the shard: no file is left."""
        self.closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)
