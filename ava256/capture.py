"""Capture identity, folder naming and the asset catalog of an AVA-256 capture.

Pure: no I/O beyond reading the packaged capture id list. Facts from the release's datasheet and download
script; the raw tree is described in ``docs/store-format.md``.
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# ---------------------------------------------------------------------------------------------------------
# Release sizes
# ---------------------------------------------------------------------------------------------------------

PUBLIC_BUCKET = "fb-baas-f32eacb9-8abb-11eb-b2b8-4857dd089e15"
PUBLIC_PREFIX = "ava-256"
PUBLIC_URL = f"https://{PUBLIC_BUCKET}.s3.amazonaws.com/{PUBLIC_PREFIX}/"


@dataclass(frozen=True)
class ReleaseSize:
    name: str  # "4TB"
    width: int  # image width, portrait (pixels)
    height: int  # image height (pixels)
    fps: float
    frames_per_capture: int  # approximate
    avif_quality: int


SIZES: dict[str, ReleaseSize] = {
    "4TB": ReleaseSize("4TB", 667, 1024, 7.5, 5000, 63),
    "8TB": ReleaseSize("8TB", 667, 1024, 15.0, 10000, 63),
    "16TB": ReleaseSize("16TB", 1334, 2048, 7.5, 5000, 70),
    "32TB": ReleaseSize("32TB", 1334, 2048, 15.0, 10000, 70),
}

#: Full sensor resolution the calibration intrinsics refer to (portrait: width x height).
SENSOR_WIDTH = 2668
SENSOR_HEIGHT = 4096

#: The five Quest Pro infrared cameras of the encoder (headset) images.
ENCODER_CAMERAS: tuple[str, ...] = (
    "cam-cyclop",
    "cam-left-eye-atl-temporal",
    "cam-left-mouth",
    "cam-right-eye-atl-temporal",
    "cam-right-mouth",
)

NUM_VERTICES = 7306
NUM_KEYPOINTS = 274

SEGMENTATION_LABELS: tuple[str, ...] = (
    "background",
    "Hair",
    "Body",
    "Chair",
    "Apparel",
    "Lenses",
    "UpperLip",
    "LowerLip",
    "UpperTeeth",
    "LowerTeeth",
    "TongueVisible",
)


def parse_size(size: str) -> ReleaseSize:
    """Return the release size for ``"4TB"`` etc. (case-insensitive); ValueError names the valid ones."""
    key = size.strip().upper()
    if key not in SIZES:
        raise ValueError(f"unknown release size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[key]


# ---------------------------------------------------------------------------------------------------------
# Capture ids
# ---------------------------------------------------------------------------------------------------------

_FOLDER_RE = re.compile(r"^(?:m--)?(?P<mcd>\d{8})--(?P<mct>\d{4})--(?P<sid>[A-Za-z0-9]+)(?:--GHS)?$")


@dataclass(frozen=True, order=True)
class CaptureId:
    """One capture: capture date ``mcd`` (yyyymmdd), capture time ``mct`` (hhmm, keeps its leading zero) and
    subject id ``sid``. Strings throughout, never ints."""

    mcd: str
    mct: str
    sid: str

    def __post_init__(self) -> None:
        if not (len(self.mcd) == 8 and self.mcd.isdigit()):
            raise ValueError(f"capture date must be 8 digits (yyyymmdd), got {self.mcd!r}")
        if not (len(self.mct) == 4 and self.mct.isdigit()):
            raise ValueError(f"capture time must be 4 digits (hhmm), got {self.mct!r}")
        if not re.fullmatch(r"[A-Za-z0-9]+", self.sid):
            raise ValueError(f"subject id must be alphanumeric, got {self.sid!r}")

    @property
    def folder(self) -> str:
        """Folder name used by the release's download script: ``{mcd}--{mct}--{sid}``."""
        return f"{self.mcd}--{self.mct}--{self.sid}"

    @property
    def datasheet_folder(self) -> str:
        """Folder name as drawn in the datasheet: ``m--{mcd}--{mct}--{sid}--GHS``."""
        return f"m--{self.mcd}--{self.mct}--{self.sid}--GHS"

    @property
    def folder_names(self) -> tuple[str, str]:
        return (self.folder, self.datasheet_folder)

    @classmethod
    def parse(cls, text: str) -> CaptureId:
        """Parse either folder spelling (a trailing ``/`` is allowed)."""
        m = _FOLDER_RE.match(text.strip().rstrip("/"))
        if not m:
            raise ValueError(
                f"not a capture folder name: {text!r} (expected 'mcd--mct--sid' or 'm--mcd--mct--sid--GHS')"
            )
        return cls(m["mcd"], m["mct"], m["sid"])

    def __str__(self) -> str:
        return self.folder


@lru_cache(maxsize=1)
def release_capture_ids() -> tuple[CaptureId, ...]:
    """The 256 capture ids of the public release, in the order of the packaged ``256_ids.csv``."""
    text = resources.files("ava256.manifests").joinpath("256_ids.csv").read_text()
    return tuple(read_capture_ids_csv(text.splitlines()))


def read_capture_ids_csv(lines: Iterable[str]) -> list[CaptureId]:
    """Read an ids CSV with columns ``mcd, sid, mct`` (any order) as strings; ValueError on bad rows."""
    reader = csv.DictReader(lines)
    missing = {"mcd", "sid", "mct"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"capture id list lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
    out = []
    for lineno, row in enumerate(reader, start=2):
        try:
            out.append(CaptureId(row["mcd"].strip(), row["mct"].strip().zfill(4), row["sid"].strip()))
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"capture id list line {lineno}: {exc}") from exc
    return out


# ---------------------------------------------------------------------------------------------------------
# The asset catalog: which object keys (relative to the capture folder) make a capture
# ---------------------------------------------------------------------------------------------------------

CALIBRATION_KEY = "decoder/camera_calibration.json"
FRAME_LIST_KEY = "decoder/frame_list.csv"
ENCODER_FRAME_LIST_KEY = "encoder/frame_list.csv"
HEAD_POSE_KEY = "decoder/head_pose/head_pose.zip"
KEYPOINTS_KEY = "decoder/keypoints_3d/keypoints_3d.zip"
VERTICES_KEY = "decoder/kinematic_tracking/registration_vertices.zip"
VERTICES_MEAN_KEY = "decoder/kinematic_tracking/registration_vertices_mean.npy"
VERTICES_VARIANCE_KEY = "decoder/kinematic_tracking/registration_vertices_variance.txt"
TEXTURE_KEY = "decoder/uv_image/color.zip"
TEXTURE_MEAN_KEY = "decoder/uv_image/color_mean.png"
TEXTURE_VARIANCE_KEY = "decoder/uv_image/color_variance.txt"


# ---------------------------------------------------------------------------------------------------------
# Per-frame archives and the naming of their members
# ---------------------------------------------------------------------------------------------------------

MiB = 2**20


#: What ``{camera}`` of an archive key stands for: a dome camera id (one archive per camera, arrays
#: (F, C, ...)), an encoder camera name (one per headset camera, (Fe, 5, ...)), or nothing (one archive, (F, ...)).
#: The values are also the ``per`` of the asset's store array (:class:`ava256.store.layout.ArraySpec`).
CAMERA, ENCODER, FRAME = "camera", "encoder", "frame"


@dataclass(frozen=True)
class FrameArchive:
    """The per-frame zip of an asset: its key (``{camera}`` = a dome camera id or an encoder camera name, as
    ``axis`` says), the member names it may use (``{camera}``, ``{stem}`` = the archive's file name without
    ``.zip``, and ``{frame:06d}``), the largest member size (ZipInfo.file_size) repack accepts before inflating,
    and the side files (normalisation stats) fetched with it.

    The release names members inconsistently (the datasheet leaves out prefixes the files have), so each
    archive's naming is resolved from its listing (:func:`resolve_member_pattern`); the first pattern is the
    canonical one, which synth writes and the original code reads."""

    asset: str
    key: str
    members: tuple[str, ...]
    max_member_bytes: int
    axis: str  # CAMERA, ENCODER or FRAME
    side_keys: tuple[str, ...] = ()

    def archive_key(self, camera: str = "") -> str:
        return self.key.format(camera=camera)

    def cameras(self, camera_ids: Sequence[str]) -> tuple[str, ...]:
        """What fills ``{camera}`` for a capture with dome cameras ``camera_ids``: those ids, the encoder
        cameras, or ``("",)`` for a per-frame archive."""
        if self.axis == CAMERA:
            return tuple(camera_ids)
        return ENCODER_CAMERAS if self.axis == ENCODER else ("",)

    def keys(self, camera_ids: Sequence[str]) -> list[str]:
        """Every object key of the asset (its archives, then its side files) for the given dome cameras."""
        return [self.archive_key(c) for c in self.cameras(camera_ids)] + list(self.side_keys)

    def patterns(self, camera: str = "") -> tuple[str, ...]:
        """Member name patterns for ``camera`` with ``{camera}`` and ``{stem}`` filled in (``{frame:06d}``
        left)."""
        stem = posixpath.basename(self.archive_key(camera)).removesuffix(".zip")
        return tuple(m.replace("{camera}", camera).replace("{stem}", stem) for m in self.members)

    def member(self, camera: str, frame_id: int, pattern: str | None = None) -> str:
        """Member name of ``frame_id`` under ``pattern`` (default: the canonical one)."""
        return (pattern or self.patterns(camera)[0]).replace("{frame:06d}", f"{int(frame_id):06d}")


#: The per-frame archive of every per-frame asset, in store order: the naming facts of the asset registry
#: (:mod:`ava256.assets`), kept here so that naming stays free of decoders. Member caps are generous
#: multiples of the largest frame a release size holds (a 2048 x 1334 AVIF or PNG is a few MB; a mesh or pose
#: is KB): anything declared larger is recorded corrupt without inflating.
FRAME_ARCHIVES: dict[str, FrameArchive] = {
    a.asset: a
    for a in (
        FrameArchive("image", "decoder/image/cam{camera}.zip",
                     ("cam{camera}/{frame:06d}.avif", "{frame:06d}.avif"), 64 * MiB, CAMERA),
        FrameArchive("segmentation", "decoder/segmentation_parts/cam{camera}.zip",
                     ("cam{camera}/{frame:06d}.png", "{frame:06d}.png"), 64 * MiB, CAMERA),
        FrameArchive("uv_texture", TEXTURE_KEY,
                     ("{stem}/{frame:06d}.avif", "{frame:06d}.avif"), 64 * MiB, FRAME,
                     (TEXTURE_MEAN_KEY, TEXTURE_VARIANCE_KEY)),
        FrameArchive("vertices", VERTICES_KEY,
                     ("{frame:06d}.ply", "{stem}/{frame:06d}.ply"), 16 * MiB, FRAME,
                     (VERTICES_MEAN_KEY, VERTICES_VARIANCE_KEY)),
        FrameArchive("keypoints_3d", KEYPOINTS_KEY,
                     ("{frame:06d}.npy", "{stem}/{frame:06d}.npy"), 1 * MiB, FRAME),
        FrameArchive("head_pose", HEAD_POSE_KEY,
                     ("{frame:06d}.txt", "{stem}/{frame:06d}.txt"), 1 * MiB, FRAME),
        FrameArchive("encoder_image", "encoder/image/{camera}.zip",
                     ("{frame:06d}.avif", "{camera}/{frame:06d}.avif"), 16 * MiB, ENCODER),
    )
}  # fmt: skip


def frame_archive(asset: str) -> FrameArchive:
    """The :class:`FrameArchive` of a per-frame asset; ValueError for another name."""
    try:
        return FRAME_ARCHIVES[asset]
    except KeyError:
        raise ValueError(
            f"asset {asset!r} has no per-frame archive; expected one of {', '.join(FRAME_ARCHIVES)}"
        ) from None


@lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    head, sep, tail = pattern.partition("{frame:06d}")
    return re.compile(re.escape(head) + (r"\d+" if sep else "") + re.escape(tail))


def resolve_member_pattern(asset: str, names: Iterable[str], camera: str = "") -> str | None:
    """The member pattern of ``asset`` (for ``camera``) that most of an archive's member ``names`` follow
    (ties: catalog order), or None when no name follows any of them."""
    pats = frame_archive(asset).patterns(camera)
    counts = [0] * len(pats)
    regexes = [_pattern_regex(p) for p in pats]
    for name in names:
        for i, rx in enumerate(regexes):
            if rx.fullmatch(name):
                counts[i] += 1
                break
    best = max(range(len(pats)), key=lambda i: (counts[i], -i))
    return pats[best] if counts[best] else None


# The canonical key and member of each asset (frame_id is an int), as synth writes them.
def image_key(camera_id: str) -> str:
    return FRAME_ARCHIVES["image"].archive_key(camera_id)


def segmentation_key(camera_id: str) -> str:
    return FRAME_ARCHIVES["segmentation"].archive_key(camera_id)


def encoder_image_key(encoder_camera: str) -> str:
    return FRAME_ARCHIVES["encoder_image"].archive_key(encoder_camera)


def image_member(camera_id: str, frame_id: int) -> str:
    return FRAME_ARCHIVES["image"].member(camera_id, frame_id)


def segmentation_member(camera_id: str, frame_id: int) -> str:
    return FRAME_ARCHIVES["segmentation"].member(camera_id, frame_id)


def head_pose_member(frame_id: int) -> str:
    return FRAME_ARCHIVES["head_pose"].member("", frame_id)


def keypoints_member(frame_id: int) -> str:
    return FRAME_ARCHIVES["keypoints_3d"].member("", frame_id)


def vertices_member(frame_id: int) -> str:
    return FRAME_ARCHIVES["vertices"].member("", frame_id)


def texture_member(frame_id: int) -> str:
    return FRAME_ARCHIVES["uv_texture"].member("", frame_id)


def encoder_image_member(frame_id: int, encoder_camera: str = "") -> str:
    return FRAME_ARCHIVES["encoder_image"].member(encoder_camera, frame_id)


#: Assets a user can select with ``--assets`` of fetch and synth, in the order fetch lists their keys: the
#: per-frame assets of :data:`FRAME_ARCHIVES` and "meta" (calibration + frame lists), which is always included.
ASSETS: tuple[str, ...] = (
    "meta",
    "image",
    "segmentation",
    "head_pose",
    "keypoints_3d",
    "vertices",
    "uv_texture",
    "encoder_image",
)
META_KEYS: tuple[str, ...] = (CALIBRATION_KEY, FRAME_LIST_KEY, ENCODER_FRAME_LIST_KEY)


def parse_assets(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise an ``--assets`` value (comma list or sequence; None = all); 'meta' is always added."""
    if names is None or names == "" or names == "all":
        return ASSETS
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in items if n not in ASSETS]
    if unknown:
        raise ValueError(f"unknown asset(s) {unknown}; expected some of {', '.join(ASSETS)}")
    chosen = set(items) | {"meta"}
    return tuple(a for a in ASSETS if a in chosen)


def asset_keys(asset: str, camera_ids: Sequence[str]) -> list[str]:
    """Object keys (relative to the capture folder) that make ``asset`` for the given dome cameras."""
    if asset == "meta":
        return list(META_KEYS)
    if asset not in FRAME_ARCHIVES:
        raise ValueError(f"unknown asset {asset!r}; expected one of {', '.join(ASSETS)}")
    return FRAME_ARCHIVES[asset].keys(camera_ids)


def capture_keys(assets: Sequence[str], camera_ids: Sequence[str]) -> list[str]:
    """All keys of a capture for the selected assets, in catalog order, without duplicates."""
    seen: dict[str, None] = {}
    for asset in parse_assets(list(assets)):
        for key in asset_keys(asset, camera_ids):
            seen.setdefault(key, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------------------
# Untrusted paths (bucket listings, zip member names)
# ---------------------------------------------------------------------------------------------------------


class UnsafePathError(ValueError):
    """A key or member name that would escape its root (``..``, absolute, drive letters, backslashes)."""


def safe_relpath(name: str) -> str:
    """Validate an untrusted relative path and return it normalised (POSIX). Raises UnsafePathError.

    Rejects: empty names, absolute paths, ``..`` components, backslashes, drive letters, NUL bytes.
    """
    if not name or "\x00" in name:
        raise UnsafePathError(f"unsafe path {name!r}: empty or contains NUL")
    if "\\" in name:
        raise UnsafePathError(f"unsafe path {name!r}: backslash")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafePathError(f"unsafe path {name!r}: absolute")
    parts = name.split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"unsafe path {name!r}: '..' component")
    norm = posixpath.normpath(name)
    if norm in (".", "") or norm.startswith("../"):
        raise UnsafePathError(f"unsafe path {name!r}")
    return norm
