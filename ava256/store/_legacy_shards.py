"""Write one whole shard of a sharded Zarr v3 array in a single pass.

zarr-python's generic write path costs ~4-5 ms of CPU per 2 MB image chunk on top of compression (per-chunk
async tasks, fill-value buffers, copies) — as much as decoding the AVIF it came from. Our writers always write
complete shards whose inner chunks split axis 0 only (one frame per chunk), so the shard is simply

    concat(compress(frame_0), ..., compress(frame_{n-1})) + index + crc32c(index)

exactly as the Zarr v3 sharding codec specifies (index: ``(chunks_per_shard..., 2)`` little-endian uint64
(offset, nbytes), at the end, followed by its CRC32C). :func:`shard_writer` builds that from the array's own
metadata (the same numcodecs compressors zarr uses, so the bytes are identical to zarr's) and stores it through
the array's store; it returns None for any layout it does not cover, and callers then use ``arr[...] = x``.
Tests check byte-equality with zarr's own shards and read everything back through zarr.

:meth:`ShardEncoder.open_shard` streams a shard instead: on a local store each encoded frame is appended to
the shard's temporary file as soon as it is encoded and the file is renamed into place once the index is
written (zarr's own atomic-write convention), so no shard of compressed frames is held, joined and copied in
memory (that cost ~1 ms of page faults and copies per 2 MB image); other stores collect the frames and
store them in one ``set`` as :meth:`ShardEncoder.write` does. Local shard files are written with ``O_DIRECT``
(:class:`_DirectFile`; ``AVA256_DIRECT_IO=0`` turns it off), which skips the page cache's per-byte CPU cost.
:meth:`ShardEncoder.append_to` compresses a frame straight into that file's staging buffer where it can (LZ4
through the C library's ``LZ4_compress_fast``, or raw bytes), instead of into a new ``bytes`` object that is
then copied there (:func:`_direct_compressor`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

_EMPTY = np.uint64(2**64 - 1)


def numcodecs_codec(codec: Any) -> numcodecs.abc.Codec | None:
    """The numcodecs codec that does what the Zarr v3 bytes-to-bytes ``codec`` does (Blosc, Zstd, or a
    ``numcodecs.*`` codec such as ``numcodecs.lz4``; zarr uses these same numcodecs classes, so the bytes are
    identical), or None for any other codec."""
    if isinstance(codec, BloscCodec):
        conf = dict(codec.to_dict()["configuration"])
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(conf["shuffle"])]
        return numcodecs.Blosc.from_config(
            {
                "cname": conf["cname"],
                "clevel": conf["clevel"],
                "shuffle": shuffle,
                "blocksize": conf["blocksize"],
                "typesize": conf["typesize"],
            }  # fmt: skip
        )
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd.from_config({"level": codec.level, "checksum": codec.checksum})
    name = getattr(codec, "codec_name", "")
    config = getattr(codec, "codec_config", None)
    if isinstance(name, str) and name.startswith("numcodecs.") and isinstance(config, dict):
        try:
            return numcodecs.get_codec({**config, "id": name.removeprefix("numcodecs.")})
        except (ValueError, KeyError, TypeError):
            return None
    return None


def sharded_layout(
    arr: zarr.Array, to_numcodecs: Callable[[Any], numcodecs.abc.Codec | None] = numcodecs_codec
) -> tuple[ShardingCodec, numcodecs.abc.Codec | None] | None:
    """``(sharding codec, compressor)`` if ``arr`` is sharded as our stores are, else None: one
    ``sharding_indexed`` codec whose index (``bytes`` little-endian + ``crc32c``) is at the end of the shard,
    and whose inner codecs are ``bytes`` (little-endian for multi-byte dtypes) plus at most one compressor
    that ``to_numcodecs`` maps to a numcodecs codec (the compressor is then that codec, else None)."""
    codecs = arr.metadata.codecs if arr.metadata.zarr_format == 3 else ()
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sc: ShardingCodec = codecs[0]
    if sc.index_location != ShardingCodecIndexLocation.end:
        return None
    ic = tuple(sc.index_codecs)
    if not (
        len(ic) == 2
        and isinstance(ic[0], BytesCodec)
        and _endian(ic[0]) == "little"
        and isinstance(ic[1], Crc32cCodec)
    ):
        return None
    inner = tuple(sc.codecs)
    if not inner or not isinstance(inner[0], BytesCodec) or len(inner) > 2:
        return None
    if np.dtype(arr.dtype).itemsize > 1 and _endian(inner[0]) != "little":
        return None
    if len(inner) == 1:
        return sc, None
    compressor = to_numcodecs(inner[1])
    return None if compressor is None else (sc, compressor)


def _endian(codec: BytesCodec) -> str | None:
    return getattr(codec.endian, "value", codec.endian)


class ShardEncoder:
    """Encodes frames of one array into inner-chunk bytes (:meth:`encode`, thread-safe, releases the GIL in
    the compressor) and stores a complete shard from them (:meth:`write`). Build it with
    :func:`shard_encoder`."""

    def __init__(
        self,
        arr: zarr.Array,
        compress: Callable[[np.ndarray], bytes],
        direct: tuple[Callable[[np.ndarray, int, int], int], int] | None = None,
    ):
        self.arr = arr
        self.shard_shape = tuple(arr.shards)
        self.frames_per_shard = self.shard_shape[0]
        self.frame_shape = self.shard_shape[1:]
        self._frame_size = int(np.prod(self.frame_shape))
        self.dtype = (
            np.dtype(arr.dtype).newbyteorder("<") if np.dtype(arr.dtype).itemsize > 1 else np.dtype(arr.dtype)
        )
        self._compress = compress
        # (compress_into(frame, address, capacity) -> bytes written, capacity a whole frame may need)
        self._direct = direct
        self._fill: bytes | None = None
        self._store = arr.store_path.store
        self._prefix = arr.store_path.path
        self._proto = default_buffer_prototype()

    def encode(self, frame: np.ndarray | None) -> bytes:
        """Inner-chunk bytes of one frame (None: the fill value). ``frame`` may omit singleton axes."""
        if frame is None:
            if self._fill is None:
                self._fill = self.encode(np.full(self.frame_shape, self.arr.fill_value, dtype=self.dtype))
            return self._fill
        return self._compress(self._prepare(frame))

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        a = np.asarray(frame)
        if a.size != self._frame_size:
            raise ValueError(f"frame of shape {a.shape} does not fit chunk {self.frame_shape}")
        return np.ascontiguousarray(a, dtype=self.dtype).reshape(self.frame_shape)

    def append_to(self, sink: ShardSink, frame: np.ndarray | None) -> None:
        """``sink.append(self.encode(frame))``, the same bytes, but compressed straight into the sink's staging
        memory where both allow it (a local shard file, a codec :func:`_direct_compressor` covers): that skips
        the new ``bytes`` object and one copy of it per frame (measured ~0.1-0.2 ms of CPU per 2 MB image)."""
        if frame is not None and self._direct is not None:
            a = self._prepare(frame)
            into, bound = self._direct
            dst = sink.reserve(bound)
            if dst is not None:
                sink.commit(into(a, *dst))
                return
        sink.append(self.encode(frame))

    def _index_bytes(self, sizes: list[int]) -> bytes:
        """Shard index + its CRC32C for inner chunks of ``sizes`` bytes stored back to back from offset 0."""
        S = self.frames_per_shard
        if not 1 <= len(sizes) <= S:
            raise ValueError(f"{len(sizes)} chunks for a shard of {S}")
        index = np.full((S, 2), _EMPTY, dtype="<u8")
        n = np.asarray(sizes, dtype="<u8")
        index[: len(sizes), 0] = np.cumsum(n) - n
        index[: len(sizes), 1] = n
        index_bytes = index.tobytes()  # C order of (S, 1, ..., 1, 2) is the same bytes
        return index_bytes + np.array([google_crc32c.value(index_bytes)], dtype="<u4").tobytes()

    def _full_key(self, shard_coords: tuple[int, ...]) -> str:
        key = self.arr.metadata.encode_chunk_key(tuple(shard_coords))
        return f"{self._prefix}/{key}" if self._prefix else key

    def write(self, shard_coords: tuple[int, ...], parts: list[bytes]) -> None:
        """Store shard ``shard_coords`` made of the encoded frames ``parts`` (all frames of the shard that lie
        inside the array: ``frames_per_shard`` of them, fewer only in the array's last shard)."""
        tail = self._index_bytes([len(p) for p in parts])
        full_key = self._full_key(shard_coords)
        sync(self._store.set(full_key, self._proto.buffer.from_bytes(b"".join([*parts, tail]))))

    def open_shard(self, shard_coords: tuple[int, ...]) -> ShardSink:
        """A :class:`ShardSink` for shard ``shard_coords``: ``append`` its encoded frames in order, then
        ``close`` (stores it) or ``abort`` (stores nothing)."""
        if isinstance(self._store, LocalStore):
            return _LocalShardFile(self, Path(self._store.root) / self._full_key(shard_coords))
        return ShardSink(self, shard_coords)


class ShardSink:
    """The encoded frames of one shard, appended in frame order; :meth:`close` stores the shard in one write
    (any store). Not thread-safe: feed it from one thread."""

    def __init__(self, enc: ShardEncoder, shard_coords: tuple[int, ...]):
        self._enc, self._coords = enc, tuple(shard_coords)
        self._parts: list[bytes] = []
        self.closed = False

    def append(self, part: bytes) -> None:
        """Add the inner-chunk bytes of the shard's next frame (from :meth:`ShardEncoder.encode`)."""
        self._parts.append(part)

    def reserve(self, nbytes: int) -> tuple[int, int] | None:
        """``(address, capacity)`` of writable memory (``capacity >= nbytes``) for the next frame's bytes, to be
        followed by :meth:`commit`; None where the sink has none (then :meth:`append`)."""
        return None

    def commit(self, nbytes: int) -> None:
        """Add the ``nbytes`` written at the address of the last :meth:`reserve` as the next frame."""
        raise RuntimeError("this sink reserves no memory; use append()")

    def close(self) -> None:
        """Store the shard (all its frames appended)."""
        self._enc.write(self._coords, self._parts)
        self._parts, self.closed = [], True

    def abort(self) -> None:
        """Drop the shard (no-op once closed)."""
        self._parts, self.closed = [], True

    def wait(self) -> None:
        """Block until the shard is stored; re-raises a failure of a background commit (no-op here: ``close``
        stores synchronously)."""


class _LocalShardFile(ShardSink):
    """Streams a shard to ``<shard>.<uuid>.partial`` beside its final path; :meth:`close` appends the index
    and renames it into place (readers never see a partial shard). Written through the page cache, or with
    direct I/O (:class:`_DirectFile`) when :func:`direct_io_enabled` and the file system allows it."""

    def __init__(self, enc: ShardEncoder, path: Path):
        self._enc, self._path = enc, path
        self._tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        self._sizes: list[int] = []
        self.closed = False
        self._commit_future: Future | None = None  # the background commit of a closed direct-I/O file
        path.parent.mkdir(parents=True, exist_ok=True)
        frame_bytes = enc._frame_size * enc.dtype.itemsize
        self._f = _open_shard_file(self._tmp, enc.frames_per_shard * (frame_bytes + frame_bytes // 128 + 64))

    def append(self, part: bytes) -> None:
        self._f.write(part)
        self._sizes.append(len(part))

    def reserve(self, nbytes: int) -> tuple[int, int] | None:
        return self._f.reserve(nbytes)

    def commit(self, nbytes: int) -> None:
        self._f.commit(nbytes)
        self._sizes.append(nbytes)

    def close(self) -> None:
        """Append the index and store the shard. A direct-I/O file is committed in the background (its last
        writes, truncation and the rename, which wait on the device): :meth:`wait` before relying on it."""
        try:
            self._f.write(self._enc._index_bytes(self._sizes))
        except BaseException:
            self.abort()
            raise
        self.closed = True
        if self._f.direct:
            self._commit_future = _commit_in_background(self._commit)
        else:
            self._commit()

    def _commit(self) -> None:
        try:
            self._f.finish()  # flush, truncate to the written bytes (drops what was preallocated), close
            os.replace(self._tmp, self._path)
        except BaseException:
            self._f.discard()
            self._tmp.unlink(missing_ok=True)
            raise

    def wait(self) -> None:
        fut, self._commit_future = self._commit_future, None
        if fut is not None:
            fut.result()

    def abort(self) -> None:
        if self._commit_future is not None:  # closed, commit in flight: let it end (it cleans up on failure)
            with contextlib.suppress(Exception):
                self.wait()
            return
        if self.closed:
            return
        self.closed = True
        self._f.discard()
        self._tmp.unlink(missing_ok=True)


_last_commit: tuple[int, Future] | None = None  # (pid, the latest commit submitted by that process)
_commit_lock = threading.Lock()


def _commit_in_background(fn: Callable[[], None]) -> Future:
    """Run a shard commit on this process's committer thread, after the previous one has ended (at most one
    in flight per process: bounds the staging buffers held by files being committed)."""
    global _last_commit
    with _commit_lock:  # tasks of a multi-threaded worker share the committer
        if _last_commit is not None and _last_commit[0] == os.getpid():
            futures_wait([_last_commit[1]])  # its outcome belongs to its own sink's wait()
        fut = _process_executor("ava256-shard-commit", 1).submit(fn)
        _last_commit = (os.getpid(), fut)
        return fut


_executors: dict[str, tuple[int, Any]] = {}
_executors_lock = threading.Lock()


def _process_executor(name: str, workers: int) -> Any:
    """This process's thread pool ``name`` (created on first use; never a parent's pool after a fork)."""
    with _executors_lock:
        got = _executors.get(name)
        if got is None or got[0] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            got = _executors[name] = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix=name))
        return got[1]


#: ``AVA256_DIRECT_IO=0`` (in the workers' environment) turns direct I/O of local shard files off; it is on by
#: default (unset, ``auto`` or ``1``) wherever the platform has ``O_DIRECT``, falling back to the page cache on a
#: file system that refuses it. ``benchmarks/repack.py --io direct,buffered`` measures both in one run. On the
#: 2-core AMD EPYC VM (ext4 on virtio, kernel 6.18) 1,024 images repack at 0.78-0.83 x pure decode with it and
#: 0.55-0.62 without (page-cache writes cost ~0.35-0.65 ms of CPU per MB there, direct writes ~0.02-0.08 ms).
#: On the 16-core H100 box buffered writes win while a run fits in the page cache (8,192 images: 0.84 against
#: 0.80) and lose once it does not (24,576 images, 37 GB: 0.68 against 0.70; both wait on the disk);
#: on the earlier Intel VM likewise (4,096 images: 13.7 s direct vs 17.5 s buffered). Whole captures (~600 GB
#: each at full size) never fit.
DIRECT_IO_ENV = "AVA256_DIRECT_IO"
_ALIGN = 4096  # alignment of O_DIRECT buffers, offsets and lengths (a multiple of every logical block size)
_STAGE = 8 << 20  # bytes per direct write (one segment of the staging ring)
#: segments of a shard file's staging ring: while one fills, up to three earlier ones are being written. Two (one
#: write in flight) left the workers blocked on the disk for up to ~10 % of a run on the 2-core VM, whose virtual
#: disk has latency spikes; see :class:`_DirectFile`.
_STAGE_BUFFERS = 4
_RING = _STAGE_BUFFERS * _STAGE
#: bytes past the ring's end: a frame of up to this many bytes is compressed in place even where it crosses the
#: ring's end (covers a 1024 x 1024 RGB frame's LZ4 bound; larger frames go through the scratch buffer)
_SLACK = 4 << 20


def direct_io_enabled() -> bool:
    """Whether shard files are opened with ``O_DIRECT``: where the platform has it (Linux), unless
    ``AVA256_DIRECT_IO`` is ``0``/``false``/``no``/``off``."""
    flag = os.environ.get(DIRECT_IO_ENV, "auto").strip().lower()
    return hasattr(os, "O_DIRECT") and flag not in ("0", "false", "no", "off")


def _open_shard_file(path: Path, reserve: int) -> _BufferedFile | _DirectFile:
    """A new file at ``path``: a :class:`_DirectFile` if direct I/O is enabled and the file system takes
    ``O_DIRECT`` (ext4, xfs, ...), else a :class:`_BufferedFile` with ``reserve`` bytes preallocated.

    A direct-I/O file is not preallocated: its blocks are allocated by the background writes themselves, while
    ``fallocate`` blocks the calling (decoding) thread, ~1-4 ms per shard on the 2-core VM (it waits on the
    file system's journal while the previous shards are being written and committed), for no CPU saved (8 MiB
    ``O_DIRECT`` writes of 48 MB files: 0.30 ms of CPU per file unreserved, 0.38 ms reserved)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = -1
    if direct_io_enabled():
        try:
            fd = os.open(path, flags | os.O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    if fd >= 0:
        return _DirectFile(fd)
    f = _BufferedFile(os.open(path, flags, 0o644))
    try:
        _preallocate(f.fd, reserve)
    except BaseException:
        f.discard()
        raise
    return f


class _BufferedFile:
    """Appends to a file descriptor through the page cache."""

    direct = False

    def __init__(self, fd: int):
        self.fd = fd
        self.size = 0
        self._scratch: np.ndarray | None = None  # the memory of the last reserve()

    def write(self, data: bytes | memoryview) -> None:
        mv = memoryview(data).cast("B")
        while mv:
            n = os.write(self.fd, mv)
            mv = mv[n:]
            self.size += n

    def reserve(self, nbytes: int) -> tuple[int, int]:
        """``(address, capacity)`` for the next ``nbytes`` or fewer bytes (this thread's scratch buffer)."""
        self._scratch = _scratch(nbytes)
        return self._scratch.__array_interface__["data"][0], self._scratch.size

    def commit(self, nbytes: int) -> None:
        """Append the first ``nbytes`` of the memory of the last :meth:`reserve`."""
        self.write(memoryview(self._scratch)[:nbytes])

    def finish(self) -> None:
        os.ftruncate(self.fd, self.size)
        os.close(self.fd)
        self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_pool() -> Any:
    """This process's shard-writing thread pool (direct writes block until the device has the data; they run
    here, overlapping the next frames' decoding)."""
    return _process_executor("ava256-shard-write", _STAGE_BUFFERS - 1)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class _DirectFile(_BufferedFile):
    """Appends to a file opened with ``O_DIRECT`` through a staging ring: one page-aligned mapping of
    :data:`_STAGE_BUFFERS` consecutive 8 MiB segments (plus :data:`_SLACK` bytes past its end). File bytes
    ``[o, o + 1)`` live at ring offset ``o % ring``; a full segment is written straight from the ring to the
    device by a background thread (the write blocks until the device has the data) while the next fills, so a
    slow write holds up the frames only once every earlier segment is still in flight; the last block is
    zero-padded and the file truncated to its true size at :meth:`finish`.

    :meth:`reserve` hands out ring memory for a frame to be compressed in place, also across a segment boundary
    (the segments are consecutive in memory); a frame crossing the ring's end runs into the slack and its bytes
    there are copied to the ring's start by :meth:`commit` (once per ring cycle, ~one frame in twenty). Separate
    8 MiB buffers made ~one frame in five (every one that did not fit its buffer's free tail) take a detour
    through a scratch buffer and a copy: 0.31 ms of CPU each, ~0.08 ms per image on average, ~1.5 % of a
    repack on the 2-core VM.

    Why direct I/O: sustained page-cache writes can dominate a long repack. Writing 6 GB in 1.5 MiB chunks on
    the development VM (ext4 on virtio) cost 3.3 ms of CPU per chunk through the page cache (dirty-page
    throttling and writeback; 480 MB/s) against 0.1 ms with ``O_DIRECT`` (2.4 GB/s). On a later VM (AMD EPYC,
    kernel 6.18) even writes that fit in the page cache cost ~0.35-0.65 ms of CPU per MB against ~0.08 ms
    direct (see :data:`DIRECT_IO_ENV`). If the file system refuses a direct write (EINVAL), the file carries on
    buffered.

    The rings come from a per-process free list of private anonymous mappings (:func:`_take_ring`) and the
    file's tail (last writes, truncation, rename) is committed by a background thread
    (:meth:`_LocalShardFile.close`), so a task neither faults in fresh memory nor waits for the device at every
    shard: these took a 1024-image repack from ~4.1-5.0 s to ~3.0 s (buffered: 2.9 s)."""

    direct = True

    def __init__(self, fd: int):
        super().__init__(fd)
        self._ring: mmap.mmap | None = _take_ring()
        self._dev = os.fstat(fd).st_dev
        self._view = memoryview(self._ring)
        # address for reserve(); the temporary ctypes view is dropped at once (no export outlives this line)
        self._addr = ctypes.addressof(ctypes.c_char.from_buffer(self._ring))
        # the write in flight from each segment: (future, the slice of the ring it writes)
        self._pending: list[tuple[Future, memoryview] | None] = [None] * _STAGE_BUFFERS
        self._n = 0  # bytes appended to the file so far (while direct)
        self._in_stage = False  # the last reserve() gave ring memory (else the scratch buffer)

    def write(self, data: bytes | memoryview) -> None:
        mv = memoryview(data).cast("B")
        while mv:
            if not self.direct:  # fell back
                return super().write(mv)  # through the page cache
            k = min(len(mv), _SLACK)
            off = self._stage(k)
            self._view[off : off + k] = mv[:k]
            self._advance(k)
            mv = mv[k:]

    def reserve(self, nbytes: int) -> tuple[int, int]:
        """Ring memory for the next ``nbytes`` (at most :data:`_SLACK`; more, or a file fallen back to buffered
        writes, gets the scratch buffer, copied in by :meth:`commit`)."""
        self._in_stage = self.direct and 0 < nbytes <= _SLACK
        if self._in_stage:
            return self._addr + self._stage(nbytes), nbytes
        return super().reserve(nbytes)

    def commit(self, nbytes: int) -> None:
        if not self._in_stage:
            return super().commit(nbytes)
        self._in_stage = False
        self._advance(nbytes)

    def _stage(self, nbytes: int) -> int:
        """Ring offset for the next ``nbytes`` (<= :data:`_SLACK`) bytes, once every segment they (or, past the
        ring's end, their copy at its start) will occupy has no write in flight (the write of the file segment
        that used it one ring cycle before)."""
        for s in range(self._n // _STAGE, (self._n + nbytes - 1) // _STAGE + 1):
            self._wait(s % _STAGE_BUFFERS)
        return self._n % _RING

    def _advance(self, nbytes: int) -> None:
        """Account ``nbytes`` written at the ring offset :meth:`_stage` gave: bytes past the ring's end are
        copied to its start, and each segment filled is written."""
        off, old = self._n % _RING, self._n
        if off + nbytes > _RING:
            spill = off + nbytes - _RING
            self._view[:spill] = self._view[_RING : _RING + spill]
        self._n += nbytes
        for s in range(old // _STAGE, self._n // _STAGE):  # the segments just filled
            if not self._submit(s):
                return
        self.size = self._n

    def _submit(self, s: int) -> bool:
        """Write segment ``s`` (file offset ``s * 8 MiB``) in the background. The first write of the first file
        on a device is synchronous, so that a file system refusing direct I/O is found before anything is in
        flight; False if it refused (the file has then fallen back to buffered writes)."""
        i = s % _STAGE_BUFFERS
        if s == 0 and self._dev not in _direct_devices:
            with self._view[:_STAGE] as view:
                return self._write_first(view)
        view = self._view[i * _STAGE : (i + 1) * _STAGE]  # released by _wait, once written
        self._pending[i] = (_write_pool().submit(_pwrite_all, self.fd, view, s * _STAGE), view)
        return True

    def _write_first(self, view: memoryview) -> bool:
        """The file's first direct write; False (after falling back to buffered writes of the staged bytes)
        if the file system refuses it."""
        try:
            _pwrite_all(self.fd, view, 0)
            _direct_devices.add(self._dev)
            return True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        import fcntl

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False
        staged, self.size = bytes(self._view[: self._n]), 0  # the first segment (and what follows it)
        super().write(staged)
        return False

    def _wait(self, i: int) -> None:
        """Block until segment ``i``'s write (if any) has ended; re-raise its error."""
        pending, self._pending[i] = self._pending[i], None
        if pending is not None:
            fut, view = pending
            try:
                fut.result()
            finally:
                view.release()  # before the ring is reused or unmapped

    def finish(self) -> None:
        try:
            cur = self._n // _STAGE
            for k in range(1, _STAGE_BUFFERS + 1):  # the oldest write first
                self._wait((cur + k) % _STAGE_BUFFERS)
            tail = self._n % _STAGE
            if self.direct and tail:
                end = -(-tail // _ALIGN) * _ALIGN
                i = cur % _STAGE_BUFFERS
                with self._view[i * _STAGE : i * _STAGE + end] as view:  # released before the ring is
                    view[tail:end] = bytes(end - tail)
                    if cur:
                        _pwrite_all(self.fd, view, cur * _STAGE)
                    else:
                        self._write_first(view)
            if self.direct:
                self.size = self._n
        finally:
            self._release()
        super().finish()

    def discard(self) -> None:
        self._release()  # lets the writes in flight end first
        super().discard()

    def _release(self) -> None:
        """Give the ring back, once no write from it is in flight (after a failed write, the others are let
        end first: the ring may be reused at once)."""
        if self._ring is not None:
            for i in range(_STAGE_BUFFERS):
                with contextlib.suppress(Exception):  # the failure that got us here is already on its way
                    self._wait(i)
            self._view.release()
            _give_ring(self._ring)
            self._ring, self._addr = None, 0


#: devices (st_dev) on which this process's direct writes were accepted: a file's first write there need not be
#: synchronous (it is elsewhere, so that a refusal is found before anything is in flight)
_direct_devices: set[int] = set()
_ring_pool: tuple[int, list[mmap.mmap]] | None = None
_ring_lock = threading.Lock()
# staging rings kept per process (one file's tail being committed while the next file fills)
_RING_KEEP = 2


def _take_ring() -> mmap.mmap:
    """A page-aligned staging ring (``_RING + _SLACK`` bytes): private anonymous memory, reused from this
    process's free list. Reuse matters: fresh memory per shard file faulted in and zeroed 16 MiB per shard, and
    the former shared (shmem) mappings also sent every direct write down the kernel's slow page-pinning path.
    The ring asks for transparent huge pages (``MADV_HUGEPAGE``; honoured where THP is ``always`` or
    ``madvise``): a direct write then pins four 2 MiB pages instead of 2,048 small ones. Measured on the 2-core
    VM (8 MiB ``pwrite`` calls with ``O_DIRECT``, alternating runs): 0.020-0.027 ms of CPU per MB written
    instead of 0.063-0.069, and 0.47-0.56 instead of 0.70-0.89 ms of wall time per MB. The slack past the
    ring's end is touched only by frames that cross it."""
    global _ring_pool
    with _ring_lock:
        if _ring_pool is None or _ring_pool[0] != os.getpid():  # never a parent's rings after fork
            _ring_pool = (os.getpid(), [])
        if _ring_pool[1]:
            return _ring_pool[1].pop()
    buf = mmap.mmap(-1, _RING + _SLACK, flags=mmap.MAP_PRIVATE)
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or THP unavailable: 4 KiB pages
        buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


def _give_ring(buf: mmap.mmap) -> None:
    """Return a staging ring (no write from it in flight) to the free list, or unmap it if the list is full."""
    with _ring_lock:
        if _ring_pool is not None and _ring_pool[0] == os.getpid() and len(_ring_pool[1]) < _RING_KEEP:
            _ring_pool[1].append(buf)
            return
    with contextlib.suppress(BufferError):  # a view still alive somewhere: unmapped when it goes
        buf.close()


_scratch_local = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's scratch buffer of at least ``nbytes`` bytes (kept and reused; grown when too small)."""
    buf = getattr(_scratch_local, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _scratch_local.buf = np.empty(max(int(nbytes), 1 << 20), dtype=np.uint8)
    return buf


#: LZ4_compress_fast and LZ4_compressBound of the LZ4 C library (``(compress, bound)``), False if none loads
_lz4_api: tuple[Any, Any] | None | bool = None
_LZ4_MAX_INPUT = 0x7E000000  # LZ4_MAX_INPUT_SIZE


def _lz4_c_api() -> tuple[Any, Any] | None:
    """The LZ4 C functions, from the LZ4 that numcodecs' own ``lz4`` extension is built with (it exports the
    library's C API; the bytes are then exactly those of ``numcodecs.LZ4``), else the system's ``liblz4``.
    Checked once by a round trip through ``numcodecs.LZ4.decode``; None if neither loads or the check fails
    (callers then use ``numcodecs.LZ4.encode``)."""
    global _lz4_api
    if _lz4_api is None:
        _lz4_api = False
        candidates = []
        with contextlib.suppress(ImportError):
            import numcodecs.lz4

            candidates.append(numcodecs.lz4.__file__)
        candidates.append(ctypes.util.find_library("lz4"))
        for path in filter(None, candidates):
            try:
                lib = ctypes.CDLL(path)
                compress, bound = lib.LZ4_compress_fast, lib.LZ4_compressBound
            except (OSError, AttributeError):
                continue
            compress.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int)
            compress.restype = ctypes.c_int
            bound.argtypes = (ctypes.c_int,)
            bound.restype = ctypes.c_int
            if _lz4_round_trip(compress, bound):
                _lz4_api = (compress, bound)
                break
    return _lz4_api or None


def _lz4_round_trip(compress: Any, bound: Any) -> bool:
    src = np.frombuffer(
        np.random.default_rng(0).integers(0, 16, 1 << 16, dtype=np.uint8).tobytes() * 2, np.uint8
    )
    dst = np.empty(4 + bound(src.size), dtype=np.uint8)
    try:
        n = _lz4_into(compress, 1, src, dst.__array_interface__["data"][0], dst.size)
        return bytes(numcodecs.LZ4().decode(dst[:n].tobytes())) == src.tobytes()
    except Exception:  # noqa: BLE001 - any failure: this library is not used
        return False


def _lz4_into(compress: Any, acceleration: int, a: np.ndarray, addr: int, cap: int) -> int:
    """``numcodecs.LZ4``'s chunk format at ``addr``: the source size (uint32, little-endian), then the LZ4 block."""
    n = a.nbytes
    ctypes.memmove(addr, struct.pack("<I", n), 4)
    k = compress(a.__array_interface__["data"][0], addr + 4, n, cap - 4, acceleration)
    if k <= 0:
        raise RuntimeError(f"LZ4 compression of {n} bytes into {cap} failed")
    return k + 4


def _raw_into(a: np.ndarray, addr: int, cap: int) -> int:
    if a.nbytes > cap:
        raise ValueError(f"{a.nbytes} bytes do not fit {cap}")
    ctypes.memmove(addr, a.__array_interface__["data"][0], a.nbytes)
    return a.nbytes


def _direct_compressor(
    nc: numcodecs.abc.Codec | None, frame_nbytes: int
) -> tuple[Callable[[np.ndarray, int, int], int], int] | None:
    """``(compress_into, capacity)`` for frames of ``frame_nbytes`` bytes and compressor ``nc`` (None: raw
    bytes): ``compress_into(frame, address, capacity)`` writes exactly the bytes ``nc.encode(frame)`` gives at
    ``address`` and returns their count; ``capacity`` is what a frame may need. None for other codecs (Blosc,
    Zstd: they have no API that writes into given memory) or where the LZ4 C library is unavailable."""
    if nc is None:
        return _raw_into, frame_nbytes
    if type(nc) is numcodecs.LZ4 and 0 < frame_nbytes <= _LZ4_MAX_INPUT:
        api = _lz4_c_api()
        if api is None:
            return None
        compress, bound = api
        accel = int(nc.acceleration)
        return (lambda a, addr, cap: _lz4_into(compress, accel, a, addr, cap)), 4 + int(bound(frame_nbytes))
    return None


_fallocate: Callable[..., int] | None | bool = None


def _preallocate(fd: int, nbytes: int) -> bool:
    """Reserve ``nbytes`` of disk for the file ``fd`` (Linux ``fallocate``, mode 0: the size becomes ``nbytes``,
    callers truncate to what they wrote). Appending through the page cache into reserved blocks skips the file
    system's per-page delayed-allocation bookkeeping: ~0.31 instead of ~0.46 ms of CPU per 1.4 MB chunk written on
    ext4 (direct-I/O files are not preallocated: :func:`_open_shard_file`). No-op
    (False) where unsupported; never emulated by writing zeros (as ``os.posix_fallocate`` may be)."""
    global _fallocate
    if _fallocate is None:
        try:
            f = ctypes.CDLL(None, use_errno=True).fallocate
            f.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            f.restype = ctypes.c_int
            _fallocate = f
        except (OSError, AttributeError):
            _fallocate = False
    return bool(_fallocate) and nbytes > 0 and _fallocate(fd, 0, 0, int(nbytes)) == 0


def shard_encoder(arr: zarr.Array) -> ShardEncoder | None:
    """A :class:`ShardEncoder` for ``arr``, or None if ``arr`` is not laid out as our stores are
    (:func:`sharded_layout`, and one chunk = one index along axis 0)."""
    layout = sharded_layout(arr)
    if layout is None:
        return None
    sc, nc = layout
    shard_shape = arr.shards
    chunk_shape = sc.chunk_shape
    if shard_shape is None or chunk_shape[0] != 1 or tuple(chunk_shape[1:]) != tuple(shard_shape[1:]):
        return None
    frame_nbytes = int(np.prod(shard_shape[1:])) * np.dtype(arr.dtype).itemsize
    direct = _direct_compressor(nc, frame_nbytes)
    if nc is None:
        return ShardEncoder(arr, lambda a: a.tobytes(), direct)
    return ShardEncoder(arr, lambda a: bytes(nc.encode(a)), direct)


def shard_writer(arr: zarr.Array) -> Callable[[tuple[int, ...], np.ndarray], None] | None:
    """``write(shard_coords, data)``: store a complete shard from its frames ``data`` ((n, ...) with n <=
    frames per shard); None where :func:`shard_encoder` is."""
    enc = shard_encoder(arr)
    if enc is None:
        return None

    def write(shard_coords: tuple[int, ...], data: np.ndarray) -> None:
        enc.write(shard_coords, [enc.encode(x) for x in np.asarray(data)])

    return write
