"""A tiny, format-exact raw capture for the repack tests, written with the real format writers (real AVIF,
PNG, PLY, npy, stored zips): 3 cameras, 10 frames, 64 x 96 images, 16 x 16 textures, 40 x 40 IR images.

Random content keeps every frame distinct, so a frame written to the wrong slot cannot pass the fidelity test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ava256 import capture as cat
from ava256.formats.calibration import Calibration, write_calibration
from ava256.formats.frame_list import FrameList, write_frame_list
from ava256.formats.head_pose import write_head_pose
from ava256.formats.images import encode_avif, encode_png
from ava256.formats.keypoints import write_keypoints
from ava256.formats.ply import write_ply
from ava256.formats.scalars import write_npy, write_scalar_txt
from ava256.formats.zips import write_stored_zip

CAMERAS = ["400940", "401031", "401164"]
N_FRAMES = 10
N_ENCODER_FRAMES = 4
IMAGE_HW = (64, 96)
TEXTURE = 16
ENCODER_HW = (40, 40)
N_VERTICES = 7306


def datasheet_segmentation_member(frame_id: int) -> str:
    """Segmentation members named as the datasheet says (no ``cam{id}/`` prefix); synth writes the prefixed
    form the original code reads, so the repack tests cover both."""
    return f"{frame_id:06d}.png"


def write_capture(root: Path, capture: cat.CaptureId, seed: int = 0) -> Path:
    """Write a whole capture under ``root/<capture.folder>``; returns that folder."""
    rng = np.random.default_rng(seed)
    base = root / capture.folder
    for sub in ("decoder", "encoder"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    c = len(CAMERAS)
    k = np.tile(np.array([[5000.0, 0, 1334.0], [0, 5000.0, 2048.0], [0, 0, 1]]), (c, 1, 1))
    k[:, 0, 2] += np.arange(c) * 10.0
    rt = np.tile(np.hstack([np.eye(3), [[0.0], [0.0], [1000.0]]]), (c, 1, 1))
    rt[:, 0, 3] = np.arange(c) * 50.0
    dist = rng.normal(size=(c, 4)) * 1e-3
    (base / cat.CALIBRATION_KEY).write_bytes(write_calibration(Calibration(list(CAMERAS), k, rt, dist)))
    fids = 1000 + 7 * np.arange(N_FRAMES) + seed
    segs = np.array(["EXP_neutral_peak"] * 3 + ["EXP_free_face"] * 4 + ["EXP_jaw"] * (N_FRAMES - 7))
    (base / cat.FRAME_LIST_KEY).write_bytes(write_frame_list(FrameList(segs, fids)))
    efids = fids[:N_ENCODER_FRAMES]
    (base / cat.ENCODER_FRAME_LIST_KEY).write_bytes(
        write_frame_list(FrameList(segs[:N_ENCODER_FRAMES], efids))
    )
    H, W = IMAGE_HW

    def avif(shape):
        return encode_avif(rng.integers(0, 256, shape, dtype=np.uint8), 63, speed=10)

    for cam in CAMERAS:
        write_stored_zip(
            base / cat.image_key(cam), [(cat.image_member(cam, f), avif((H, W, 3))) for f in fids]
        )
        labels = [
            (datasheet_segmentation_member(f), encode_png(rng.integers(0, 11, (H, W), dtype=np.uint8)))
            for f in fids
        ]
        write_stored_zip(base / cat.segmentation_key(cam), labels)
    write_stored_zip(
        base / cat.TEXTURE_KEY, [(cat.texture_member(f), avif((TEXTURE, TEXTURE, 3))) for f in fids]
    )
    write_stored_zip(
        base / cat.VERTICES_KEY,
        [
            (cat.vertices_member(f), write_ply(rng.normal(size=(N_VERTICES, 3)).astype(np.float32)))
            for f in fids
        ],
    )

    def kp():
        ids = np.sort(rng.choice(cat.NUM_KEYPOINTS, 200, replace=False))
        return np.hstack([ids[:, None], rng.normal(size=(200, 5))])

    write_stored_zip(
        base / cat.KEYPOINTS_KEY, [(cat.keypoints_member(f), write_keypoints(kp())) for f in fids]
    )
    write_stored_zip(
        base / cat.HEAD_POSE_KEY,
        [
            (cat.head_pose_member(f), write_head_pose(rng.normal(size=(3, 4)).astype(np.float32)))
            for f in fids
        ],
    )
    (base / cat.VERTICES_MEAN_KEY).write_bytes(write_npy(rng.normal(size=(N_VERTICES, 3)).astype(np.float32)))
    (base / cat.VERTICES_VARIANCE_KEY).write_bytes(write_scalar_txt(2.5))
    (base / cat.TEXTURE_MEAN_KEY).write_bytes(
        encode_png(rng.integers(0, 256, (TEXTURE, TEXTURE, 3), dtype=np.uint8))
    )
    (base / cat.TEXTURE_VARIANCE_KEY).write_bytes(write_scalar_txt(40.0))
    for cam in cat.ENCODER_CAMERAS:
        write_stored_zip(
            base / cat.encoder_image_key(cam),
            [(cat.encoder_image_member(f), avif(ENCODER_HW)) for f in efids],
        )
    return base


def replace_member(zip_path: Path, member: str, data: bytes | None) -> None:
    """Rewrite a stored zip with ``member`` replaced by ``data`` (None: removed, i.e. a dropped frame)."""
    from ava256.formats.zips import ZipReader

    with ZipReader(zip_path) as z:
        members = [(n, z.read(n)) for n in z.names()]
    out = [(n, (data if n == member else b)) for n, b in members if not (n == member and data is None)]
    write_stored_zip(zip_path, out)
