"""``ZarrSampleDataset``: training samples read from repacked Zarr capture stores (never the raw tree).

One sample is one (capture, frame_index, camera_index) row of a split manifest. Reading it touches exactly
four chunks: the camera image ``image[f, c]`` (H, W, 3), the mesh ``vertices[f]`` (V, 3), the uv texture
``uv_texture[f]`` (T, T, 3) and the head pose ``head_pose[f]`` (3, 4). On a local store each read is one
``pread`` of the chunk's byte range (shard indexes are cached), checksummed and decompressed straight into
the batch tensor (:mod:`ava256.store.fastread`); on a store at an fsspec URL (``s3://``) a batch's chunks are
ranged reads issued together (at most one request per chunk, shard indexes cached); other stores go through
zarr. Everything else is a per-capture constant read once and cached: camera calibration, the neutral mesh
and (in an LRU) the neutral texture.

The sample dict (the loader -> model contract; docs/pipeline.md has the table):

=============  ==================  ====================================================================
key            shape / type        meaning
=============  ==================  ====================================================================
image          (3, H, W) float32   camera image, 0..255
camrot         (3, 3) float32      head -> camera rotation (``ava256.data.geometry``)
campos         (3,) float32        camera centre in the head frame, mm
focal          (2,) float32        fx, fy in pixels of the returned image
princpt        (2,) float32        cx, cy in pixels of the returned image (pixel centres at integers)
verts          (V, 3) float32      mesh vertices, normalised ``(v - vert_mean) / vert_std``
tex            (3, T, T) float32   uv texture, normalised ``(t - tex_mean) / tex_std``
neut_verts     (V, 3) float32      the capture's neutral mesh, normalised the same way
neut_tex       (3, T, T) float32   the capture's neutral texture, normalised the same way
idindex        int64 scalar        position of the capture in ``dataset.captures``
camindex       int64 scalar        position of the camera id in ``dataset.camera_ids``
pixelcoords    (H, W, 2) float32   x, y of every pixel
valid          bool scalar         always True (invalid samples are never returned)
capture        str                 capture folder ``mcd--mct--sid``
frame_index    int                 frame position in the capture (row of frame_list.csv)
=============  ==================  ====================================================================

With ``normalize=False`` (what ``ava256 train`` uses) samples are **compact**: only what differs per sample
travels from the workers, ``image`` (H, W, 3) and ``tex`` (T, T, 3) uint8 as stored, ``verts`` (V, 3) in mm,
and the small keys above; no ``neut_tex``, ``neut_verts`` or ``pixelcoords``. :func:`ava256.data.finish_batch`
turns a compact batch into the contract batch on the training device: it adds the per-capture neutral
conditioning from a device cache (read once per capture with :meth:`ZarrSampleDataset.neutral`) and the pixel
grid, and converts and normalises there. A compact sample is 3.6 MB instead of 26 MB at the release's sizes
(512 x 333 images, 1024 x 1024 textures), with no float math in the workers.

The neutral frame of a capture is its first ``EXP_neutral_peak`` frame (frame_list order) whose vertices and
uv texture are valid; if there is none, its first frame with both valid (a warning is logged).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset

from ava256.assets import FRAME, REGISTRY
from ava256.data.geometry import camera_in_head_frame, focal_principal, pixel_coords
from ava256.data.normalization import CaptureStats, NormStats, combine_stats
from ava256.store import layout as L
from ava256.store.chunks import warn_once
from ava256.store.fastread import ChunkReader, read_chunks

log = logging.getLogger(__name__)

NEUTRAL_SEGMENT = "EXP_neutral_peak"

#: what a chunk read raises for a corrupt or unreadable chunk (checksums, sizes, I/O): the sample is skipped
READ_ERRORS = (ValueError, OSError, EOFError)


@dataclass(frozen=True)
class BadSample:
    """A sample whose chunk could not be read: returned by ``__getitems__`` in its place (never a silent
    drop); :func:`ava256.data.collate_samples` lists these under the batch key ``"bad_samples"``."""

    capture: str
    frame_index: int
    camera_index: int
    array: str
    chunk: tuple[int, ...]
    reason: str

    def where(self) -> str:
        return f"capture {self.capture} array {self.array} chunk {','.join(map(str, self.chunk))}"


#: The asset arrays a training sample reads (the loader refuses a store without them).
SAMPLE_ARRAYS = (L.IMAGE, L.VERTICES, L.UV_TEXTURE, L.HEAD_POSE)
#: The per-frame assets among them (a sample is valid iff all are valid and its image is).
SAMPLE_FRAME_ASSETS = tuple(n for n, a in REGISTRY.items() if a.array in SAMPLE_ARRAYS and a.axis == FRAME)


def choose_neutral_frame(segments: Sequence[str], frame_valid: np.ndarray, capture: str = "") -> int:
    """Frame index of a capture's neutral conditioning frame: the first ``EXP_neutral_peak`` frame with
    ``frame_valid`` (vertices and uv texture valid), else the first valid frame (logged). ValueError if no
    frame is valid."""
    ok = np.asarray(frame_valid, dtype=bool)
    seg = np.asarray(segments, dtype=str)
    cand = np.flatnonzero((seg == NEUTRAL_SEGMENT) & ok)
    if cand.size:
        return int(cand[0])
    cand = np.flatnonzero(ok)
    if not cand.size:
        raise ValueError(
            f"capture {capture}: no frame with valid vertices and uv texture for neutral conditioning"
        )
    log.warning(
        "capture %s: no valid %s frame; neutral conditioning uses frame %d", capture, NEUTRAL_SEGMENT, cand[0]
    )
    return int(cand[0])


def open_capture(store: Any, capture: str, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open ``STORE/<capture>.zarr`` read-only; ``store`` is a path/URL or a zarr Store of the store root."""
    if isinstance(store, zarr.abc.store.Store):
        try:
            return zarr.open_group(store, path=capture + L.STORE_SUFFIX, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise FileNotFoundError(f"no capture store {capture}{L.STORE_SUFFIX} in {store}") from exc
    return L.open_capture_group(
        L.capture_store_path(store, capture), mode="r", storage_options=storage_options
    )


def read_capture_stats(group: zarr.Group, capture: str) -> CaptureStats:
    """The stored per-capture normalisation statistics (ValueError naming what is missing)."""
    a = group.attrs
    missing = [n for n in (L.TEXTURE_MEAN, L.VERTEX_MEAN) if n not in group]
    missing += [k for k in (L.ATTR_TEXTURE_VAR, L.ATTR_VERTEX_VAR) if a.get(k) is None]
    if missing:
        raise ValueError(f"capture {capture}: store lacks normalisation statistics {missing}")
    stats = CaptureStats(
        capture,
        np.asarray(group[L.TEXTURE_MEAN][...], dtype=np.float32),
        float(a[L.ATTR_TEXTURE_VAR]),
        np.asarray(group[L.VERTEX_MEAN][...], dtype=np.float32),
        float(a[L.ATTR_VERTEX_VAR]),
    )
    if not (np.isfinite(stats.tex_mean).all() and np.isfinite(stats.vert_mean).all()):
        raise ValueError(
            f"capture {capture}: stored texture/vertex mean contains NaN (not written by repack?)"
        )
    return stats


def compute_norm_stats(
    store: Any, captures: Sequence[str], storage_options: dict[str, Any] | None = None
) -> NormStats:
    """Cross-capture :class:`NormStats` of ``captures`` from their stores (one capture in memory at a time)."""
    return combine_stats(read_capture_stats(open_capture(store, c, storage_options), c) for c in captures)


@dataclass
class _CaptureMeta:
    """Small per-capture constants (picklable; built in the main process)."""

    name: str
    neutral_frame: int
    camera_ids: list[str]
    intrinsics: np.ndarray  # (C, 3, 3) float32, stored image pixels
    extrinsics: np.ndarray  # (C, 3, 4) float32, world -> camera


@dataclass
class _CaptureArrays:
    """Open arrays of one capture (per worker process)."""

    image: zarr.Array
    vertices: zarr.Array
    uv_texture: zarr.Array
    head_pose: zarr.Array
    #: direct chunk readers of (image, head_pose, vertices, uv_texture), or None: read through zarr
    readers: tuple[ChunkReader, ChunkReader, ChunkReader, ChunkReader] | None
    neut_verts: torch.Tensor | None  # normalised (V, 3); None in compact mode (not part of a sample)


def _chunk_readers(arrays: Sequence[zarr.Array]) -> tuple[ChunkReader, ...] | None:
    """:class:`ChunkReader` s of ``arrays`` if each reads exactly one frame per chunk through the fast path
    (``array[f]`` / ``image[f, c]`` is one chunk), else None (said once per process)."""
    readers = []
    for a in arrays:
        r = ChunkReader.for_array(a)
        lead = 2 if a.ndim == 5 else 1  # image: (F, C, H, W, 3); the others (F, ...)
        if r is None:
            return None
        if r.chunk_shape != (1,) * lead + tuple(a.shape[lead:]):
            warn_once(log, f"loader:{a.store_path}", "loader: %s has chunks %s, not one frame each; chunks are "
                      "read through zarr (slower)", a.store_path, r.chunk_shape)  # fmt: skip
            return None
        readers.append(r)
    return tuple(readers)


class ZarrSampleDataset(Dataset):
    """Training samples of a split manifest, read from ``STORE/<capture>.zarr`` (module doc for the dict).

    Args:
        store: the store root (path, fsspec URL, or a ``zarr.abc.store.Store`` of the root).
        split_df: rows with at least ``capture, frame_index, camera_index, camera_id, valid`` (a split part
            from ``ava256.manifests.splits.read_split_part`` or ``samples.parquet``). Rows with
            ``valid == False``, and rows the store's ``valid/*`` masks mark invalid, are excluded and counted
            in ``self.excluded``.
        downsample: the ``--downsample`` the stores must have been repacked with (None: any, but all
            captures must have the same image size). Images are returned as stored.
        stats: normalisation statistics; None computes them from the captures of ``split_df``. Pass the
            training set's ``dataset.stats`` to its val/test datasets.
        captures: the identity table (``idindex`` = position); default: sorted captures of ``split_df``.
        camera_ids: the camera table (``camindex`` = position); default: sorted camera ids of ``split_df``.
        neutral_cache: how many captures' neutral textures (uint8, 3 MB at T = 1024) a worker keeps (LRU),
            and how many :func:`ava256.data.finish_batch` keeps on the training device (None: 32 in a
            worker, every capture of the dataset on the device).
        normalize: True returns the full contract dict; False returns compact samples (uint8 pictures, raw
            vertices, no per-capture constants) for :func:`ava256.data.finish_batch` (module doc).
        fast_reads: read chunks of local stores with :class:`ava256.store.fastread.ChunkReader` instead of
            ``zarr.Array.__getitem__`` (same values, several times less CPU); False always uses zarr.
        ship_jpeg: compact samples of ``--codec jpeg`` stores carry each image's and texture's JFIF bytes
            (``image_jpeg``, ``tex_jpeg``: 1-D uint8 tensors) instead of pixels, for
            :func:`ava256.data.finish_batch` to decode on the GPU (:mod:`ava256.data.pictures`).
    """

    def __init__(
        self,
        store: Any,
        split_df: pd.DataFrame,
        *,
        downsample: int | None = None,
        stats: NormStats | None = None,
        captures: Sequence[str] | None = None,
        camera_ids: Sequence[str] | None = None,
        neutral_cache: int | None = None,
        normalize: bool = True,
        fast_reads: bool = True,
        storage_options: dict[str, Any] | None = None,
        ship_jpeg: bool = False,
    ) -> None:
        super().__init__()
        self.ship_jpeg = bool(ship_jpeg) and not normalize
        self.store = store if isinstance(store, zarr.abc.store.Store) else os.fspath(store)
        self.storage_options = storage_options
        self.neutral_cache_size = None if neutral_cache is None else max(1, int(neutral_cache))
        self.normalize = bool(normalize)
        self.fast_reads = bool(fast_reads)
        need = ["capture", "frame_index", "camera_index", "camera_id", "valid"]
        missing = [c for c in need if c not in split_df.columns]
        if missing:
            raise ValueError(f"split table lacks column(s) {missing}")
        df = split_df[need].copy()
        df["capture"] = df["capture"].astype(str)
        df["camera_id"] = df["camera_id"].astype(str)
        n_in = len(df)
        df = df.loc[df["valid"].astype(bool)]
        manifest_invalid = n_in - len(df)
        df = df.sort_values(["capture", "frame_index", "camera_index"], kind="stable").reset_index(drop=True)
        present = sorted(df["capture"].unique())
        self.captures: list[str] = list(captures) if captures is not None else present
        unknown = sorted(set(present) - set(self.captures))
        if unknown:
            raise ValueError(f"split rows reference captures not in `captures`: {unknown[:5]}")
        self.camera_ids: list[str] = (
            list(camera_ids) if camera_ids is not None else sorted(df["camera_id"].unique())
        )
        unknown = sorted(set(df["camera_id"]) - set(self.camera_ids))
        if unknown:
            raise ValueError(f"split rows reference camera ids not in `camera_ids`: {unknown[:5]}")

        self._meta: dict[str, _CaptureMeta] = {}
        keep = np.ones(len(df), dtype=bool)
        image_hw: tuple[int, int] | None = None
        tex_size = n_verts = None
        for cap, rows in df.groupby("capture", sort=True).indices.items():
            group = open_capture(self.store, cap, storage_options)
            a = group.attrs
            if a.get(L.ATTR_FORMAT_VERSION) != L.FORMAT_VERSION:
                raise ValueError(
                    f"capture {cap}: store format version {a.get(L.ATTR_FORMAT_VERSION)}, expected {L.FORMAT_VERSION}; re-run repack"
                )
            if not a.get(L.ATTR_COMPLETE, False):
                raise ValueError(
                    f"capture {cap}: store is incomplete (repack did not finish); re-run `ava256 repack`"
                )
            if downsample is not None and int(a.get(L.ATTR_DOWNSAMPLE, -1)) != int(downsample):
                raise ValueError(
                    f"capture {cap}: store was repacked with --downsample {a.get(L.ATTR_DOWNSAMPLE)}, the loader "
                    f"wants {downsample}; repack with --downsample {downsample} or change the loader's downsample"
                )
            for name in SAMPLE_ARRAYS:
                if name not in group:
                    raise ValueError(
                        f"capture {cap}: store has no {name!r} array (asset missing from the raw capture)"
                    )
            hw = tuple(int(x) for x in group[L.IMAGE].shape[2:4])
            t, v = int(group[L.UV_TEXTURE].shape[1]), int(group[L.VERTICES].shape[1])
            if image_hw is None:
                image_hw, tex_size, n_verts = hw, t, v
            elif (hw, t, v) != (image_hw, tex_size, n_verts):
                raise ValueError(
                    f"capture {cap}: image {hw} / texture {t} / vertices {v} differ from other captures' "
                    f"{image_hw} / {tex_size} / {n_verts}; samples could not be batched"
                )
            cams = [str(c) for c in a[L.ATTR_CAMERA_IDS]]
            fi = df["frame_index"].to_numpy()[rows]
            ci = df["camera_index"].to_numpy()[rows]
            if fi.max() >= group[L.IMAGE].shape[0] or ci.max() >= len(cams):
                raise ValueError(
                    f"capture {cap}: split rows index frames/cameras beyond the store's {group[L.IMAGE].shape[:2]}"
                )
            mism = np.asarray(cams, dtype=object)[ci] != df["camera_id"].to_numpy()[rows]
            if mism.any():
                raise ValueError(
                    f"capture {cap}: split camera ids disagree with the store's camera_ids ({int(mism.sum())} rows)"
                )
            frame_ok = np.ones(group[L.IMAGE].shape[0], dtype=bool)
            for asset in SAMPLE_FRAME_ASSETS:
                frame_ok &= np.asarray(group[L.valid_name(asset)][...], dtype=bool)
            image_ok = np.asarray(group[L.valid_name("image")][...], dtype=bool)
            keep[rows] = frame_ok[fi] & image_ok[fi, ci]
            self._meta[cap] = _CaptureMeta(
                name=cap,
                neutral_frame=choose_neutral_frame(a[L.ATTR_SEGMENTS], frame_ok, cap),
                camera_ids=cams,
                intrinsics=np.asarray(group[L.CAMERA_INTRINSICS][...], dtype=np.float32),
                extrinsics=np.asarray(group[L.CAMERA_EXTRINSICS][...], dtype=np.float32),
            )
        store_invalid = int((~keep).sum())
        if store_invalid:
            log.warning("%d split rows are invalid in the stores' valid masks and are skipped", store_invalid)
        df = df.loc[keep].reset_index(drop=True)
        self.excluded = {"manifest_invalid": int(manifest_invalid), "store_invalid": store_invalid}
        if df.empty:
            raise ValueError(f"no valid samples left ({n_in} split rows, excluded: {self.excluded})")

        self.image_size: tuple[int, int] = image_hw  # (H, W)
        self.texture_size: int = int(tex_size)
        self.n_vertices: int = int(n_verts)
        self.downsample = downsample
        cap_code = {c: i for i, c in enumerate(self.captures)}
        cam_code = {c: i for i, c in enumerate(self.camera_ids)}
        # Compact per-sample index: 12 bytes a sample (the full release has ~10^8 samples), O(1) lookup,
        # shared copy-on-write with forked workers.
        self._idindex = df["capture"].map(cap_code).to_numpy(np.int32)
        self._frame = df["frame_index"].to_numpy(np.int32)
        self._camera = df["camera_index"].to_numpy(np.int16)
        self._camindex = df["camera_id"].map(cam_code).to_numpy(np.int16)
        self.stats = stats if stats is not None else compute_norm_stats(self.store, present, storage_options)
        if tuple(self.stats.tex_mean.shape) != (3, tex_size, tex_size) or tuple(
            self.stats.vert_mean.shape
        ) != (n_verts, 3):
            raise ValueError(
                f"normalisation stats of shape {tuple(self.stats.tex_mean.shape)} / {tuple(self.stats.vert_mean.shape)} "
                f"do not match texture {tex_size} / vertices {n_verts}"
            )
        self._reset_worker_state()

    # --- per-worker state ------------------------------------------------------------------------------------
    def _reset_worker_state(self) -> None:
        self._pid = os.getpid()
        self._arrays: dict[str, _CaptureArrays] = {}
        self._neutral_tex: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pixelcoords = torch.from_numpy(pixel_coords(*self.image_size))
        self._device_constants: dict[str, Any] = {}  # finish_batch's per-device caches (main process)
        self._lock = threading.RLock()  # per-capture caches are shared by a ThreadLoader's threads

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_arrays", "_neutral_tex", "_pixelcoords", "_device_constants", "_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_worker_state()

    def _capture_arrays(self, cap: str) -> _CaptureArrays:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._reset_worker_state()
        arrs = self._arrays.get(cap)
        if arrs is not None:
            return arrs
        with self._lock:
            arrs = self._arrays.get(cap)
            if arrs is not None:
                return arrs
            g = open_capture(self.store, cap, self.storage_options)
            meta = self._meta[cap]
            image, verts, tex, pose = g[L.IMAGE], g[L.VERTICES], g[L.UV_TEXTURE], g[L.HEAD_POSE]
            neut_verts = None
            if self.normalize:
                nv = torch.from_numpy(np.array(verts[meta.neutral_frame], dtype=np.float32))
                neut_verts = self.stats.normalize_verts(nv)
            readers = _chunk_readers((image, pose, verts, tex)) if self.fast_reads else None
            arrs = _CaptureArrays(image, verts, tex, pose, readers, neut_verts)
            self._arrays[cap] = arrs
        return arrs

    def _neutral_texture_u8(self, cap: str, arrs: _CaptureArrays) -> torch.Tensor:
        """The capture's neutral uv texture, (T, T, 3) uint8 (LRU of ``neutral_cache`` captures)."""
        with self._lock:
            tex = self._neutral_tex.get(cap)
            if tex is None:
                tex = torch.from_numpy(np.ascontiguousarray(arrs.uv_texture[self._meta[cap].neutral_frame]))
                self._neutral_tex[cap] = tex
                while len(self._neutral_tex) > (self.neutral_cache_size or 32):
                    self._neutral_tex.popitem(last=False)
            else:
                self._neutral_tex.move_to_end(cap)
            return tex

    def neutral(self, capture: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The neutral conditioning of ``capture`` as stored: texture (T, T, 3) uint8 and vertices (V, 3)
        float32 mm (not normalised). Read on each call (``finish_batch`` caches it on the device)."""
        if capture not in self._meta:
            raise KeyError(f"capture {capture} is not in this dataset")
        arrs = self._capture_arrays(capture)
        nf = self._meta[capture].neutral_frame
        tex = torch.from_numpy(np.ascontiguousarray(arrs.uv_texture[nf]))
        verts = torch.from_numpy(np.array(arrs.vertices[nf], dtype=np.float32))
        return tex, verts

    def camera_ids(self, capture: str) -> tuple[str, ...]:
        """The camera ids of ``capture``, indexed like the camera index of :meth:`keys`."""
        return tuple(self._meta[capture].camera_ids)

    def uses_fast_reads(self, capture: str) -> bool:
        """Whether this process reads ``capture``'s chunks with :class:`ava256.store.fastread.ChunkReader` s
        (the fast path) rather than through zarr: False with ``fast_reads=False`` or a chunk layout the readers
        do not cover (said once in the log). Opens the capture's arrays in this process if not yet open."""
        return self._capture_arrays(capture).readers is not None

    def read_counts(self, capture: str | None = None) -> dict[str, dict[str, int]]:
        """What the fast path has read in this process so far, per array (``image``, ``head_pose``,
        ``vertices``, ``uv_texture``): the :class:`ava256.store.fastread.ChunkReader` tallies
        (``chunk_reads``, ``index_reads``, ``bytes``, ``requests``) summed over the open captures, or of
        ``capture`` alone. Empty where nothing is read through the fast path."""
        names = (L.IMAGE, L.HEAD_POSE, L.VERTICES, L.UV_TEXTURE)  # the order of _CaptureArrays.readers
        out: dict[str, dict[str, int]] = {}
        if self._pid != os.getpid():  # a forked worker that has read nothing yet: the parent's tallies
            return out
        with self._lock:
            arrays = [(c, a) for c, a in self._arrays.items() if capture is None or c == capture]
        for _, arrs in arrays:
            for name, reader in zip(names, arrs.readers or ()):
                total = out.setdefault(name, dict.fromkeys(reader.counts, 0))
                for k, v in reader.counts.items():
                    total[k] += v
        return out

    def device_constants(
        self, captures: Sequence[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For :func:`ava256.data.finish_batch`: the neutral textures (B, T, T, 3) uint8 and normalised
        neutral vertices (B, V, 3) of ``captures`` (one per sample), and the (H, W, 2) pixel grid, on
        ``device``. Cached there per capture (LRU of ``neutral_cache``, default every capture of the
        dataset: 3 MB each at T = 1024); a miss reads the capture's neutral frame once."""
        key = str(device)
        consts = self._device_constants.get(key)
        if consts is None:
            consts = {"pixelcoords": self._pixelcoords.to(device), "neutral": OrderedDict()}
            self._device_constants[key] = consts
        cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = consts["neutral"]
        limit = self.neutral_cache_size or len(self._meta)
        texs, verts = [], []
        for cap in captures:
            hit = cache.get(cap)
            if hit is None:
                tex_u8, nv = self.neutral(cap)
                hit = (tex_u8.to(device), self.stats.normalize_verts(nv).to(device))
                cache[cap] = hit
                while len(cache) > limit:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(cap)
            texs.append(hit[0])
            verts.append(hit[1])
        return torch.stack(texs), torch.stack(verts), consts["pixelcoords"]

    # --- Dataset API -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._idindex.shape[0])

    def sample_key(self, index: int) -> tuple[str, int, int]:
        """(capture, frame_index, camera_index) of sample ``index``."""
        return self.captures[int(self._idindex[index])], int(self._frame[index]), int(self._camera[index])

    def keys(self) -> Iterator[tuple[str, int, int]]:
        return (self.sample_key(i) for i in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample; ValueError naming its capture, array and chunk if a chunk cannot be read (a batch read,
        :meth:`__getitems__`, skips such a sample instead)."""
        sample = self.__getitems__([index])[0]
        if isinstance(sample, BadSample):
            raise ValueError(f"sample {index}: {sample.where()}: {sample.reason}")
        return sample

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Samples ``indices`` (the DataLoader calls this with a batch's indices). The batch's pictures and
        vertices are written straight into (B, ...) batch tensors (in shared memory inside a worker; chunks
        are decompressed directly into them on the fast path), each sample holding views of them, which
        :func:`ava256.data.collate_samples` hands over without another copy."""
        n = len(self)
        keys = []
        for index in indices:
            if not -n <= index < n:
                raise IndexError(f"sample {index} out of range ({n} samples)")
            keys.append((int(index) % n, *self.sample_key(int(index) % n)))
        arrays = [self._capture_arrays(cap) for _, cap, _, _ in keys]
        B = len(keys)
        H, W = self.image_size
        T, V = self.texture_size, self.n_vertices
        ship_image, ship_tex = (
            self.ship_jpeg
            and all(
                a.readers is not None and a.readers[k].fmt.jpeg is not None and not a.readers[k].remote
                for a in arrays
            )
            for k in (0, 3)
        )
        # uint8 HWC pictures (unless their JPEG bytes are shipped) and mm vertices of the batch, filled by the reads
        image_u8 = None if ship_image else _batch_tensor((B, H, W, 3), torch.uint8, shared=not self.normalize)
        tex_u8 = None if ship_tex else _batch_tensor((B, T, T, 3), torch.uint8, shared=not self.normalize)
        verts_b = _batch_tensor((B, V, 3), torch.float32)
        poses, bad, shipped = self._read_batch(
            keys,
            arrays,
            None if image_u8 is None else image_u8.numpy(),
            None if tex_u8 is None else tex_u8.numpy(),
            verts_b.numpy(),
        )
        if self.normalize:
            image_b = _batch_tensor((B, 3, H, W), torch.float32)
            tex_b = _batch_tensor((B, 3, T, T), torch.float32)
            neut_b = _batch_tensor((B, 3, T, T), torch.float32)
        out = []
        for b, ((index, cap, f, c), arrs) in enumerate(zip(keys, arrays)):
            if b in bad:
                out.append(bad[b])
                continue
            meta = self._meta[cap]
            camrot, campos = camera_in_head_frame(meta.extrinsics[c], poses[b])
            focal, princpt = focal_principal(meta.intrinsics[c])
            sample = {
                "camrot": torch.from_numpy(camrot),
                "campos": torch.from_numpy(campos),
                "focal": torch.from_numpy(focal),
                "princpt": torch.from_numpy(princpt),
                "idindex": torch.tensor(int(self._idindex[index]), dtype=torch.int64),
                "camindex": torch.tensor(int(self._camindex[index]), dtype=torch.int64),
                "valid": torch.tensor(True),
                "capture": cap,
                "frame_index": f,
            }
            if self.normalize:
                image_b[b].copy_(image_u8[b].permute(2, 0, 1))
                sample["image"] = image_b[b]
                sample["verts"] = self.stats.normalize_verts(verts_b[b])
                sample["tex"] = self.stats.normalized_tex_from_uint8(tex_u8[b], out=tex_b[b])
                sample["neut_verts"] = arrs.neut_verts
                neut_u8 = self._neutral_texture_u8(cap, arrs)
                sample["neut_tex"] = self.stats.normalized_tex_from_uint8(neut_u8, out=neut_b[b])
                sample["pixelcoords"] = self._pixelcoords
            else:  # compact: finish_batch adds the per-capture constants and normalises on the device
                sample["verts"] = verts_b[b]
                for key, u8 in (("image", image_u8), ("tex", tex_u8)):
                    if u8 is None:
                        sample[key + "_jpeg"] = shipped[key][b]
                    else:
                        sample[key] = u8[b]
            out.append(sample)
        return out

    def _read_batch(
        self,
        keys: Sequence[tuple[int, str, int, int]],
        arrays: Sequence[_CaptureArrays],
        image: np.ndarray | None,
        tex: np.ndarray | None,
        verts: np.ndarray,
    ) -> tuple[list[np.ndarray | None], dict[int, BadSample], dict[str, dict[int, torch.Tensor]]]:
        """Read the image, head pose, vertices and uv texture chunk of each sample: pictures and vertices
        into ``image`` (B, H, W, 3), ``tex`` (B, T, T, 3), ``verts`` (B, V, 3); a picture array passed as None
        (fast path only) is not decoded: its chunks' JPEG bytes are returned instead. Returns the (3, 4) head
        poses (None for a bad sample), the :class:`BadSample` of each sample whose chunk could not be read, by
        position (logged once per chunk and process), and the shipped JPEG bytes by "image"/"tex" and position."""
        poses: list[np.ndarray | None] = []
        bad: dict[int, BadSample] = {}
        shipped: dict[str, dict[int, torch.Tensor]] = {"image": {}, "tex": {}}
        fast = all(a.readers is not None for a in arrays)
        if fast and any(r.remote for a in arrays for r in a.readers):
            try:  # the whole batch in one call: one round of concurrent ranged reads
                return self._read_remote_batch(keys, arrays, image, tex, verts), bad, shipped
            except READ_ERRORS:
                pass  # a bad chunk: read sample by sample below to find which

        def fast_read(key: str, b: int, reader: ChunkReader, coords: tuple[int, ...], dst: np.ndarray | None):
            if dst is not None:
                reader.read(coords, out=dst[b].reshape(reader.chunk_shape))
                return
            payload = reader.read_payload(coords)
            if payload is None:
                raise ValueError(f"{key} chunk {coords} is absent from the store")
            shipped[key][b] = torch.from_numpy(np.array(payload))

        for b, ((_, cap, f, c), arrs) in enumerate(zip(keys, arrays)):
            step = L.IMAGE, (f, c, 0, 0, 0)
            try:
                if fast:
                    r_image, r_pose, r_verts, r_tex = arrs.readers
                    fast_read("image", b, r_image, step[1], image)
                    step = L.HEAD_POSE, (f, 0, 0)
                    pose = r_pose.read(step[1])[0]
                    step = L.VERTICES, (f, 0, 0)
                    r_verts.read(step[1], out=verts[b].reshape(r_verts.chunk_shape))
                    step = L.UV_TEXTURE, (f, 0, 0, 0)
                    fast_read("tex", b, r_tex, step[1], tex)
                else:  # remote stores, other layouts, ``fast_reads=False``: one chunk of each of 4 arrays
                    image[b] = arrs.image[f, c]
                    step = L.HEAD_POSE, (f, 0, 0)
                    pose = np.asarray(arrs.head_pose[f])
                    step = L.VERTICES, (f, 0, 0)
                    verts[b] = arrs.vertices[f]
                    step = L.UV_TEXTURE, (f, 0, 0, 0)
                    tex[b] = arrs.uv_texture[f]
            except READ_ERRORS as exc:
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                bs = BadSample(cap, int(f), int(c), step[0], tuple(int(x) for x in step[1]), reason)
                bad[b] = bs
                warn_once(log, f"bad:{bs.where()}", "skipping a sample: %s: %s (run `ava256 verify STORE`)",
                          bs.where(), reason)  # fmt: skip
                pose = None
            poses.append(pose)
        return poses, bad, shipped

    @staticmethod
    def _read_remote_batch(
        keys: Sequence[tuple[int, str, int, int]],
        arrays: Sequence[_CaptureArrays],
        image: np.ndarray,
        tex: np.ndarray,
        verts: np.ndarray,
    ) -> list[np.ndarray]:
        poses, requests = [], []
        for b, ((_, _, f, c), arrs) in enumerate(zip(keys, arrays)):
            r_image, r_pose, r_verts, r_tex = arrs.readers
            poses.append(np.empty(r_pose.chunk_shape, dtype=r_pose.dtype))
            requests += [
                (r_image, (f, c, 0, 0, 0), image[b].reshape(r_image.chunk_shape)),
                (r_pose, (f, 0, 0), poses[b]),
                (r_verts, (f, 0, 0), verts[b].reshape(r_verts.chunk_shape)),
                (r_tex, (f, 0, 0, 0), tex[b].reshape(r_tex.chunk_shape)),
            ]
        read_chunks(requests)
        return [p[0] for p in poses]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool = True) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside a DataLoader worker when ``shared`` (as
    default_collate allocates its output there), so handing the batch to the main process copies nothing."""
    if not shared or torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    return shared_empty(shape, dtype)


def direct_shared_alloc() -> bool:
    """Whether :func:`shared_empty` can allocate straight in shared memory: through torch's private
    ``TypedStorage._new_shared``, which torch's own ``default_collate`` uses (public ``share_memory_`` copies
    the tensor into shared memory: 3-5 x the time for a batch of textures, ``python benchmarks/loader.py``)."""
    return callable(getattr(torch.TypedStorage, "_new_shared", None)) and hasattr(
        torch.Tensor, "_typed_storage"
    )


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory: allocated there directly where :func:`direct_shared_alloc`,
    else (said once) through the public ``share_memory_``."""
    if direct_shared_alloc():
        proto = torch.empty(0, dtype=dtype)
        storage = proto._typed_storage()._new_shared(int(np.prod(shape)), device=proto.device)
        return proto.new(storage).resize_(*shape)
    warn_once(log, "shared-alloc", "torch %s has no TypedStorage._new_shared: batches are copied into shared "
              "memory (share_memory_), a little slower", torch.__version__)  # fmt: skip
    return torch.empty(shape, dtype=dtype).share_memory_()


def split_dataset(
    store: Any, split: str, part: str, *, stats: NormStats | None = None, **kwargs: Any
) -> ZarrSampleDataset:
    """A :class:`ZarrSampleDataset` of ``STORE/_splits/<split>/<part>.parquet`` (local stores)."""
    from ava256.manifests.splits import read_split_part

    return ZarrSampleDataset(store, read_split_part(store, split, part), stats=stats, **kwargs)
