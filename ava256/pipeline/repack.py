"""``ava256 repack RAW STORE``: decode a raw tree once into per-capture sharded Zarr v3 stores + manifests.

The driver (this module):

1. finds the captures under RAW and hashes each one's raw inputs (its rows of ``RAW/_manifests/fetch.parquet``,
   or, without a fetch manifest, the size + mtime of every file: :func:`repack_tasks.hash_tree_stat`);
2. probes each capture on the cluster (calibration, frame lists, stats, image sizes);
3. for a capture that is new, whose hash / downsample / codec / format version changed: (re)creates its group
   with every array (metadata only), writes camera arrays and stats;
4. plans tasks (capture, asset, camera, shard-aligned frame range), drops those already done (manifest row
   ``done`` with the same source hash AND every shard file present), and runs the rest on Dask with a bounded
   number in flight;
5. as results come back: writes their ``valid/<asset>`` slices (the driver is the only writer of masks), then
   their manifest rows (per-capture part files, atomically; consolidated into ``repack.parquet`` at the end);
6. writes ``samples.parquet`` from the stores.

A task writes whole shards before its row exists, so a crash at any point loses at most the tasks in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ava256 import capture as cat
from ava256.captures_arg import capture_folders as parse_captures_arg
from ava256.manifests import repack as rm
from ava256.manifests import samples as sm
from ava256.manifests.atomic import write_table_atomic
from ava256.manifests.fetch import FetchRow, torn_manifest_hint
from ava256.pipeline import repack_tasks as rt
from ava256.pipeline.selection import Selection
from ava256.store import layout as L
from ava256.store.lock import locked_store

log = logging.getLogger(__name__)

PARTS_DIR = "repack.parts"  # STORE/_manifests/repack.parts/<capture>.parquet while a run is going


@dataclass
class RepackSummary:
    """What a run did (counts over this run's tasks; ``skipped`` = already done before)."""

    captures: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    failed_captures: dict[str, str] = field(default_factory=dict)
    tasks_total: int = 0
    tasks_run: int = 0
    tasks_skipped: int = 0
    tasks_failed: int = 0
    #: (capture, file, reason) of every failed task and capture of this run, for one line each
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    frames_invalid: int = 0
    images_written: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    #: whether workers compressed in a helper thread (a local cluster with two cores per worker thread)
    encode_thread: bool = False

    def line(self) -> str:
        return (
            f"{len(self.captures)} capture(s) ({len(self.recreated)} (re)created, {len(self.failed_captures)} failed); "
            f"tasks: {self.tasks_run} run, {self.tasks_skipped} skipped, {self.tasks_failed} failed; "
            f"{self.frames_invalid} invalid frame slots; {self.images_written} camera images; "
            f"{self.seconds:.1f} s; peak worker RSS {self.peak_rss_mb:.0f} MiB"
        )


# ---------------------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------------------


def discover_captures(
    raw: str | os.PathLike[str], only: Sequence[str] | None = None
) -> list[rt.CaptureSource]:
    """Capture folders directly under RAW (either spelling), each hashed. FileNotFoundError if RAW is
    missing; ValueError if a requested capture is not there."""
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw tree {raw} does not exist")
    found: dict[str, Path] = {}
    for p in sorted(raw.iterdir()):
        if not p.is_dir():
            continue
        try:
            cid = cat.CaptureId.parse(p.name)
        except ValueError:
            continue
        found.setdefault(cid.folder, p)
    if only is not None:
        missing = [c for c in only if c not in found]
        if missing:
            raise ValueError(f"capture(s) not found under {raw}: {', '.join(missing)}")
        found = {c: found[c] for c in only}
    fetch_rows = _fetch_rows_by_capture(raw)
    out = []
    for folder, p in found.items():
        rows = fetch_rows.get(folder)
        expected: tuple[tuple[str, str], ...] = ()
        if rows:
            h, method = rt.hash_fetch_rows(rows), "fetch-manifest"
            expected = tuple(
                (str(r.key), f"{r.status or 'ok'}{': ' + r.error if r.error else ''}") for r in rows if r.key
            )
        else:
            h, method = rt.hash_tree_stat(p), "stat"
        out.append(rt.CaptureSource(folder, str(p), p.name, h, method, expected))
    return out


def _fetch_rows_by_capture(raw: Path) -> dict[str, list[FetchRow]]:
    """Rows of ``RAW/_manifests/fetch.parquet`` by capture, with only the columns the repack reads (capture,
    key, bytes, etag, sha256, status, error; the others None); empty without a fetch manifest. ValueError
    naming the file if it is unreadable."""
    import pyarrow.parquet as pq

    path = raw / L.MANIFESTS_DIR / "fetch.parquet"
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a torn/foreign file
        raise ValueError(f"cannot read fetch manifest {path}: {exc}; {torn_manifest_hint(raw)}") from exc
    if not {"capture", "key"} <= set(table.column_names):
        raise ValueError(f"{path} is not a fetch manifest (needs columns capture, key)")
    cols = [
        c for c in ("capture", "key", "bytes", "etag", "sha256", "status", "error") if c in table.column_names
    ]
    by: dict[str, list[FetchRow]] = defaultdict(list)
    for rec in table.select(cols).to_pylist():
        by[str(rec["capture"])].append(FetchRow.from_record(rec))
    return by


# ---------------------------------------------------------------------------------------------------------
# Manifest bookkeeping
# ---------------------------------------------------------------------------------------------------------


class ManifestBook:
    """Rows of ``repack.parquet`` by capture; dirty captures are flushed to part files atomically and
    everything is consolidated into ``repack.parquet`` by :meth:`consolidate`."""

    def __init__(self, store: str):
        import fsspec

        self.path = L.manifests_path(store, rm.REPACK_MANIFEST)  # a local path or an fsspec URL
        self.parts = L.manifests_path(store, PARTS_DIR)
        self.fs, self._parts = fsspec.core.url_to_fs(self.parts)
        self.rows: dict[str, dict[str, rm.RepackRow]] = defaultdict(dict)  # capture -> task_id -> row
        for path in [self.path, *self._part_files()]:
            for row in rm.read_repack_rows(path):
                self.rows[row.capture][row.task_id] = row
        self.dirty: set[str] = set()

    def drop_capture(self, capture: str) -> None:
        self.rows.pop(capture, None)
        self.dirty.add(capture)

    def add(self, row: rm.RepackRow) -> None:
        self.rows[row.capture][row.task_id] = row
        self.dirty.add(row.capture)

    def flush(self) -> None:
        for capture in sorted(self.dirty):
            rows = list(self.rows.get(capture, {}).values())
            write_table_atomic(rm.rows_to_table(rows), f"{self.parts}/{capture}.parquet")
        self.dirty.clear()

    def consolidate(self) -> None:
        self.flush()
        rows = [r for cap in sorted(self.rows) for _, r in sorted(self.rows[cap].items())]
        rm.write_repack_manifest(rm.rows_to_table(rows), self.path)
        for p in self._part_files():
            self.fs.rm_file(p)
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            self.fs.rmdir(self._parts)

    def _part_files(self) -> list[str]:
        found = sorted(self.fs.glob(f"{self._parts}/*.parquet"))
        return [self.fs.unstrip_protocol(p) for p in found] if "://" in self.parts else found


# ---------------------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, processes: bool, client: Any) -> Iterator[Any]:
    """The given client, or :func:`ava256.pipeline.cluster.dask_client`: a running scheduler, or a LocalCluster
    of ``workers`` single-threaded worker processes (decoding is CPU-bound; default: the CPU count)."""
    from ava256.pipeline.cluster import dask_client

    if client is not None:
        yield client
        return
    with dask_client(workers or os.cpu_count() or 1, processes=processes, scheduler=scheduler) as c:
        yield c


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def check_selection(store: str, folders: Sequence[str], selection: Selection) -> None:
    """ValueError (one line, naming the capture, both selections and the remedy) if a capture group in
    ``store`` was repacked with another selection: a store holds one selection per capture, never a mix."""
    for folder in folders:
        path = L.capture_store_path(store, folder)
        try:
            g = L.open_capture_group(path, mode="r")
        except FileNotFoundError:
            continue
        old = Selection.from_attrs(g.attrs.get(L.ATTR_SELECTION))
        if old != selection:
            raise ValueError(
                f"capture {folder}: {path} holds the selection [{old.describe()}], this run asks for "
                f"[{selection.describe()}]; repack into a new STORE, or delete {path} to recreate it"
            )


def _store_matches(
    store_path: str,
    src: rt.CaptureSource,
    downsample: int,
    codec: str,
    checksum: bool = True,
    selection: Selection | None = None,
) -> bool:
    """True if a capture group exists with the same source hash, downsample, codec, chunk checksum, selection
    and format version."""
    try:
        g = L.open_capture_group(store_path, mode="r")
    except FileNotFoundError:
        return False
    a = g.attrs
    return (
        a.get(L.ATTR_SOURCE_HASH) == src.source_hash
        and a.get(L.ATTR_DOWNSAMPLE) == downsample
        and a.get(L.ATTR_CODEC) == codec
        and a.get(L.ATTR_CHUNK_CHECKSUM, True) == checksum
        and a.get(L.ATTR_FORMAT_VERSION) == L.FORMAT_VERSION
        and Selection.from_attrs(a.get(L.ATTR_SELECTION)) == (selection or Selection())
    )


def shard_sizes(store_path: str, keys: Sequence[str]) -> list[int]:
    """Bytes of each shard file ``keys`` (relative to the capture group) names; -1 for one that is absent."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(store_path)
    out = []
    for k in keys:
        try:
            out.append(int(fs.size(f"{root.rstrip('/')}/{k}")))
        except FileNotFoundError:
            out.append(-1)
    return out


def _task_intact(store_path: str, keys: Sequence[str], recorded: Sequence[int] | None) -> bool:
    """Whether a done task's shards are as it left them: each the size recorded when it finished (rows of
    older manifests, without sizes: each present)."""
    sizes = shard_sizes(store_path, keys)
    if recorded is None or len(recorded) != len(sizes):
        return all(n >= 0 for n in sizes)
    return [int(n) for n in recorded] == sizes


def remove_orphan_partials(store: str) -> int:
    """Delete shard temp files (``*.partial``) that a killed repack left in the capture groups of ``store``;
    called with the store lock held, so no live writer owns them. Returns how many were removed."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(store)
    n = 0
    for folder in L.list_capture_stores(store):
        base = f"{root.rstrip('/')}/{folder}{L.STORE_SUFFIX}"
        try:
            found = fs.find(base)
        except FileNotFoundError:
            continue
        for p in found:
            if p.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(p)
                    n += 1
    if n:
        log.warning("removed %d orphan shard temp file(s) (*.partial) a killed repack left in %s", n, store)
    return n


@locked_store  # one repack per store: a second one is refused (ava256.store.lock)
def repack(
    raw: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    captures: str | Sequence[str] | None = None,
    downsample: int = 1,
    codec: str = L.DEFAULT_CODEC,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    processes: bool = True,
    max_frames_per_shard: int = L.MAX_FRAMES_PER_SHARD,
    task_target_frames: int = rt.TASK_TARGET_FRAMES,
    flush_seconds: float = 10.0,
    decode_threads: int | None = None,
    encode_thread: bool | None = None,
    progress: bool = True,
    checksum: bool = True,
    max_member_mb: float | None = None,
    selection: Selection | None = None,
) -> RepackSummary:
    """Repack the captures under ``raw`` into ``store`` (see the module docstring). Idempotent and
    resumable: re-running skips finished tasks; a capture whose raw inputs or options changed is redone.

    ``max_frames_per_shard`` caps the frames per shard (tests use small values to get several shards).
    ``decode_threads``: threads per AVIF decode in a worker; default: CPU count // worker threads for a local
    cluster, 1 for a given client or scheduler. ``encode_thread``: compress in a helper thread per worker,
    overlapping decoding; default: only for a local cluster with at least two cores per worker thread (with
    one core per worker it costs more CPU than it hides). ``checksum``: a crc32c in every chunk (the default;
    False only to measure its cost: :func:`ava256.store.layout.array_specs`). ``max_member_mb``: a zip member
    declaring more is recorded corrupt without being inflated (default: each asset's cap,
    :data:`ava256.capture.FRAME_ARCHIVES`). ``selection``: store only these cameras, frames and assets
    (:mod:`ava256.pipeline.selection`); a capture already in ``store`` with another selection is refused
    (ValueError) before anything is written."""
    from distributed import as_completed

    from ava256.progress import Progress

    t0 = time.perf_counter()
    if codec not in L.STORE_CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(L.STORE_CODECS)}")
    if int(downsample) < 1:
        raise ValueError(f"--downsample must be >= 1, got {downsample}")
    downsample = int(downsample)
    store = os.fspath(store)
    if "://" not in store:  # a local folder; an fsspec URL (s3://bucket/prefix) needs no folder
        Path(store).mkdir(parents=True, exist_ok=True)
    sources = discover_captures(raw, parse_captures_arg(captures))
    if not sources:
        raise ValueError(f"no capture folders (mcd--mct--sid) under {raw}")
    selection = selection or Selection()
    check_selection(store, [s.folder for s in sources], selection)
    remove_orphan_partials(store)
    book = ManifestBook(store)
    summary = RepackSummary(captures=[s.folder for s in sources])

    with _client(scheduler, workers, processes, client) as c:
        # 1. probe every capture on the cluster
        cap_bytes = int(max_member_mb * 2**20) if max_member_mb else 0
        futs = {
            s.folder: c.submit(rt.probe_capture, s, downsample, cap_bytes, selection, pure=False)
            for s in sources
        }
        plans: dict[str, rt.CapturePlan] = {}
        for s in sources:
            try:
                plans[s.folder] = futs[s.folder].result()
            except Exception as exc:  # noqa: BLE001 - a capture that cannot be probed is recorded, others go on
                log.error("capture %s cannot be repacked: %s", s.folder, exc)
                summary.failed_captures[s.folder] = str(exc)
                summary.failures.append((s.folder, s.rel, str(exc)))
                book.add(_capture_failure_row(s, str(exc)))

        # 2. (re)create stores; tasks are planned lazily per capture below (the driver never holds all of a
        # whole-release run's tasks), skipping finished ones
        specs_by_capture: dict[str, dict[str, L.ArraySpec]] = {}
        for folder, plan in plans.items():
            path = L.capture_store_path(store, folder)
            specs = L.array_specs(plan.geometry, codec, max_frames_per_shard, checksum)
            specs_by_capture[folder] = specs
            src = next(s for s in sources if s.folder == folder)
            if not _store_matches(path, src, downsample, codec, checksum, selection):
                with _writing(path):
                    log.info(
                        "creating %s (source hash %s via %s)", path, src.source_hash[:12], src.hash_method
                    )
                    group = L.create_capture_group(
                        path,
                        plan.geometry,
                        {**rt.group_attrs(plan, downsample, codec, checksum), L.ATTR_SOURCE_HASH: None},
                        codec=codec,
                        checksum=checksum,
                        max_frames_per_shard=max_frames_per_shard,
                    )
                    rt.write_capture_metadata(group, plan)
                    # the hash last: a group killed before its metadata is written never matches, so it is redone
                    group.attrs[L.ATTR_SOURCE_HASH] = plan.source_hash
                    book.drop_capture(folder)
                    summary.recreated.append(folder)
            book.add(_probe_row(plan))
            for e in plan.failures:
                summary.failures.append((folder, e.file, e.reason))
            summary.tasks_failed += bool(plan.failures)
        book.flush()

        # 3. run the tasks, a bounded number in flight; masks then manifest rows as results arrive
        info = c.scheduler_info(n_workers=-1).get("workers", {})
        n_workers = max(1, len(info) or (workers or 1))
        threads = sum(int(w.get("nthreads", 1)) for w in info.values()) or n_workers
        # local cluster: share this machine's cores among the worker threads; elsewhere 1 per decode
        dthreads = max(1, (os.cpu_count() or 1) // threads) if (scheduler is None and client is None) else 1
        dthreads = decode_threads or dthreads
        local = scheduler is None and client is None
        ethread = (
            encode_thread if encode_thread is not None else (local and (os.cpu_count() or 1) >= 2 * threads)
        )
        summary.encode_thread = bool(ethread)

        def todo() -> Iterator[rt.RepackTask]:
            for folder, plan in plans.items():
                path, specs = L.capture_store_path(store, folder), specs_by_capture[folder]
                done = book.rows.get(folder, {})
                tasks = rt.plan_tasks(plan, path, specs, task_target_frames)
                for task in tasks:
                    summary.tasks_total += 1
                    row = done.get(task.task_id)
                    if (
                        row is not None
                        and row.status == rm.STATUS_DONE
                        and row.source_hash == plan.source_hash
                        and _task_intact(path, rt.task_shard_keys(task, specs), row.shard_bytes)
                    ):
                        summary.tasks_skipped += 1
                        bar.skip(1)
                        continue
                    yield dataclasses.replace(
                        task, decode_threads=dthreads, encode_thread=bool(ethread), max_member_bytes=cap_bytes
                    )

        window = 4 * n_workers
        pending: list[rt.TaskResult] = []
        by_id: dict[str, rt.RepackTask] = {}  # tasks in flight or with results not yet applied
        last_flush = time.monotonic()
        # the total is fixed before the first task runs (a first, cheap planning pass that keeps only a
        # count), so the percentage never goes back; finished tasks that are skipped count as done
        n_tasks = sum(
            len(rt.plan_tasks(plan, L.capture_store_path(store, f), specs_by_capture[f], task_target_frames))
            for f, plan in plans.items()
        )
        bar = Progress("repack", n_tasks, unit="task", enabled=progress)
        it = todo()
        ac = as_completed()
        for task in _take(it, window):
            by_id[task.task_id] = task
            ac.add(c.submit(rt.run_task, task, key=f"repack-{task.task_id}", pure=False))
        for fut in ac:
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory
                task = by_id[fut.key.removeprefix("repack-")]
                res = rt.TaskResult(_failed_row(task, f"{type(exc).__name__}: {exc}"), ())
            fut.release()
            pending.append(res)
            bar.update(1)
            for task in _take(it, 1):
                by_id[task.task_id] = task
                ac.add(c.submit(rt.run_task, task, key=f"repack-{task.task_id}", pure=False))
            if time.monotonic() - last_flush > flush_seconds:
                _apply_results(pending, by_id, specs_by_capture, store, book, summary)
                pending.clear()
                last_flush = time.monotonic()
        _apply_results(pending, by_id, specs_by_capture, store, book, summary)
        bar.close()

    # 4. mark complete captures, consolidate the manifest, write samples.parquet
    for folder in plans:
        rows = book.rows.get(folder, {}).values()
        ok = all(r.status == rm.STATUS_DONE for r in rows)
        path = L.capture_store_path(store, folder)
        with _writing(f"{path}/zarr.json"):
            g = L.open_capture_group(path, mode="r+")
            g.attrs[L.ATTR_COMPLETE] = bool(ok)
    book.consolidate()
    write_samples_manifest(store)
    summary.seconds = time.perf_counter() - t0
    log.info("repack: %s", summary.line())
    return summary


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    """Name ``what`` in an OSError that names no file (zarr's writes of a full disk: ENOSPC)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, what) from exc
        raise


def _take(it: Iterator[rt.RepackTask], n: int) -> list[rt.RepackTask]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _apply_results(
    results: list[rt.TaskResult],
    by_id: dict[str, rt.RepackTask],
    specs_by_capture: dict[str, dict[str, L.ArraySpec]],
    store: str,
    book: ManifestBook,
    summary: RepackSummary,
) -> None:
    """Write the valid masks of finished tasks (driver-only writes), then record their manifest rows."""
    groups: dict[str, Any] = {}
    arrays: dict[tuple[str, str], Any] = {}
    # per-camera masks by (capture, mask, frame range): tasks of different cameras over the same frames share
    # the mask's chunks (all cameras), so each range is read and written once, not once per camera
    columns: dict[tuple[str, str, int, int], dict[int, np.ndarray]] = defaultdict(dict)
    rows: list[rm.RepackRow] = []
    for res in results:
        row = res.row
        task = by_id[row.task_id]
        if row.status == rm.STATUS_DONE:
            g = groups.get(task.capture)
            if g is None:
                g = groups[task.capture] = L.open_capture_group(task.store_path, mode="r+")
            mask = np.asarray(res.valid, dtype=bool)
            vname = L.valid_name(task.asset)
            if (task.capture, vname) not in arrays:
                arrays[task.capture, vname] = g[vname]
            if task.camera_index >= 0:
                columns[task.capture, vname, task.frame_start, task.frame_stop][task.camera_index] = mask
            else:
                with _writing(f"{task.store_path}/{vname}"):
                    arrays[task.capture, vname][task.frame_start : task.frame_stop] = mask
            summary.frames_invalid += int(row.n_frames - row.n_valid)
            if task.asset == "image":
                summary.images_written += int(row.n_frames)
            specs = specs_by_capture[task.capture]
            sizes = shard_sizes(task.store_path, rt.task_shard_keys(task, specs))
            row = dataclasses.replace(row, shard_bytes=tuple(sizes))
        else:
            summary.tasks_failed += 1
            if row.errors:
                last = row.errors[-1]  # the task's own failure comes last, after any bad frames
                summary.failures.append((task.capture, last.file or "", last.reason or ""))
            else:
                summary.failures.append((task.capture, f"{task.raw_rel}/{task.source_key}", "failed"))
        summary.tasks_run += 1
        summary.peak_rss_mb = max(summary.peak_rss_mb, float(row.peak_rss_mb))
        rows.append(row)
    for (capture, vname, start, stop), cols in columns.items():
        arr = arrays[capture, vname]
        n_cams = arr.shape[1]
        block = np.zeros((stop - start, n_cams), bool) if len(cols) == n_cams else arr[start:stop]
        for ci, mask in cols.items():
            block[:, ci] = mask
        with _writing(f"{L.capture_store_path(store, capture)}/{vname}"):
            arr[start:stop] = block
    for row in rows:
        book.add(row)
        by_id.pop(row.task_id, None)
    book.flush()


def _base_row(
    capture: str, task_id: str, source_hash: str, status: str, errors: Sequence[rm.ErrorRecord]
) -> rm.RepackRow:
    """A row the driver writes: a capture's ``meta`` row (:func:`_failed_row` sets a task's columns)."""
    from datetime import datetime

    return rm.RepackRow(
        capture=capture,
        task_id=task_id,
        asset="meta",
        camera_id="",
        camera_index=-1,
        frame_start=0,
        frame_stop=0,
        status=status,
        n_frames=0,
        n_valid=0,
        n_missing=0,
        n_corrupt=0,
        errors=tuple(errors),
        seconds=0.0,
        cpu_seconds=0.0,
        peak_rss_mb=0.0,
        source_hash=source_hash,
        worker="driver",
        finished_at=datetime.now(UTC),
    )


def _probe_row(plan: rt.CapturePlan) -> rm.RepackRow:
    """The ``meta`` row of a capture: probe-level problems (missing stats, undecodable assets)."""
    # failed: e.g. an archive none of whose members is named like a frame, or one fetch listed
    status = rm.STATUS_FAILED if plan.failures else rm.STATUS_DONE
    return _base_row(
        plan.folder, f"{plan.folder}/meta", plan.source_hash, status, [*plan.errors, *plan.failures]
    )


def _capture_failure_row(src: rt.CaptureSource, reason: str) -> rm.RepackRow:
    error = rm.ErrorRecord(src.folder, src.rel, "", reason)
    return _base_row(src.folder, f"{src.folder}/meta", src.source_hash, rm.STATUS_FAILED, [error])


def _failed_row(task: rt.RepackTask, reason: str) -> rm.RepackRow:
    """The row of a task whose worker did not return (e.g. killed for memory)."""
    error = rm.ErrorRecord(task.capture, f"{task.raw_rel}/{task.source_key}", "", reason)
    row = _base_row(task.capture, task.task_id, task.source_hash, rm.STATUS_FAILED, [error])
    return dataclasses.replace(
        row,
        asset=task.asset,
        camera_id=task.camera_id,
        camera_index=task.camera_index,
        frame_start=task.frame_start,
        frame_stop=task.frame_stop,
        n_frames=task.frame_stop - task.frame_start,
        worker="?",
    )


# ---------------------------------------------------------------------------------------------------------
# samples.parquet
# ---------------------------------------------------------------------------------------------------------


def capture_samples_table(store: str, folder: str) -> pa.Table:
    """samples rows of one capture store, from its attrs and ``valid/*`` masks (absent asset = invalid)."""
    g = L.open_capture_group(L.capture_store_path(store, folder), mode="r")
    a = g.attrs
    F, C = len(a[L.ATTR_FRAME_IDS]), len(a[L.ATTR_CAMERA_IDS])

    def mask(asset: str, shape: tuple[int, ...]) -> np.ndarray:
        name = L.valid_name(asset)
        return np.asarray(g[name][...], dtype=bool) if name in g else np.zeros(shape, dtype=bool)

    vf = np.ones(F, dtype=bool)
    for asset in ("head_pose", "vertices", "uv_texture"):
        vf &= mask(asset, (F,))
    return sm.capture_samples(
        folder,
        a.get(L.ATTR_SUBJECT) or cat.CaptureId.parse(folder).sid,
        a[L.ATTR_FRAME_IDS],
        a[L.ATTR_SEGMENTS],
        a[L.ATTR_CAMERA_IDS],
        mask("image", (F, C)),
        mask("segmentation", (F, C)),
        vf,
    )


def write_samples_manifest(store: str | os.PathLike[str]) -> Path:
    """(Re)write ``STORE/_manifests/samples.parquet`` from every capture store, one capture at a time."""
    store = os.fspath(store)
    folders = L.list_capture_stores(store)
    return sm.write_samples(
        (capture_samples_table(store, f) for f in folders), L.manifests_path(store, sm.SAMPLES_MANIFEST)
    )


def read_repack_results(store: str | os.PathLike[str]) -> pd.DataFrame:
    """The repack manifest of ``store`` as a DataFrame."""
    return rm.read_repack_manifest(L.manifests_path(os.fspath(store), rm.REPACK_MANIFEST))
