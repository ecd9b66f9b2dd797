"""``ava256 verify STORE``: read every chunk of every array of every capture of a repacked store, checking each
chunk's crc32c (and each shard index's), and mark the repack tasks that own a bad chunk so that the next
``ava256 repack`` redoes exactly those.

Reads go through the bytes of the Zarr v3 sharding codec (:mod:`ava256.store.chunks`: a shard's index and its
checksum, then each inner chunk's checksum and decompression) for arrays of a local store laid out as
:mod:`ava256.store.layout` creates them, and through ``zarr.Array.__getitem__`` (which runs the same crc32c
codec) for anything else. One Dask task reads a few shards; a bounded number is in flight.

Ownership: a chunk of an asset's array (``image``, ``head_pose`` ...) or of its mask ``valid/<asset>`` belongs
to the repack tasks of that asset whose (camera, frame range) overlaps it; their manifest rows become
``failed`` with the chunk in ``errors``. A chunk of anything else (calibration, coordinates, stats) was written
when the capture group was created: the capture's source hash is cleared, so the next repack recreates it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ava256.assets import FRAME, REGISTRY
from ava256.manifests import repack as rm
from ava256.store import layout as L
from ava256.store.chunks import MISSING, LayoutMismatch, chunk_format
from ava256.store.lock import StoreLock

log = logging.getLogger(__name__)

#: shards read by one Dask task
SHARDS_PER_TASK = 8


@dataclass(frozen=True)
class ChunkFailure:
    """A bad shard index or chunk of one array of a capture store."""

    capture: str
    array: str
    chunk: str  # chunk coordinates "i,j,…", or what of the shard was unreadable
    file: str  # relative to the capture group
    reason: str
    start: tuple[int, ...]  # the chunk's region, per dimension
    stop: tuple[int, ...]


@dataclass
class StoreVerifySummary:
    """What a store verify found: ``failures`` (one per bad shard index or chunk), the repack tasks it marked
    and the captures it invalidated."""

    store: str
    captures: int = 0
    arrays: int = 0
    shards: int = 0
    failures: list[ChunkFailure] = field(default_factory=list)
    marked_tasks: list[str] = field(default_factory=list)
    invalidated: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [
            f"verify: {self.captures} capture(s), {self.arrays} arrays, {self.shards} shards/chunks read; "
            f"{len(self.failures)} bad; {len(self.marked_tasks)} repack task(s) marked, "
            f"{len(self.invalidated)} capture(s) to recreate"
        ]
        for f in self.failures:
            out.append(f"  CORRUPT {f.capture} {f.array} chunk {f.chunk}: {f.reason}")
        return out


# ---------------------------------------------------------------------------------------------------------
# Reading (runs on the workers)
# ---------------------------------------------------------------------------------------------------------


def _open_array(capture_path: str, array: str) -> zarr.Array:
    return zarr.open_array(capture_path, path=array, mode="r")


def _grid(shape: Sequence[int], block: Sequence[int]) -> list[int]:
    return [max(1, -(-int(s) // int(b))) for s, b in zip(shape, block)]


def _region(coords: Sequence[int], block: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(c * b, min((c + 1) * b, s)) for c, b, s in zip(coords, block, shape))


def verify_shards(
    capture_path: str, capture: str, array: str, shards: Sequence[tuple[int, ...]]
) -> list[ChunkFailure]:
    """Read every inner chunk of the given shards (shard-grid coordinates; for an unsharded array, chunks) of
    one array; one :class:`ChunkFailure` per bad shard index or chunk."""
    arr = _open_array(capture_path, array)
    outer = tuple(arr.shards or arr.chunks)
    inner = tuple(arr.chunks)
    fmt = None
    root = None
    if arr.shards is not None and isinstance(arr.store, zarr.storage.LocalStore):
        try:
            fmt = chunk_format(arr)
            root = Path(str(arr.store.root)) / arr.path
        except LayoutMismatch:
            fmt = None
    bad: list[ChunkFailure] = []

    def fail(coords: tuple[int, ...] | str, region: tuple[slice, ...], file: str, reason: str) -> None:
        bad.append(
            ChunkFailure(
                capture=capture,
                array=array,
                chunk=coords if isinstance(coords, str) else ",".join(str(c) for c in coords),
                file=file,
                reason=reason.splitlines()[0] if reason else "unreadable",
                start=tuple(r.start for r in region),
                stop=tuple(r.stop for r in region),
            )
        )

    for sc in shards:
        sregion = _region(sc, outer, arr.shape)
        key = "/".join(["c", *(str(c) for c in sc)])
        if fmt is not None:
            _verify_local_shard(fmt, root / fmt.shard_key(sc), sc, sregion, f"{array}/{key}", fail)
            continue
        try:
            np.asarray(arr[sregion])
            continue
        except Exception:  # noqa: BLE001 - narrowed down chunk by chunk below
            pass
        per = [o // i for o, i in zip(outer, inner)]
        for within in itertools.product(*(range(p) for p in per)):
            cc = tuple(s * p + w for s, p, w in zip(sc, per, within))
            region = _region(cc, inner, arr.shape)
            if any(r.start >= r.stop for r in region):
                continue
            try:
                np.asarray(arr[region])
            except Exception as exc:  # noqa: BLE001 - every reason is recorded
                fail(cc, region, f"{array}/{key}", f"{type(exc).__name__}: {exc}")
    return bad


def _verify_local_shard(fmt, path: Path, sc, sregion, file: str, fail) -> None:
    """Check one shard file of a local store: its index checksum, then every present chunk's checksum and
    decoded size."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # an absent shard reads as the fill value
    try:
        size = os.fstat(fd).st_size
        n = fmt.index_nbytes
        try:
            if size < n:
                raise ValueError(f"shard of {size} bytes is shorter than its index ({n})")
            index = fmt.parse_index(os.pread(fd, n, size - n), str(path))
        except ValueError as exc:
            fail(f"shard {','.join(str(c) for c in sc)} (index)", sregion, file, str(exc))
            return
        per = fmt.chunks_per_shard
        out = np.empty(fmt.chunk_shape, dtype=fmt.dtype)
        for i, within in enumerate(itertools.product(*(range(p) for p in per))):
            offset, nbytes = (int(x) for x in index[i])
            if offset == int(MISSING) and nbytes == int(MISSING):
                continue
            cc = tuple(s * p + w for s, p, w in zip(sc, per, within))
            region = _region(cc, fmt.chunk_shape, fmt.shape)
            try:
                if offset + nbytes > size - n:
                    raise ValueError(f"chunk bytes {offset}..{offset + nbytes} run past the shard's data")
                data = os.pread(fd, nbytes, offset)
                fmt.decode_into(data, out, f"chunk {cc}")
            except Exception as exc:  # noqa: BLE001 - a corrupt chunk, whatever the codec raises
                fail(cc, region, file, str(exc))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# Planning and marking (the driver)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    capture: str
    capture_path: str
    array: str
    shards: tuple[tuple[int, ...], ...]


def _units(store: str, summary: StoreVerifySummary) -> Iterator[_Unit]:
    for folder in L.list_capture_stores(store):
        path = L.capture_store_path(store, folder)
        g = L.open_capture_group(path, mode="r")
        summary.captures += 1
        for name, node in sorted(g.members(max_depth=None), key=lambda m: m[0]):
            if not isinstance(node, zarr.Array):
                continue
            summary.arrays += 1
            grid = _grid(node.shape, node.shards or node.chunks)
            coords = list(itertools.product(*(range(n) for n in grid)))
            summary.shards += len(coords)
            for i in range(0, len(coords), SHARDS_PER_TASK):
                yield _Unit(folder, path, name, tuple(coords[i : i + SHARDS_PER_TASK]))


def _owner_asset(array: str) -> str | None:
    for asset, a in REGISTRY.items():
        if array in (a.array, L.valid_name(asset)):
            return asset
    return None


def _overlaps(row: rm.RepackRow, f: ChunkFailure, asset: str) -> bool:
    f0, f1 = int(f.start[0]), int(f.stop[0])
    if not (int(row.frame_start) < f1 and f0 < int(row.frame_stop)):
        return False
    if REGISTRY[asset].axis != FRAME:  # also split by camera
        if len(f.start) < 2:
            return True
        return int(f.start[1]) <= int(row.camera_index) < int(f.stop[1])
    return True


def mark_failures(store: str, failures: Sequence[ChunkFailure], summary: StoreVerifySummary) -> None:
    """Mark the repack tasks owning each failure ``failed`` (so the next repack redoes them) and clear the
    source hash of captures with a bad chunk no task owns (so the next repack recreates them)."""
    from ava256.pipeline.repack import ManifestBook

    book = ManifestBook(store)
    invalid: set[str] = set()
    marked: dict[str, None] = {}
    for f in failures:
        cap = f.capture
        asset = _owner_asset(f.array)
        rows = [
            r
            for r in book.rows.get(cap, {}).values()
            if asset is not None and r.asset == asset and _overlaps(r, f, asset)
        ]
        if not rows:
            invalid.add(cap)
            continue
        error = rm.ErrorRecord(
            capture=cap,
            file=f"{cap}{L.STORE_SUFFIX}/{f.file}",
            member=f"chunk {f.chunk}",
            reason=rm.VERIFY_FAILED_PREFIX + f.reason,
        )
        for r in rows:
            book.add(dataclasses.replace(r, status=rm.STATUS_FAILED, errors=(*r.errors, error)))
            marked.setdefault(r.task_id, None)
    for cap in sorted(invalid):
        g = L.open_capture_group(L.capture_store_path(store, cap), mode="r+")
        g.attrs[L.ATTR_SOURCE_HASH] = None  # never matches: the next repack recreates the capture
        g.attrs[L.ATTR_COMPLETE] = False
    for cap in {r.split("/", 1)[0] for r in marked}:
        g = L.open_capture_group(L.capture_store_path(store, cap), mode="r+")
        g.attrs[L.ATTR_COMPLETE] = False
    book.consolidate()
    summary.marked_tasks = list(marked)
    summary.invalidated = sorted(invalid)


def verify_store(
    store: str | os.PathLike[str],
    workers: int | None = None,
    *,
    scheduler: str | None = None,
    client: Any = None,
    processes: bool = True,
    progress: bool = True,
) -> StoreVerifySummary:
    """Verify every chunk of ``store`` (module doc) on Dask; holds the store's repack lock (no repack may run
    meanwhile). ValueError if ``store`` has no capture groups."""
    from distributed import as_completed

    from ava256.pipeline.cluster import dask_client
    from ava256.progress import Progress

    store = os.fspath(store)
    if not L.list_capture_stores(store):
        raise ValueError(f"{store} holds no capture stores (<mcd--mct--sid>.zarr)")
    summary = StoreVerifySummary(store)
    with StoreLock(store):
        units = list(_units(store, summary))
        bar = Progress("verify", len(units), unit="task", enabled=progress)

        def run(c: Any) -> None:
            window = 4 * max(1, workers or os.cpu_count() or 1)
            it = iter(units)
            ac = as_completed()
            for u in itertools.islice(it, window):
                ac.add(c.submit(verify_shards, u.capture_path, u.capture, u.array, u.shards, pure=False))
            for fut in ac:
                summary.failures.extend(fut.result())
                fut.release()
                bar.update(1)
                for u in itertools.islice(it, 1):
                    ac.add(c.submit(verify_shards, u.capture_path, u.capture, u.array, u.shards, pure=False))

        if client is not None:
            run(client)
        else:
            with dask_client(workers or os.cpu_count() or 1, processes=processes, scheduler=scheduler) as c:
                run(c)
        bar.close()
        for f in summary.failures:
            log.info("corrupt: capture %s array %s chunk %s: %s", f.capture, f.array, f.chunk, f.reason)
        if summary.failures:
            mark_failures(store, summary.failures, summary)
    return summary


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a repacked store (capture groups or a repack manifest)."""
    p = os.fspath(path)
    if "://" in p:
        return bool(L.list_capture_stores(p))
    return Path(p, L.MANIFESTS_DIR, rm.REPACK_MANIFEST).is_file() or bool(L.list_capture_stores(p))
