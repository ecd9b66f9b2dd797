"""The work of the repack stage as top-level, picklable functions of plain data (they run on Dask workers,
in the driver, or in a test): hash a capture's raw inputs, probe it, plan its tasks, run one task.

Nothing here knows about Dask; :mod:`ava256.pipeline.repack` builds and runs the graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import resource
import socket
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ava256 import assets as A
from ava256 import capture as cat
from ava256.formats.calibration import Calibration, read_calibration
from ava256.formats.frame_list import read_frame_list
from ava256.formats.images import decode_rgb, image_size, label_size
from ava256.formats.ply import read_ply
from ava256.formats.scalars import read_npy, read_scalar_txt
from ava256.formats.zips import ZipReader
from ava256.manifests.fetch import FetchRow
from ava256.manifests.repack import STATUS_DONE, STATUS_FAILED, ErrorRecord, RepackRow
from ava256.pipeline.selection import Selection
from ava256.store import layout as L
from ava256.store.shards import ShardWriter, shard_writer

log = logging.getLogger(__name__)

#: A task covers whole shards of one (asset, camera) and about this many frames (several shards for small
#: per-frame arrays). It writes its shards one at a time, so its memory is one shard buffer.
TASK_TARGET_FRAMES = 256


# ---------------------------------------------------------------------------------------------------------
# Sources and hashes
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureSource:
    """A raw capture: canonical ``folder``, its directory ``root`` (``RAW/<folder as on disk>``), its path
    relative to RAW (for error records) and the hash of its raw inputs."""

    folder: str
    root: str
    rel: str
    source_hash: str
    hash_method: str  # "fetch-manifest" or "stat"
    #: (key, "status: error") of every object the fetch manifest lists for this capture
    expected_keys: tuple[tuple[str, str], ...] = ()


def hash_fetch_rows(rows: Sequence[FetchRow]) -> str:
    """sha256 over the sorted (key, bytes, sha256, etag, status) of a capture's fetch manifest rows."""
    h = hashlib.sha256(b"fetch-manifest-v1\n")
    for r in sorted(rows, key=lambda r: str(r.key)):
        values = (r.key, r.bytes, r.sha256, r.etag, r.status)
        h.update("\t".join("" if v is None else str(v) for v in values).encode())
        h.update(b"\n")
    return h.hexdigest()


def hash_tree_stat(root: str | os.PathLike[str]) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file under ``root`` (sorted): the fallback
    identity of a raw capture that no fetch manifest describes (a copied-in or synthetic tree). Changing,
    adding or touching any file changes it; no file content is read."""
    root = Path(root)
    h = hashlib.sha256(b"stat-v1\n")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.endswith((".part", ".tmp")):
                continue
            p = Path(dirpath) / name
            st = p.stat()
            entries.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(entries):
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Probe: everything the driver needs to create a capture's arrays (small reads only)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CapturePlan:
    """What a probe learns about one raw capture (all small: metadata, stats, sizes)."""

    folder: str
    subject: str
    root: str
    rel: str
    source_hash: str
    geometry: L.CaptureGeometry
    source_image_hw: tuple[int, int] | None
    source_segmentation_hw: tuple[int, int] | None
    frame_ids: list[int]
    segments: list[str]
    encoder_frame_ids: list[int]
    calibration: Calibration
    texture_mean: np.ndarray | None = None  # (T, T, 3) float32
    texture_var: float = float("nan")
    vertex_mean: np.ndarray | None = None  # (V, 3) float32
    vertex_var: float = float("nan")
    errors: list[ErrorRecord] = field(default_factory=list)  # recorded; the capture is repacked
    failures: list[ErrorRecord] = field(default_factory=list)  # recorded; the capture's meta task fails
    selection: Selection = field(default_factory=Selection)  # what of the raw capture the plan holds


def _err(src_rel: str, capture: str, key: str, member: str, reason: str) -> ErrorRecord:
    return ErrorRecord(capture, f"{src_rel}/{key}", member, reason)


#: what :func:`_first_decodable` found in an archive
ABSENT, UNRESOLVED, UNDECODABLE = "absent", "unresolved", "undecodable"


def _first_decodable(
    path: Path,
    asset: str,
    camera: str,
    frame_ids: Sequence[int],
    decode: Callable[[bytes], Any],
    tries: int = 8,
    max_bytes: int | None = None,
) -> tuple[Any, str]:
    """``(decode(first readable member), "")`` of the zip at ``path``, whose member naming is resolved from
    its listing (:func:`ava256.capture.resolve_member_pattern`); else ``(None, why)`` with why one of
    :data:`ABSENT` (no such file), :data:`UNRESOLVED` (no member named like a frame) or :data:`UNDECODABLE`.
    The probe reads image headers only (:func:`image_size`, :func:`label_size`): a member whose pixels turn
    out corrupt is recorded by its task, and its header still gives the image's size."""
    if not path.is_file():
        return None, ABSENT
    cap = cat.frame_archive(asset).max_member_bytes if max_bytes is None else max_bytes
    try:
        with ZipReader(path) as z:
            pattern = cat.resolve_member_pattern(asset, z.names(), camera)
            if pattern is None:
                return None, UNRESOLVED
            n = 0
            for f in frame_ids:
                m = cat.frame_archive(asset).member(camera, f, pattern)
                if not z.has(m):
                    continue
                try:
                    return decode(z.read(m, cap)), ""
                except (ValueError, zipfile.BadZipFile, OSError):
                    n += 1
                    if n >= tries:
                        return None, UNDECODABLE
    except (zipfile.BadZipFile, OSError, ValueError):
        return None, UNDECODABLE
    return None, UNDECODABLE


def probe_capture(
    src: CaptureSource, downsample: int = 1, max_member_bytes: int = 0, selection: Selection | None = None
) -> CapturePlan:
    """Read a capture's calibration, frame lists, normalisation stats and one sample of each asset (to learn
    image/texture/IR sizes). Raises ValueError/FileNotFoundError naming the capture and file when the
    calibration or frame list is missing or unreadable (the capture cannot be repacked), or when
    ``selection`` names a camera the calibration lacks or selects no frame; the plan holds only the
    selection (:mod:`ava256.pipeline.selection`)."""
    sel = selection or Selection()
    root = Path(src.root)
    cap = cat.CaptureId.parse(src.folder)
    errors: list[ErrorRecord] = []

    def read(key: str) -> bytes:
        p = root / key
        if not p.is_file():
            raise FileNotFoundError(f"capture {src.folder}: missing {src.rel}/{key}")
        return p.read_bytes()

    try:
        calib = read_calibration(read(cat.CALIBRATION_KEY))
        frames = read_frame_list(read(cat.FRAME_LIST_KEY))
    except ValueError as exc:
        raise ValueError(f"capture {src.folder}: {exc}") from exc
    all_segments = [str(s) for s in frames.segments]
    rows = sel.frame_rows(all_segments)
    frame_ids = [int(frames.frame_ids[i]) for i in rows]
    segments = [all_segments[i] for i in rows]
    if not frame_ids:
        raise ValueError(
            f"capture {src.folder}: the selection ({sel.describe()}) keeps none of the "
            f"{len(all_segments)} frames of {src.rel}/{cat.FRAME_LIST_KEY}"
        )
    enc_ids: list[int] = []
    if sel.wants("encoder_image") and (root / cat.ENCODER_FRAME_LIST_KEY).is_file():
        try:
            enc_ids = [int(x) for x in read_frame_list(read(cat.ENCODER_FRAME_LIST_KEY)).frame_ids]
        except ValueError as exc:
            errors.append(_err(src.rel, src.folder, cat.ENCODER_FRAME_LIST_KEY, "", str(exc)))
        if sel.frames is not None or sel.segments is not None:  # encoder frames among the selected frames
            keep = set(frame_ids)
            enc_ids = [f for f in enc_ids if f in keep]
    all_cams = list(calib.camera_ids)
    if sel.cameras is not None:
        unknown = [c for c in sel.cameras if c not in all_cams]
        if unknown:
            raise ValueError(
                f"capture {src.folder}: selected camera(s) {', '.join(unknown)} not in "
                f"{src.rel}/{cat.CALIBRATION_KEY} ({len(all_cams)} cameras)"
            )
        calib = calib.subset(list(sel.cameras))
    cams = list(calib.camera_ids)
    # archives the selection never reads (unselected assets, unselected dome cameras): their absence is no
    # failure
    unread = {
        a.archive.archive_key(c)
        for a in A.REGISTRY.values()
        for c in a.archive.cameras(all_cams)
        if not (sel.wants(a.name) and (a.axis != A.CAMERA or c in cams))
    }

    assets: list[str] = []
    failures: list[ErrorRecord] = []
    for row_key, why in src.expected_keys:  # what the fetch manifest says this capture has
        if row_key not in unread and not (root / row_key).is_file():
            failures.append(
                _err(src.rel, src.folder, row_key, "", f"listed in the fetch manifest ({why}) but absent")
            )

    def first(asset: str, cameras: Sequence[str], ids: Sequence[int], decode: Callable[[bytes], Any]) -> Any:
        """The first decodable sample of ``asset`` over ``cameras``; a failure on the record where its
        archives are present but none has a member named like a frame, or none decodes."""
        arch = cat.frame_archive(asset)
        whys: dict[str, str] = {}
        for c in cameras:
            value, why = _first_decodable(
                root / arch.archive_key(c), asset, c, ids, decode, max_bytes=max_member_bytes or None
            )
            if value is not None:
                return value
            whys[c] = why
        present = [c for c, w in whys.items() if w != ABSENT]
        if not present:
            return None
        key = (
            arch.archive_key(present[0])
            if len(cameras) == 1
            else posixpath.dirname(arch.archive_key(present[0]))
        )
        if all(whys[c] == UNRESOLVED for c in present):
            expected = " or ".join(
                arch.member(present[0], ids[0] if ids else 0, p) for p in arch.patterns(present[0])
            )
            reason = f"{asset}: no member of {len(present)} archive(s) is named like a frame (expected e.g. {expected})"
        else:
            reason = f"{asset}: no member of {len(present)} archive(s) could be decoded"
        failures.append(_err(src.rel, src.folder, key, "", reason))
        return None

    image_hw = seg_hw = None
    if sel.wants("image") or sel.wants("segmentation"):  # the stored label size is the image's
        image_hw = first("image", cams, frame_ids, image_size)
    if image_hw:
        if sel.wants("image"):
            assets.append("image")
        seg_hw = first("segmentation", cams, frame_ids, label_size) if sel.wants("segmentation") else None
        if seg_hw is not None:
            assets.append("segmentation")
    elif sel.wants("segmentation") and any((root / cat.segmentation_key(c)).is_file() for c in cams):
        errors.append(
            _err(
                src.rel,
                src.folder,
                "decoder/segmentation_parts",
                "",
                "segmentation without camera images (their size) is not repacked",
            )
        )

    T = None
    hw = first("uv_texture", [""], frame_ids, image_size) if sel.wants("uv_texture") else None
    if hw is not None and hw[0] == hw[1]:
        T = hw[0]
        assets.append("uv_texture")
    elif hw is not None:
        failures.append(
            _err(src.rel, src.folder, cat.TEXTURE_KEY, "", f"uv texture is not square ({hw[0]} x {hw[1]})")
        )
    V = None
    a = first("vertices", [""], frame_ids, read_ply) if sel.wants("vertices") else None
    if a is not None:
        V = int(a.shape[0])
        assets.append("vertices")
    for asset in ("keypoints_3d", "head_pose"):  # small members: each task resolves and decodes its own
        if sel.wants(asset) and (root / cat.frame_archive(asset).archive_key()).is_file():
            assets.append(asset)
    enc_hw = None
    if enc_ids:
        enc_hw = first("encoder_image", cat.ENCODER_CAMERAS, enc_ids, image_size)
        if enc_hw is not None:
            assets.append("encoder_image")

    # normalisation stats
    tex_mean = vert_mean = None
    tex_var = vert_var = float("nan")
    for key, kind in (
        (cat.TEXTURE_MEAN_KEY, "tm"),
        (cat.TEXTURE_VARIANCE_KEY, "tv"),
        (cat.VERTICES_MEAN_KEY, "vm"),
        (cat.VERTICES_VARIANCE_KEY, "vv"),
    ):
        if (
            kind.startswith("t")
            and "uv_texture" not in assets
            or kind.startswith("v")
            and "vertices" not in assets
        ):
            continue
        try:
            data = read(key)
            if kind == "tm":
                tex_mean = decode_rgb(data).astype(np.float32)
                if tex_mean.shape != (T, T, 3):
                    raise ValueError(f"texture mean has shape {tex_mean.shape}, expected {(T, T, 3)}")
            elif kind == "tv":
                tex_var = float(read_scalar_txt(data))
            elif kind == "vm":
                vert_mean = np.asarray(read_npy(data), dtype=np.float32).reshape(-1, 3)
                if vert_mean.shape != (V, 3):
                    raise ValueError(f"vertex mean has shape {vert_mean.shape}, expected {(V, 3)}")
            else:
                vert_var = float(read_scalar_txt(data))
        except (FileNotFoundError, ValueError) as exc:
            if kind == "tm":
                tex_mean = None
            if kind == "vm":
                vert_mean = None
            errors.append(_err(src.rel, src.folder, key, "", str(exc)))

    out_hw = L.downsampled_size(image_hw, downsample) if image_hw else None
    geom = L.CaptureGeometry(
        n_frames=len(frame_ids),
        camera_ids=tuple(cams),
        image_hw=out_hw,
        texture_size=T,
        n_vertices=V,
        n_encoder_frames=len(enc_ids),
        encoder_hw=enc_hw,
        assets=tuple(a for a in A.REGISTRY if a in assets),
    )
    return CapturePlan(
        folder=src.folder,
        subject=cap.sid,
        root=src.root,
        rel=src.rel,
        source_hash=src.source_hash,
        geometry=geom,
        source_image_hw=image_hw,
        source_segmentation_hw=seg_hw,
        frame_ids=frame_ids,
        segments=segments,
        encoder_frame_ids=enc_ids,
        calibration=calib,
        texture_mean=tex_mean,
        texture_var=tex_var,
        vertex_mean=vert_mean,
        vertex_var=vert_var,
        errors=errors,
        failures=failures,
        selection=sel,
    )


def group_attrs(plan: CapturePlan, downsample: int, codec: str, checksum: bool = True) -> dict[str, Any]:
    """Group attributes of a capture store (keys from :mod:`ava256.store.layout`)."""
    g = plan.geometry
    return {
        L.ATTR_CAPTURE_ID: plan.folder,
        L.ATTR_SUBJECT: plan.subject,
        L.ATTR_CAMERA_IDS: list(g.camera_ids),
        L.ATTR_FRAME_IDS: list(plan.frame_ids),
        L.ATTR_SEGMENTS: list(plan.segments),
        L.ATTR_ENCODER_FRAME_IDS: list(plan.encoder_frame_ids),
        L.ATTR_ENCODER_CAMERAS: list(cat.ENCODER_CAMERAS),
        L.ATTR_TEXTURE_VAR: None if np.isnan(plan.texture_var) else plan.texture_var,
        L.ATTR_VERTEX_VAR: None if np.isnan(plan.vertex_var) else plan.vertex_var,
        L.ATTR_SOURCE_HASH: plan.source_hash,
        L.ATTR_FORMAT_VERSION: L.FORMAT_VERSION,
        L.ATTR_DOWNSAMPLE: int(downsample),
        L.ATTR_IMAGE_SIZE: list(g.image_hw) if g.image_hw else None,
        L.ATTR_SOURCE_IMAGE_SIZE: list(plan.source_image_hw) if plan.source_image_hw else None,
        L.ATTR_CODEC: codec,
        L.ATTR_CHUNK_CHECKSUM: bool(checksum),
        L.ATTR_ASSETS: list(g.assets),
        L.ATTR_INTRINSICS_CONVENTION: L.INTRINSICS_CONVENTION,
        L.ATTR_COMPLETE: False,
        L.ATTR_SELECTION: plan.selection.to_attrs(),
    }


def write_capture_metadata(group: zarr.Group, plan: CapturePlan) -> None:
    """Write the small per-capture arrays (coordinates, camera calibration scaled to the stored size, stats)."""
    g, cal = plan.geometry, plan.calibration
    group[L.COORD_FRAME][...] = np.asarray(plan.frame_ids, dtype=np.int64)
    if L.COORD_CAMERA in group:
        group[L.COORD_CAMERA][...] = np.asarray(cal.camera_ids, dtype=str)
    if L.COORD_ENCODER_FRAME in group:
        group[L.COORD_ENCODER_FRAME][...] = np.asarray(plan.encoder_frame_ids, dtype=np.int64)
        group[L.COORD_ENCODER_CAMERA][...] = np.asarray(cat.ENCODER_CAMERAS, dtype=str)
    if g.image_hw:
        group[L.CAMERA_INTRINSICS][...] = L.sensor_to_image_intrinsics(cal.intrinsics, g.image_hw).astype(
            np.float32
        )
    else:
        group[L.CAMERA_INTRINSICS][...] = cal.intrinsics.astype(np.float32)
    group[L.CAMERA_EXTRINSICS][...] = cal.extrinsics.astype(np.float32)
    group[L.CAMERA_DISTORTION][...] = cal.distortion.astype(np.float32)
    if plan.texture_mean is not None and L.TEXTURE_MEAN in group:
        group[L.TEXTURE_MEAN][...] = plan.texture_mean
    if plan.vertex_mean is not None and L.VERTEX_MEAN in group:
        group[L.VERTEX_MEAN][...] = plan.vertex_mean


# ---------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------


class UnresolvedArchive(ValueError):
    """A task's archive is present but none of its members is named like a frame."""


@dataclass(frozen=True)
class RepackTask:
    """Write frames ``[frame_start, frame_stop)`` of one asset (of one camera for per-camera assets) into
    the capture store: whole shards only (the range is shard-aligned)."""

    capture: str
    raw_root: str  # RAW/<capture folder on disk>
    raw_rel: str  # that folder relative to RAW (error records)
    store_path: str  # STORE/<capture>.zarr
    asset: str
    array: str
    camera_id: str  # "" for per-frame assets
    camera_index: int  # -1 for per-frame assets
    frame_start: int
    frame_stop: int
    frames_per_shard: int
    frame_ids_le: bytes  # ids of frames [frame_start, frame_stop) as little-endian int64 (compact to pickle)
    source_key: str  # zip key relative to the capture folder
    source_hw: tuple[int, ...] | None  # expected decoded (H, W) (images, labels, IR) / (T, T) / (V,)
    out_hw: tuple[int, int] | None  # stored (H, W) for images and labels
    source_hash: str
    decode_threads: int = 0  # threads per AVIF decode in the worker (0: Pillow's default, all cores)
    encode_thread: bool = False  # compress in a helper thread, overlapping the next decode (spare cores only)
    max_member_bytes: int = 0  # members declared larger are corrupt, never inflated (0: the catalog's cap)

    @property
    def frame_ids(self) -> np.ndarray:
        """(frame_stop - frame_start,) int64 frame ids of the range."""
        return np.frombuffer(self.frame_ids_le, dtype="<i8")

    @property
    def task_id(self) -> str:
        cam = self.camera_id or "-"
        return f"{self.capture}/{self.asset}/{cam}/{self.frame_start:06d}-{self.frame_stop:06d}"

    def shard_starts(self) -> list[int]:
        return list(range(self.frame_start, self.frame_stop, self.frames_per_shard))


def _source_key(asset: str, camera_id: str) -> str:
    return cat.frame_archive(asset).archive_key(camera_id)


def decode_member(task: RepackTask, data: bytes) -> np.ndarray:
    """Decode one member's bytes into the stored per-frame slice of ``task.asset`` (resampled if needed) with
    the asset's registry decoder. ValueError (with the reason) for undecodable data or a wrong shape."""
    return A.asset(task.asset).decode(data, task.source_hw, task.out_hw)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB): ``VmHWM`` from /proc (which
    :func:`reset_peak_rss` can reset), else ``ru_maxrss`` (peak since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident set size of this process now (MiB; 0 where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: ``echo 5 > /proc/self/clear_refs``), so a
    benchmark can measure the peak of one phase. Returns False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class _Tally:
    """A task's outcome so far: the per-frame valid mask, the error records (capped) and exact counts."""

    capture: str
    file: str  # the archive, relative to RAW
    valid: np.ndarray
    errors: list[ErrorRecord] = field(default_factory=list)
    n_missing: int = 0
    n_corrupt: int = 0

    def err(self, member: str, reason: str) -> None:
        if len(self.errors) < 1000:  # bound the manifest row; counts stay exact
            self.errors.append(ErrorRecord(self.capture, self.file, member, reason))


@dataclass(frozen=True)
class TaskResult:
    """What :func:`run_task` returns: the task's manifest row and its per-frame valid mask (one bool per
    frame of the range; the driver writes it to ``valid/<asset>``, it is not a manifest column)."""

    row: RepackRow
    valid: tuple[bool, ...]


def run_task(task: RepackTask, write: bool = True) -> TaskResult:
    """Decode every frame of ``task`` and (if ``write``) write its shards, one shard buffer at a time.

    Returns its :class:`TaskResult`: the repack-manifest row and the valid mask. A missing member is a
    dropped frame (``n_missing``), an unreadable one is ``n_corrupt``; both are masked invalid and listed in
    ``errors``. Any other exception (e.g. a store write error) gives ``status = "failed"`` and no valid mask
    is written. ``write=False`` decodes only (the pure-decode benchmark baseline)."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = task.frame_stop - task.frame_start
    tally = _Tally(task.capture, f"{task.raw_rel}/{task.source_key}", np.zeros(n, dtype=bool))
    status = STATUS_DONE
    try:
        _repack(task, write, tally)
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest, retried on the next run
        status = STATUS_FAILED
        reason = failure_reason(exc, f"{task.store_path}/{task.array}")
        log.error("repack task %s failed: %s", task.task_id, reason)  # one line; no traceback
        tally.err("", reason)
    row = RepackRow(
        capture=task.capture,
        task_id=task.task_id,
        asset=task.asset,
        camera_id=task.camera_id,
        camera_index=task.camera_index,
        frame_start=task.frame_start,
        frame_stop=task.frame_stop,
        status=status,
        n_frames=n,
        n_valid=int(tally.valid.sum()),
        n_missing=tally.n_missing,
        n_corrupt=tally.n_corrupt,
        errors=tuple(tally.errors),
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        peak_rss_mb=peak_rss_mb(),
        source_hash=task.source_hash,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        finished_at=datetime.now(UTC),
    )
    return TaskResult(row, tuple(tally.valid.tolist()))


def _repack(task: RepackTask, write: bool, tally: _Tally) -> None:
    """The body of :func:`run_task`: open the store array and the archive, then decode and write."""
    _set_decode_threads(task.decode_threads)
    arr = zarr.open_array(task.store_path, path=task.array, mode="r+") if write else None
    reader = _open_source(task, tally)
    try:
        arch = cat.frame_archive(task.asset)
        pattern = _member_pattern(task, arch, reader) if reader is not None else None
        enc = shard_writer(arr) if write else None
        _TaskRun(task, tally, reader, arch, pattern, arr, enc).run()
    finally:
        if reader is not None:
            reader.close()


def _open_source(task: RepackTask, tally: _Tally) -> ZipReader | None:
    """The task's archive, or None (recorded: a missing file drops every frame, an unreadable one makes
    every frame corrupt). Unsafe member names are recorded and never read."""
    path = Path(task.raw_root) / task.source_key
    n = len(tally.valid)
    if not path.is_file():
        tally.err("", "missing file")
        tally.n_missing = n
        return None
    try:
        reader = ZipReader(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        tally.err("", f"unreadable zip: {exc}")
        tally.n_corrupt = n
        return None
    if reader.unsafe:  # zip-slip names: never read, but on the record
        tally.err(", ".join(reader.unsafe[:10]), "unsafe member name(s) ignored (absolute or '..' paths)")
    return reader


def _member_pattern(task: RepackTask, arch: cat.FrameArchive, reader: ZipReader) -> str:
    """The member naming pattern the archive uses; :class:`UnresolvedArchive` where nothing in it is named
    like a frame (the task fails)."""
    pattern = cat.resolve_member_pattern(task.asset, reader.names(), task.camera_id)
    if pattern is None:
        expected = " or ".join(arch.member(task.camera_id, int(task.frame_ids[0]), p)
                               for p in arch.patterns(task.camera_id))  # fmt: skip
        raise UnresolvedArchive(
            f"none of its {len(reader.names())} member(s) is named like a frame (expected e.g. {expected})"
        )
    return pattern


@dataclass
class _TaskRun:
    """Decodes a task's frames and writes its shards.

    With a shard writer (``enc``), each decoded frame is encoded into its chunk bytes at once -- or, with
    ``encode_thread``, by a helper thread while the next frame decodes (the compressors release the GIL) --
    and appended to its shard's file, renamed into place once complete; memory is a few decoded frames.
    Otherwise (a remote store) a shard buffer is written through zarr; with no array, frames are only decoded.
    """

    task: RepackTask
    tally: _Tally
    reader: ZipReader | None  # None: every frame is invalid (already recorded)
    arch: cat.FrameArchive
    pattern: str | None
    arr: zarr.Array | None
    enc: ShardWriter | None
    sinks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cap = self.task.max_member_bytes or self.arch.max_member_bytes
        self.frame_ids = self.task.frame_ids

    def run(self) -> None:
        """Write every shard; aborts unstored shards once the encode thread has stopped."""
        try:
            with self._pool() as pool:
                self._write_shards(pool)
        finally:
            for sink in self.sinks:  # no-op for stored shards
                sink.abort()
            if self.enc is not None:
                with contextlib.suppress(Exception):  # a task already failing: its own error is recorded
                    self.enc.close()

    def _pool(self) -> ThreadPoolExecutor | _InlineExecutor:
        if self.task.encode_thread:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="repack-encode")
        return _InlineExecutor()

    def _write_shards(self, pool: Any) -> None:
        last: Future | None = None
        for s0 in self.task.shard_starts():
            last = self._write_shard(pool, s0)
        if last is not None:
            last.result()
        if self.enc is not None:
            self.enc.close()  # waits for the shards committed in the background; raises their failure

    def _write_shard(self, pool: Any, s0: int) -> Future | None:
        """Write the shard starting at frame ``s0``; with a shard writer, returns the future that stores it."""
        s1 = min(s0 + self.task.frames_per_shard, self.task.frame_stop)
        if self.enc is not None:
            return self._encode_shard(pool, s0, s1)
        if self.arr is not None:
            self._buffer_shard(s0, s1)
        else:
            for f in range(s0, s1):
                self._decode_frame(f - self.task.frame_start)
        return None

    def _encode_shard(self, pool: Any, s0: int, s1: int) -> Future:
        t = self.task
        coords = [s0 // t.frames_per_shard] + ([t.camera_index] if t.camera_index >= 0 else [])
        sink = self.enc.open_shard(tuple(coords + [0] * (self.arr.ndim - len(coords))))
        self.sinks.append(sink)
        parts: list[Future] = []
        for f in range(s0, s1):
            x = self._decode_frame(f - t.frame_start)
            if len(parts) >= 2:
                parts[-2].result()  # at most ~2 decoded frames wait for the encoder
            parts.append(pool.submit(_append, sink, x))
        # queued behind this shard's encodes on the same single thread: runs once they are done
        return pool.submit(_close_shard, sink, parts)

    def _buffer_shard(self, s0: int, s1: int) -> None:
        t, arr = self.task, self.arr
        buf = _new_buffer(arr, t, s1 - s0)
        for f in range(s0, s1):
            x = self._decode_frame(f - t.frame_start)
            buf[f - s0] = x if x is not None else arr.fill_value
        if t.camera_index >= 0:
            arr[s0:s1, t.camera_index] = buf
        else:
            arr[s0:s1] = buf

    def _decode_frame(self, i: int) -> np.ndarray | None:
        """Frame ``i`` of the range, or None (recorded: a missing member, or a corrupt one)."""
        if self.reader is None:
            return None
        member = self.arch.member(self.task.camera_id, int(self.frame_ids[i]), self.pattern)
        if not self.reader.has(member):
            self.tally.n_missing += 1
            self.tally.err(member, "missing member (dropped frame)")
            return None
        try:
            x = decode_member(self.task, self.reader.read(member, self.cap))
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            self.tally.n_corrupt += 1
            self.tally.err(member, str(exc))
            return None
        self.tally.valid[i] = True
        return x


def failure_reason(exc: BaseException, where: str = "") -> str:
    """One line for a failed task: the exception's type and first message line; an OSError that names no
    file (a write's ENOSPC) is said to be under ``where``."""
    if isinstance(exc, UnresolvedArchive):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None and where:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}: writing under {where}"
    return (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]


def _new_buffer(arr: zarr.Array, task: RepackTask, n: int) -> np.ndarray:
    """An uninitialised (n, *one frame of one camera) buffer (every slot is written before use)."""
    shape = tuple(arr.shape[2:]) if task.camera_index >= 0 else tuple(arr.shape[1:])
    return np.empty((n, *shape), dtype=arr.dtype)


class _InlineExecutor:
    """``submit`` runs the call at once (the no-helper-thread variant of the encode pipeline)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised by result(), like a thread pool
            fut.set_exception(exc)
        return fut


def _append(sink, x: np.ndarray | None) -> None:
    sink.append(x)


def _close_shard(sink, parts: list[Future]) -> None:
    """Store the shard once all its frames were encoded into it (re-raises an encode error; the finally of
    :func:`run_task` then drops the partial shard)."""
    for p in parts:
        p.result()
    sink.close()


def _set_decode_threads(n: int) -> None:
    """Threads per AVIF decode in this process (0 keeps Pillow's default: all cores). With one
    single-threaded Dask worker per core, 1 avoids oversubscribing the CPU."""
    if n > 0:
        from PIL import AvifImagePlugin

        AvifImagePlugin.DEFAULT_MAX_THREADS = int(n)


# ---------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------


def plan_tasks(
    plan: CapturePlan,
    store_path: str,
    specs: dict[str, L.ArraySpec],
    task_target_frames: int = TASK_TARGET_FRAMES,
) -> list[RepackTask]:
    """All tasks of one capture: for each asset present (and each camera of per-camera assets), frame ranges
    made of whole shards (``max(1, task_target_frames // frames_per_shard)`` shards each), so no two tasks
    ever write one shard."""
    g = plan.geometry
    # the size each asset's members decode to, as the probe found it (None: not checked)
    source_hw = {
        "image": plan.source_image_hw,
        "segmentation": plan.source_segmentation_hw,
        "uv_texture": (g.texture_size, g.texture_size),
        "vertices": (g.n_vertices,),
        "encoder_image": g.encoder_hw,
    }
    tasks: list[RepackTask] = []
    for asset in g.assets:
        a = A.REGISTRY[asset]
        spec = specs[a.array]
        s = spec.frames_per_shard
        span = s * max(1, task_target_frames // s)
        ids = plan.encoder_frame_ids if a.axis == A.ENCODER else plan.frame_ids
        cams = [(c, i if a.axis != A.FRAME else -1) for i, c in enumerate(a.archive.cameras(g.camera_ids))]
        src_hw = source_hw.get(asset)
        out_hw = g.image_hw if a.axis == A.CAMERA else None
        n = len(ids)
        for cam, ci in cams:
            for f0 in range(0, n, span):
                f1 = min(f0 + span, n)
                tasks.append(
                    RepackTask(
                        capture=plan.folder,
                        raw_root=plan.root,
                        raw_rel=plan.rel,
                        store_path=store_path,
                        asset=asset,
                        array=spec.name,
                        camera_id=cam,
                        camera_index=ci,
                        frame_start=f0,
                        frame_stop=f1,
                        frames_per_shard=s,
                        frame_ids_le=np.asarray(ids[f0:f1], dtype="<i8").tobytes(),
                        source_key=_source_key(asset, cam),
                        source_hw=tuple(src_hw) if src_hw else None,
                        out_hw=tuple(out_hw) if out_hw else None,
                        source_hash=plan.source_hash,
                    )
                )
    return tasks


def task_shard_keys(task: RepackTask, specs: dict[str, L.ArraySpec]) -> list[str]:
    """Store keys (relative to the capture group) of the shard files ``task`` writes."""
    spec = specs[task.array]
    return [L.shard_key(spec, f0, max(task.camera_index, 0)) for f0 in task.shard_starts()]
