"""The Zarr v3 layout of one repacked capture: the single source of truth for array names, shapes, dtypes,
chunking, sharding, fill values, dimension names, group attributes and the store's folder structure. The data
array of each per-frame asset (name, dtype, fill, dims, per-frame shape) is its record in the asset registry
(:mod:`ava256.assets`); this module builds the arrays from it.

Pure (zarr + numpy only; no Dask, no torch). Everything that reads or writes a store imports from here.

Store layout (``STORE`` is a local folder or an fsspec URL)::

    STORE/<capture.folder>.zarr/        one Zarr v3 group per capture (attrs: ATTR_* below)
        image                (F, C, H, W, 3)  uint8    camera images, frame-major
        segmentation         (F, C, H, W)     uint8    part labels 0..10 (nearest-resampled)
        uv_texture           (F, T, T, 3)     uint8
        vertices             (F, V, 3)        float32  mm, head frame (NaN where invalid)
        keypoints_3d         (F, 274, 5)      float32  x, y, z, confidence, n_inliers (NaN = absent)
        head_pose            (F, 3, 4)        float32  head -> world [R|t] (NaN where invalid)
        frame, camera        (F,) int64, (C,) str   coordinates: frame ids (frame_list.csv), camera ids
        encoder_frame, encoder_camera  (Fe,) int64, (5,) str   the same for the headset IR images
        calibration/intrinsics  (C, 3, 3)     float32  K scaled to the stored image size (see scale_intrinsics)
        calibration/extrinsics  (C, 3, 4)     float32  world -> camera [R|t], mm
        calibration/distortion  (C, 4)        float32
        encoder/image        (Fe, 5, h, w)    uint8    headset IR images
        valid/<asset>        (F, C) | (F,) | (Fe, 5)  bool  True where the frame was decoded
        stats/texture_mean   (T, T, 3)        float32
        stats/vertex_mean    (V, 3)           float32
    STORE/_manifests/samples.parquet, repack.parquet

Chunks hold one image (one frame of one camera); shards hold ``frames_per_shard`` consecutive frames of one
camera, so that a writer of frames ``[k*S, (k+1)*S)`` of one camera owns exactly one shard file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ava256.assets import LABELS, PICTURE, REGISTRY
from ava256.capture import ENCODER, ENCODER_CAMERAS, SENSOR_HEIGHT, SENSOR_WIDTH, CaptureId
from ava256.store.codecs import JpegCodec

#: Bumped whenever names, shapes, codecs or semantics of the layout change; repack recreates a capture store of
#: another version and the loader refuses one. 3: coordinate arrays (frame, camera, ...), ``calibration/``.
FORMAT_VERSION = 3

STORE_SUFFIX = ".zarr"
MANIFESTS_DIR = "_manifests"

# --- array names (the contract) ---------------------------------------------------------------------------
# data arrays of the per-frame assets, as the asset registry names them
IMAGE = REGISTRY["image"].array
SEGMENTATION = REGISTRY["segmentation"].array
UV_TEXTURE = REGISTRY["uv_texture"].array
VERTICES = REGISTRY["vertices"].array
KEYPOINTS_3D = REGISTRY["keypoints_3d"].array
HEAD_POSE = REGISTRY["head_pose"].array
ENCODER_IMAGE = REGISTRY["encoder_image"].array
CAMERA_INTRINSICS = "calibration/intrinsics"
CAMERA_EXTRINSICS = "calibration/extrinsics"
CAMERA_DISTORTION = "calibration/distortion"
# coordinate arrays: named like their dimension, so xarray indexes by id (``.sel(camera="400283")``)
COORD_FRAME = "frame"
COORD_CAMERA = "camera"
COORD_ENCODER_FRAME = "encoder_frame"
COORD_ENCODER_CAMERA = "encoder_camera"
TEXTURE_MEAN = "stats/texture_mean"
VERTEX_MEAN = "stats/vertex_mean"
VALID_PREFIX = "valid/"

#: Asset name -> data array name, in store order (:data:`ava256.assets.REGISTRY`).
ASSET_ARRAYS: dict[str, str] = {name: a.array for name, a in REGISTRY.items()}


def valid_name(asset: str) -> str:
    """``valid/<asset>``: the bool mask of ``asset`` ((F, C) for camera assets, (Fe, 5) for encoder images,
    (F,) otherwise)."""
    if asset not in ASSET_ARRAYS:
        raise ValueError(f"unknown asset {asset!r}; expected one of {', '.join(ASSET_ARRAYS)}")
    return VALID_PREFIX + asset


# --- group attribute keys ------------------------------------------------------------------------------------
ATTR_CAPTURE_ID = "capture_id"  # folder string "mcd--mct--sid"
ATTR_SUBJECT = "subject"  # sid
ATTR_CAMERA_IDS = "camera_ids"  # list[str], sorted, = camera axis
ATTR_FRAME_IDS = "frame_ids"  # list[int], = frame axis (row order of decoder/frame_list.csv)
ATTR_SEGMENTS = "segments"  # list[str] per frame
ATTR_ENCODER_FRAME_IDS = "encoder_frame_ids"  # list[int]
ATTR_ENCODER_CAMERAS = "encoder_cameras"  # list[str], = encoder camera axis
ATTR_TEXTURE_VAR = "texture_var"  # float (from color_variance.txt)
ATTR_VERTEX_VAR = "vertex_var"  # float (from registration_vertices_variance.txt)
ATTR_SOURCE_HASH = "source_manifest_hash"  # hex digest of the capture's raw inputs
ATTR_FORMAT_VERSION = "format_version"
ATTR_DOWNSAMPLE = "downsample"  # int k: stored image = source image / k
ATTR_IMAGE_SIZE = "image_size"  # [H, W] of the stored images
ATTR_SOURCE_IMAGE_SIZE = "source_image_size"  # [H, W] of the raw images
ATTR_CODEC = "codec"  # image codec name (CODECS key)
ATTR_CHUNK_CHECKSUM = "chunk_checksum"  # True: every inner chunk ends with its crc32c
ATTR_ASSETS = "assets"  # assets present in this store (arrays exist for them)
ATTR_INTRINSICS_CONVENTION = "intrinsics_convention"
ATTR_COMPLETE = "complete"  # True once every task of the capture finished
ATTR_SELECTION = "selection"  # None (everything) or {cameras, frames, segments, assets} of ``repack``

INTRINSICS_CONVENTION = (
    "opencv: pixel centres at integer coordinates, origin at the centre of the top-left pixel"
)

# --- chunk / shard policy -------------------------------------------------------------------------------------
#: A shard holds at most this many uncompressed bytes (bounds a writer's memory: one shard buffer) ...
SHARD_TARGET_BYTES = 64 * 2**20
#: ... and at most this many frames (so small per-frame arrays still split into several tasks).
MAX_FRAMES_PER_SHARD = 256


def frames_per_shard(
    frame_nbytes: int,
    n_frames: int,
    target_bytes: int = SHARD_TARGET_BYTES,
    max_frames: int = MAX_FRAMES_PER_SHARD,
) -> int:
    """Frames per shard for an array whose one-frame-one-camera slice is ``frame_nbytes`` bytes:
    ``clamp(target_bytes // frame_nbytes, 1, max_frames)``, never more than ``n_frames``."""
    s = max(1, min(int(max_frames), target_bytes // max(1, frame_nbytes)))
    return int(max(1, min(s, n_frames)))


# --- codecs -----------------------------------------------------------------------------------------------------
#: Lossless compressors for the uint8 picture arrays (``--codec``). All but ``lz4`` are Zarr v3 specification
#: codecs that any Zarr implementation reads.
CODECS: tuple[str, ...] = ("blosclz", "zstd-fast", "lz4", "blosc-lz4", "zstd", "blosc-zstd", "none")
#: Lossy picture codecs: camera images, uv textures and headset images become one JPEG per chunk
#: (``ava256.jpeg``, :mod:`ava256.store.codecs`); segmentation labels stay lossless (:data:`LABEL_CODEC`).
LOSSY_CODECS: tuple[str, ...] = ("jpeg",)
#: What ``repack --codec`` accepts. The default is chosen by ``benchmarks/codecs.py`` (docs/store-format.md).
STORE_CODECS: tuple[str, ...] = CODECS + LOSSY_CODECS
DEFAULT_CODEC = "blosclz"
LABEL_CODEC = "blosclz"
#: quality and chroma subsampling of the ``jpeg`` codec (docs/store-format.md gives bytes and PSNR)
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:4:4"

#: Zstandard level of the ``zstd-fast`` codec: a negative ("fast") level, which trades ratio for speed
#: (docs/performance.md: per 667 x 1024 photo it encodes faster than blosclz into 9 % fewer bytes; a loader
#: reads it slower).
ZSTD_FAST_LEVEL = -100

#: LZ4 ``acceleration`` of the ``lz4`` codec (1 = plain LZ4; higher trades ratio for speed; docs/performance.md).
LZ4_ACCELERATION = 256


def picture_compressors(codec: str) -> list[Any]:
    """Zarr v3 compressors for uint8 picture chunks named by ``codec`` (one of :data:`CODECS`), without the
    checksum :func:`array_specs` adds. Sizes and costs per 667 x 1024 photo: docs/performance.md.

    - ``blosclz`` (default): Blosc, blosclz clevel 1, no shuffle (spec codec ``blosc``): the cheapest to read
    - ``zstd-fast``: Zstandard at level :data:`ZSTD_FAST_LEVEL` (codec ``zstd``): 9 % fewer bytes and a little
      less CPU to write than ``blosclz``, slower to read
    - ``lz4``: numcodecs LZ4, acceleration 256: less CPU, but ``numcodecs.lz4`` is not a Zarr v3 specification
      codec (zarr-python reads it and warns so; other Zarr implementations may not)
    - ``blosc-lz4``: Blosc LZ4 clevel 5 with bit-shuffle (smaller, slower to encode and decode)
    - ``zstd``: Zstandard level 1; ``blosc-zstd``: Blosc Zstandard clevel 3 (smallest, most CPU)
    - ``none``: raw bytes"""
    if codec == "zstd-fast":
        return [ZstdCodec(level=ZSTD_FAST_LEVEL)]
    if codec == "lz4":
        from zarr.codecs.numcodecs import LZ4

        return [LZ4(acceleration=LZ4_ACCELERATION)]
    if codec == "blosclz":
        return [BloscCodec(cname="blosclz", clevel=1, shuffle="noshuffle", typesize=1)]
    if codec == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=1)]
    if codec == "zstd":
        return [ZstdCodec(level=1)]
    if codec == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle", typesize=1)]
    if codec == "none":
        return []
    raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")


def _numeric_compressors(itemsize: int) -> list[Any]:
    """Compressors for float / bool arrays: Blosc zstd with byte shuffle."""
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize)]


# --- geometry -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureGeometry:
    """Sizes of one capture's arrays. ``image_hw`` is the *stored* (downsampled) size; an asset whose size is
    None is absent from the raw capture and gets no arrays."""

    n_frames: int
    camera_ids: tuple[str, ...]
    image_hw: tuple[int, int] | None = None
    texture_size: int | None = None
    n_vertices: int | None = None
    n_encoder_frames: int = 0
    encoder_hw: tuple[int, int] | None = None
    assets: tuple[str, ...] = ()  # assets present (subset of ASSET_ARRAYS)

    @property
    def n_cameras(self) -> int:
        return len(self.camera_ids)


@dataclass(frozen=True)
class ArraySpec:
    """How one array is created: shape, dtype, chunks, shards (None = unsharded), fill value, dimension
    names and compressors; ``per`` says how writers split it: "camera", "encoder", "frame" or "meta"."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    fill_value: Any
    dims: tuple[str, ...]
    compressors: list[Any] = field(default_factory=list, compare=False)
    per: str = "meta"
    serializer: Any = field(default=None, compare=False)  # array-to-bytes codec; None: zarr's ``bytes``

    @property
    def frames_per_shard(self) -> int:
        """Frames in one shard (or chunk, if unsharded) along axis 0."""
        return (self.shards or self.chunks)[0]

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` frame ranges of the shards along axis 0 (the last may be short)."""
        s, n = self.frames_per_shard, self.shape[0]
        return [(i, min(i + s, n)) for i in range(0, n, s)]


def _frame_spec(
    name,
    per_frame_shape,
    dtype,
    fill,
    dims,
    n_frames,
    compressors,
    per,
    per_axis=1,
    max_frames=None,
    serializer=None,
):
    """A (F, [K,] *per_frame_shape) array with one frame (of one camera) per chunk, S frames per shard."""
    itemsize = np.dtype(dtype).itemsize
    nbytes = int(np.prod(per_frame_shape)) * itemsize
    s = frames_per_shard(nbytes, n_frames, max_frames=max_frames or MAX_FRAMES_PER_SHARD)
    lead = (n_frames,) if per == "frame" else (n_frames, per_axis)
    one = (1,) if per == "frame" else (1, 1)
    shard_lead = (s,) if per == "frame" else (s, 1)
    return ArraySpec(
        name=name,
        shape=lead + tuple(per_frame_shape),
        dtype=dtype,
        chunks=one + tuple(per_frame_shape),
        shards=shard_lead + tuple(per_frame_shape),
        fill_value=fill,
        dims=dims,
        compressors=compressors,
        per=per,
        serializer=serializer,
    )


def array_specs(
    geom: CaptureGeometry,
    codec: str = DEFAULT_CODEC,
    max_frames_per_shard: int = MAX_FRAMES_PER_SHARD,
    checksum: bool = True,
) -> dict[str, ArraySpec]:
    """Every array of a capture with geometry ``geom`` (data, valid masks, camera, stats), by name.
    ``max_frames_per_shard`` caps the frames of a shard (tests use small values to get several shards).
    ``checksum``: every inner chunk of every array ends with its crc32c (the Zarr v3 ``crc32c`` codec, last of
    the chunk's codecs), so any Zarr reader refuses a damaged chunk; False only to measure its cost."""
    if codec not in STORE_CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(STORE_CODECS)}")
    mf = max_frames_per_shard
    crc = [Crc32cCodec()] if checksum else []
    lossy = codec in LOSSY_CODECS
    pic = crc if lossy else picture_compressors(codec) + crc
    labels = picture_compressors(LABEL_CODEC if lossy else codec) + crc
    jpeg = JpegCodec(quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING) if lossy else None
    f32 = _numeric_compressors(4) + crc
    boolc = _numeric_compressors(1) + crc
    F, C, nan = geom.n_frames, geom.n_cameras, float("nan")
    specs: dict[str, ArraySpec] = {}

    def add(spec: ArraySpec) -> None:
        specs[spec.name] = spec

    def add_valid(asset: str, data: ArraySpec) -> None:
        # Masks are chunked like their data's shards along axis 0 (one chunk per frame range, all cameras),
        # written by the driver only.
        s = data.frames_per_shard
        shape = data.shape[:1] if data.per == "frame" else data.shape[:2]
        chunks = (s,) if data.per == "frame" else (s, shape[1])
        add(ArraySpec(valid_name(asset), shape, "bool", chunks, None, False, data.dims[: len(shape)], boolc))

    def companions(data: ArraySpec) -> list[ArraySpec]:
        # what goes with a data array: the normalisation stats of textures and meshes, the encoder coordinates
        if data.name == UV_TEXTURE:
            T = data.shape[1]
            return [ArraySpec(TEXTURE_MEAN, (T, T, 3), "float32", (T, T, 3), None, nan, data.dims[1:], f32)]
        if data.name == VERTICES:
            V = data.shape[1]
            return [ArraySpec(VERTEX_MEAN, (V, 3), "float32", (V, 3), None, nan, data.dims[1:], f32)]
        if data.name == ENCODER_IMAGE:
            Fe, n = data.shape[:2]
            return [
                ArraySpec(COORD_ENCODER_FRAME, (Fe,), "int64", (Fe,), None, -1, (COORD_ENCODER_FRAME,), crc),
                ArraySpec(COORD_ENCODER_CAMERA, (n,), "str", (n,), None, "", (COORD_ENCODER_CAMERA,), crc),
            ]
        return []

    # one data array, its valid mask and its companions per asset present, as the asset registry specifies
    codecs = {PICTURE: (pic, jpeg), LABELS: (labels, None)}
    present = set(geom.assets)
    for name, a in REGISTRY.items():
        shape = a.frame_shape(geom) if name in present else None
        if shape is None:
            continue
        n, k = (geom.n_encoder_frames, len(ENCODER_CAMERAS)) if a.axis == ENCODER else (F, C)
        comp, ser = codecs.get(a.codec, (f32, None))
        add(_frame_spec(a.array, shape, a.dtype, a.fill, a.dims, n, comp, a.axis, k, mf, serializer=ser))
        add_valid(name, specs[a.array])
        for spec in companions(specs[a.array]):
            add(spec)
    add(ArraySpec(COORD_FRAME, (F,), "int64", (max(F, 1),), None, -1, (COORD_FRAME,), crc))
    if C:
        add(ArraySpec(COORD_CAMERA, (C,), "str", (C,), None, "", (COORD_CAMERA,), crc))
        add(
            ArraySpec(
                CAMERA_INTRINSICS,
                (C, 3, 3),
                "float32",
                (C, 3, 3),
                None,
                nan,
                ("camera", "k_row", "k_col"),
                f32,
            )
        )
        add(
            ArraySpec(
                CAMERA_EXTRINSICS,
                (C, 3, 4),
                "float32",
                (C, 3, 4),
                None,
                nan,
                ("camera", "rt_row", "rt_col"),
                f32,
            )
        )
        add(
            ArraySpec(
                CAMERA_DISTORTION, (C, 4), "float32", (C, 4), None, nan, ("camera", "distortion_coeff"), f32
            )
        )
    return specs


# --- paths -----------------------------------------------------------------------------------------------------
def _join(root: str | os.PathLike[str], *parts: str) -> str:
    return "/".join([os.fspath(root).rstrip("/"), *parts])


def capture_store_path(store: str | os.PathLike[str], capture: CaptureId | str) -> str:
    """``STORE/<capture.folder>.zarr`` (a path or URL string)."""
    folder = capture.folder if isinstance(capture, CaptureId) else CaptureId.parse(capture).folder
    return _join(store, folder + STORE_SUFFIX)


def manifests_path(store: str | os.PathLike[str], name: str) -> str:
    """``STORE/_manifests/<name>``."""
    return _join(store, MANIFESTS_DIR, name)


def shard_key(spec: ArraySpec, frame_start: int, index: int = 0) -> str:
    """Store key (relative to the capture group) of the shard file holding frame ``frame_start`` of camera
    ``index`` (ignored for per-frame arrays), under Zarr v3's default chunk key encoding ``c/i/j/...``."""
    shard_shape = spec.shards or spec.chunks
    coords = [frame_start // shard_shape[0]]
    if spec.per in ("camera", "encoder"):
        coords.append(index)
    coords += [0] * (len(spec.shape) - len(coords))
    return f"{spec.name}/c/" + "/".join(str(c) for c in coords)


# --- create / open ----------------------------------------------------------------------------------------------
def create_capture_group(
    path: str | os.PathLike[str],
    geom: CaptureGeometry,
    attrs: Mapping[str, Any],
    *,
    codec: str = DEFAULT_CODEC,
    max_frames_per_shard: int = MAX_FRAMES_PER_SHARD,
    checksum: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> zarr.Group:
    """Create (overwriting) a capture group at ``path`` with every array of ``geom`` (metadata only; no chunk
    is written; ``checksum`` as in :func:`array_specs`) and the given group attributes. Returns the open group
    (mode r+)."""
    group = zarr.open_group(_store_like(path), mode="w", zarr_format=3, storage_options=storage_options)
    # Each array's metadata is built in memory, then all are written concurrently by zarr.create_hierarchy:
    # one trip to zarr's event loop instead of one per array
    scratch = zarr.storage.MemoryStore()
    nodes: dict[str, Any] = {}
    for spec in array_specs(geom, codec, max_frames_per_shard, checksum).values():
        nodes[f"{group.path}/{spec.name}".lstrip("/")] = zarr.create_array(
            scratch,
            name=spec.name,
            shape=spec.shape,
            dtype=spec.dtype,
            chunks=spec.chunks,
            shards=spec.shards,
            fill_value=spec.fill_value,
            compressors=spec.compressors,
            serializer=spec.serializer or "auto",
            dimension_names=spec.dims,
        ).metadata
    for _ in zarr.create_hierarchy(store=group.store, nodes=nodes, overwrite=True):
        pass
    group.update_attributes(dict(attrs))  # one write (attrs.update writes zarr.json once per key)
    return group


def open_capture_group(
    path: str | os.PathLike[str], mode: str = "r", storage_options: dict[str, Any] | None = None
) -> zarr.Group:
    """Open an existing capture group (``mode`` "r" or "r+"); FileNotFoundError if absent."""
    try:
        return zarr.open_group(_store_like(path), mode=mode, zarr_format=3, storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise FileNotFoundError(f"no capture store at {path}") from exc


def _store_like(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def list_capture_stores(store: str | os.PathLike[str]) -> list[str]:
    """Capture folder names (``mcd--mct--sid``) that have a ``.zarr`` group under ``store`` (a local folder or an
    fsspec URL)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(os.fspath(store))
    if not fs.isdir(root):
        return []
    out = []
    for name in sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)):
        if name.endswith(STORE_SUFFIX) and fs.isfile(f"{root}/{name}/zarr.json"):
            try:
                out.append(CaptureId.parse(name[: -len(STORE_SUFFIX)]).folder)
            except ValueError:
                continue
    return out


# --- camera intrinsics under resampling -------------------------------------------------------------------------
def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics for an image resampled by ``sx`` horizontally and ``sy`` vertically (new size / old size,
    the whole extent mapping onto the whole extent, as PIL's resize does).

    Convention (:data:`INTRINSICS_CONVENTION`): pixel centres sit at integer coordinates, so a point at
    continuous coordinate ``x`` maps to ``(x + 0.5) * sx - 0.5``: ``fx' = fx * sx``,
    ``cx' = (cx + 0.5) * sx - 0.5`` (same for y). ``K`` is (..., 3, 3) un-transposed; returns float64."""
    K = np.asarray(K, dtype=np.float64)
    out = K.copy()
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


def sensor_to_image_intrinsics(K_sensor: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """Scale full-sensor (4096 x 2668, portrait) intrinsics to an image of ``image_hw = (H, W)`` pixels."""
    H, W = int(image_hw[0]), int(image_hw[1])
    return scale_intrinsics(K_sensor, W / SENSOR_WIDTH, H / SENSOR_HEIGHT)


def downsampled_size(hw: Sequence[int], k: int) -> tuple[int, int]:
    """Stored (H, W) of a (H, W) source image downsampled by integer factor ``k`` (floor, at least 1)."""
    if int(k) < 1:
        raise ValueError(f"downsample factor must be >= 1, got {k}")
    return max(1, int(hw[0]) // int(k)), max(1, int(hw[1]) // int(k))


def n_shards(n: int, s: int) -> int:
    return math.ceil(n / s) if n else 0
