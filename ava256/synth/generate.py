"""Format-exact synthetic AVA-256 captures (``docs/store-format.md``), for the demo, tests and benchmarks.

A synthetic capture has every file of a real one, with the same names, encodings and layouts:
calibration JSON (K/T transposed), frame lists, head poses, per-camera image and segmentation zips (stored),
registration meshes (binary PLY) with mean/variance, 3D keypoints with missing rows, uv textures with
mean/variance, and the five encoder IR zips. Content is procedural but coherent: a textured, shaded head
(ellipsoid with the uv texture of the frame mapped onto it) moves with the head pose and is ray-cast into
each calibrated camera, so images, segmentations, poses, meshes and textures agree with each other.

Conventions: head frame = the frame of :func:`ava256.topology.face_topology` (mm, y down, z out of the
face); ``head_pose`` maps head -> world; the registration meshes are in the head frame (as the release's
reference loader uses them: it composes only the cameras with the head pose); keypoints are in world
coordinates. Lens distortion is written to the calibration but not applied when rendering.

Everything is a function of ``seed`` and the capture id (stable hashing), independent of ``workers``: each
view and frame texture draws from its own stream, so frames render in any order, in any process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ava256 import capture as cap
from ava256 import topology as topo
from ava256.atomic import atomic_write_bytes
from ava256.capture import ASSETS, ENCODER_CAMERAS, NUM_KEYPOINTS, SENSOR_HEIGHT, SENSOR_WIDTH, CaptureId
from ava256.formats import (
    Calibration,
    FrameList,
    encode_avif,
    encode_png,
    write_calibration,
    write_frame_list,
    write_head_pose,
    write_keypoints,
    write_npy,
    write_ply,
    write_scalar_txt,
)

log = logging.getLogger(__name__)

#: Segments of a synthetic frame list, in order, with relative lengths.
SEGMENTS: tuple[tuple[str, float], ...] = (
    ("EXP_neutral_peak", 0.10),
    ("EXP_jaw_open", 0.15),
    ("EXP_smile", 0.15),
    ("EXP_eyebrows_up", 0.10),
    ("EXP_eyes_closed", 0.10),
    ("SEN_the_rainbow_passage", 0.20),
    ("EXP_free_face", 0.20),
)
#: Expression coefficients (jaw, smile, brow, blink, cheek) each segment drives.
_SEGMENT_EXPR = {
    "EXP_neutral_peak": (0.0, 0.0, 0.0, 0.0, 0.0),
    "EXP_jaw_open": (1.0, 0.0, 0.2, 0.0, 0.0),
    "EXP_smile": (0.15, 1.0, 0.0, 0.0, 0.6),
    "EXP_eyebrows_up": (0.0, 0.0, 1.0, 0.0, 0.0),
    "EXP_eyes_closed": (0.0, 0.0, -0.3, 1.0, 0.0),
}
ENCODER_SIZE = 400
#: Noise levels (grey levels) tuned so that AVIF sizes match the release's (benchmarks/synth.py).
GRAIN = 3.5  # per-pixel sensor grain of camera images
PORES = 1.5  # fixed skin micro-texture of the uv texture
TEX_NOISE = 1.0  # per-frame noise of the uv textures
IMAGE_DETAIL = 0.07  # relative amplitude of surface micro-detail in camera images
DETAIL = 0.065  # relative amplitude of mid-frequency skin detail (wrinkles, stubble)
#: AVIF encoder speed used for synthetic data (0 slow/small .. 10 fast; 8 is within a few % of the default
#: size at about 4x the speed).
AVIF_SPEED = 8


# ---------------------------------------------------------------------------------------------------------
# Randomness: one stable stream per (seed, capture, purpose)
# ---------------------------------------------------------------------------------------------------------


def _rng(seed: int, *parts: object) -> np.random.Generator:
    h = hashlib.sha256(repr((int(seed),) + tuple(str(p) for p in parts)).encode()).digest()
    return np.random.default_rng(np.frombuffer(h[:16], dtype=np.uint32))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Value noise (h, w) float32 in about [-1, 1], from bicubically upsampled random grids."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(2, cells * 2**o)
        g = rng.standard_normal((max(2, round(c * h / max(h, w))), max(2, round(c * w / max(h, w)))))
        im = Image.fromarray(g.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)
        out += amp * np.asarray(im, np.float32)
        total += amp
        amp *= 0.5
    return out / total


def _drops(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Indices of ``floor(rate*n)`` (+1 with probability of the remainder) dropped items out of n."""
    if rate <= 0 or n == 0:
        return np.zeros(0, np.int64)
    exp = min(1.0, rate) * n
    k = int(exp) + int(rng.random() < exp - int(exp))
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


# ---------------------------------------------------------------------------------------------------------
# Scene: calibration, frames, head motion, expressions
# ---------------------------------------------------------------------------------------------------------


def camera_ids_for(seed: int, cameras: int) -> list[str]:
    """Dome camera ids (6-digit strings like the release's), the same for every capture of a seed."""
    rng = _rng(seed, "camera-ids")
    return sorted(str(x) for x in 400000 + rng.choice(1200, size=cameras, replace=False))


def _look_at(center: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    z = target - center
    z /= np.linalg.norm(z)
    down = np.array([0.0, 1.0, 0.0])
    x = np.cross(down, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # world -> camera rotation (rows are camera axes)
    c, s = np.cos(roll), np.sin(roll)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ r


def make_calibration(seed: int, capture: CaptureId, cameras: int, head_world: np.ndarray) -> Calibration:
    """Cameras on a dome 0.56-0.7 m around ``head_world``, looking at it, spread over the front (azimuth
    +-100 deg, elevation -25..45 deg); K for the full 4096 x 2668 sensor (fx ~ 10,000 px). At that distance
    the face fills a portrait frame as in the release's sample image."""
    ids = camera_ids_for(seed, cameras)
    rng = _rng(seed, capture.folder, "calibration")
    n = len(ids)
    # spread over the front: azimuth -100..100 deg, elevation -25..45 deg (golden-angle ordering)
    k = np.arange(n) + 0.5
    az = np.deg2rad(-100 + 200 * ((k * 0.618034) % 1.0)) + rng.normal(0, 0.03, n)
    el = np.deg2rad(-25 + 70 * (k / n)) + rng.normal(0, 0.03, n)
    dist = rng.uniform(560, 700, n)
    intr = np.zeros((n, 3, 3))
    extr = np.zeros((n, 3, 4))
    for i in range(n):
        dirv = np.array([np.cos(el[i]) * np.sin(az[i]), -np.sin(el[i]), np.cos(el[i]) * np.cos(az[i])])
        center = head_world + dist[i] * dirv
        target = head_world + rng.normal(0, 15, 3)
        r = _look_at(center, target, rng.normal(0, 0.03))
        extr[i] = np.concatenate([r, (-r @ center)[:, None]], axis=1)
        fx = rng.uniform(9700, 10500)
        intr[i] = [
            [fx, 0, SENSOR_WIDTH / 2 + rng.normal(0, 40)],
            [0, fx * rng.uniform(0.999, 1.001), SENSOR_HEIGHT / 2 + rng.normal(0, 120)],
            [0, 0, 1],
        ]
    dist_coef = np.stack(
        [
            rng.normal(-0.07, 0.02, n),
            rng.normal(0.04, 0.02, n),
            rng.normal(0, 0.003, n),
            rng.normal(0, 0.003, n),
        ],
        axis=1,
    )
    return Calibration(ids, intr, extr, dist_coef)


def make_frame_list(seed: int, capture: CaptureId, frames: int, encoder: bool = False) -> FrameList:
    """Frames split into :data:`SEGMENTS` (every segment gets a frame once there are enough; the neutral
    and free-face segments always do when ``frames >= 2``). Frame ids increase, with gaps between segments."""
    rng = _rng(seed, capture.folder, "frames", encoder)
    names = [s for s, _ in SEGMENTS]
    w = np.array([x for _, x in SEGMENTS])
    if frames >= len(names):
        counts = np.ones(len(names), int) + np.floor(w / w.sum() * (frames - len(names))).astype(int)
        counts[-1] += frames - counts.sum()
    else:
        counts = np.zeros(len(names), int)
        order = [0, len(names) - 1] + list(range(1, len(names) - 1))
        for j in range(frames):
            counts[order[j]] += 1
    segs, ids = [], []
    fid = int(rng.integers(0, 3000)) if not encoder else int(rng.integers(0, 500))
    for name, c in zip(names, counts):
        for _ in range(c):
            segs.append(name)
            ids.append(fid)
            fid += 1 if encoder else 2  # the dome's 7.5 fps keeps every other frame id
        fid += int(rng.integers(20, 200))
    return FrameList(np.array(segs, dtype=str), np.array(ids, dtype=np.int64))


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack(
        [np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2
    )
    rx = np.stack(
        [np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2
    )
    rz = np.stack(
        [np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2
    )
    return ry @ rx @ rz


def _smooth_curve(rng: np.random.Generator, n: int, amplitude: float, components: int = 3) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    for _ in range(components):
        period = rng.uniform(15, 120)
        out += rng.normal(0, 1) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return amplitude * out / np.sqrt(components)


@dataclass
class _Scene:
    calibration: Calibration
    frame_list: FrameList
    encoder_frames: FrameList
    head_pose: np.ndarray  # (F, 3, 4) head -> world
    expr: np.ndarray  # (F, 5) jaw, smile, brow, blink, cheek
    head_world: np.ndarray  # (3,) mean head position in world, mm
    skin: np.ndarray  # (3,) albedo 0..255
    hair: np.ndarray  # (3,)
    identity: np.ndarray  # (V, 3) per-capture shape offset, mm
    detail: np.ndarray  # (1024, 2048) float32 surface micro-detail over (elevation, azimuth), ~N(0, 1)


def _scene(seed: int, capture: CaptureId, cameras: int, frames: int) -> _Scene:
    rng = _rng(seed, capture.folder, "scene")
    head_world = np.array([0.0, 0.0, 0.0]) + rng.normal(0, 25, 3)
    cal = make_calibration(seed, capture, cameras, head_world)
    fl = make_frame_list(seed, capture, frames)
    efl = make_frame_list(seed, capture, frames, encoder=True)
    n = len(fl)
    yaw = _smooth_curve(rng, n, np.deg2rad(12))
    pitch = _smooth_curve(rng, n, np.deg2rad(7))
    roll = _smooth_curve(rng, n, np.deg2rad(4))
    rot = _rotation(yaw, pitch, roll)
    trans = head_world + np.stack([_smooth_curve(rng, n, a) for a in (12.0, 8.0, 12.0)], -1)
    pose = np.concatenate([rot, trans[:, :, None]], axis=2)
    expr = np.zeros((n, 5))
    t = np.arange(n)
    for name, coef in _SEGMENT_EXPR.items():
        idx = fl.segment_frames(name)
        if idx.size:
            ramp = np.sin(np.pi * (np.arange(idx.size) + 0.5) / idx.size)  # onset -> peak -> offset
            expr[idx] = np.outer(ramp, coef)
    for seg in ("SEN_the_rainbow_passage", "EXP_free_face"):
        idx = fl.segment_frames(seg)
        if idx.size:
            expr[idx, 0] = np.clip(0.4 + 0.4 * np.sin(t[idx] * 1.7 + rng.uniform(0, 6)), 0, 1)
            expr[idx, 1] = np.clip(_smooth_curve(rng, idx.size, 0.6), 0, 1)
            expr[idx, 2] = _smooth_curve(rng, idx.size, 0.4)
            expr[idx, 4] = np.clip(_smooth_curve(rng, idx.size, 0.5), 0, 1)
    # spontaneous blinks
    blinks = rng.random(n) < 0.05
    expr[blinks, 3] = np.maximum(expr[blinks, 3], 1.0)
    neutral = fl.segment_frames("EXP_neutral_peak")
    expr[neutral] = 0.0
    skin = np.array([150.0, 140.0, 85.0]) * rng.uniform(0.6, 1.25) + rng.normal(0, 8, 3)
    hair = np.array([30.0, 26.0, 18.0]) * rng.uniform(0.6, 1.8)
    base = topo.face_topology().vertices.astype(np.float64)
    scale = 1.0 + rng.normal(0, 0.04, 3)
    identity = (base - topo.HEAD_CENTER) * (scale - 1.0)
    identity += rng.normal(0, 1.5, (1, 3))
    drng = _rng(seed, capture.folder, "detail")
    detail = Image.fromarray(drng.standard_normal((512, 1024)).astype(np.float32), mode="F").resize(
        (2048, 1024), Image.BICUBIC
    )
    detail = np.asarray(detail, np.float32) / 0.8
    return _Scene(cal, fl, efl, pose.astype(np.float32), expr, head_world, skin, hair, identity, detail)


# ---------------------------------------------------------------------------------------------------------
# Geometry: meshes and keypoints
# ---------------------------------------------------------------------------------------------------------

_EXPR_DIRS = {  # displacement (mm) per unit coefficient, in the head frame
    "jaw": np.array([0.0, 14.0, -3.0]),
    "smile": np.array([0.0, -3.0, 2.0]),
    "brow": np.array([0.0, -5.0, 1.0]),
    "blink": np.array([0.0, 3.0, 0.5]),
    "cheek": np.array([0.0, -2.0, 3.0]),
}


def frame_vertices(scene: _Scene, frame_index: int) -> np.ndarray:
    """(7306, 3) float32 registered mesh of a frame, head frame (mm)."""
    base = topo.face_topology().vertices.astype(np.float64) + scene.identity
    w = topo.region_weights()
    v = base.copy()
    for j, name in enumerate(("jaw", "smile", "brow", "blink", "cheek")):
        d = _EXPR_DIRS[name]
        if name == "smile":
            sgn = np.sign(base[:, 0] - topo.HEAD_CENTER[0])[:, None]
            d = d + np.array([4.0, 0, 0]) * sgn
        v += scene.expr[frame_index, j] * w[name][:, None] * d
    return v.astype(np.float32)


def _keypoint_vertices(seed: int) -> np.ndarray:
    rng = _rng(seed, "keypoint-vertices")
    return rng.choice(topo.GRID * topo.GRID, size=NUM_KEYPOINTS, replace=False)


# ---------------------------------------------------------------------------------------------------------
# Texture and image rendering
# ---------------------------------------------------------------------------------------------------------


def _angles_to_uv(theta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u0, v0, u1, v1 = topo.FACE_UV
    u = u0 + (theta / (2 * topo.AZIMUTH) + 0.5) * (u1 - u0)
    v = v0 + (phi / (2 * topo.ELEVATION) + 0.5) * (v1 - v0)
    return u, v


def _uv_to_angles(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u0, v0, u1, v1 = topo.FACE_UV
    gu = (u - u0) / (u1 - u0)
    gv = (v - v0) / (v1 - v0)
    inside = (gu >= 0) & (gu <= 1) & (gv >= 0) & (gv <= 1)
    return (gu - 0.5) * 2 * topo.AZIMUTH, (gv - 0.5) * 2 * topo.ELEVATION, inside


def _ell(t: np.ndarray, p: np.ndarray, t0: float, p0: float, rt: float, rp: float) -> np.ndarray:
    return ((t - t0) / rt) ** 2 + ((p - p0) / rp) ** 2


def _label_map(theta: np.ndarray, phi: np.ndarray, expr: np.ndarray) -> np.ndarray:
    """Segmentation labels (uint8) of head-surface points at angles (theta, phi) for expression ``expr``."""
    jaw = float(np.clip(expr[0], 0, 1))
    lab = np.full(theta.shape, 2, np.uint8)  # skin -> Body
    hairline = 0.78 - 0.12 * np.cos(theta * 1.3)
    lab[(phi > hairline) | (np.abs(theta) > 1.55)] = 1  # Hair
    mc_t, mc_p = topo.MOUTH_CENTER
    lip = _ell(theta, phi, mc_t, mc_p, 0.28, 0.075 + 0.05 * jaw) < 1
    lab[lip & (phi >= mc_p)] = 6
    lab[lip & (phi < mc_p)] = 7
    if jaw > 0.05:
        open_ = _ell(theta, phi, mc_t, mc_p - 0.01, 0.2, 0.005 + 0.05 * jaw) < 1
        lab[open_ & (phi >= mc_p)] = 8
        lab[open_ & (phi < mc_p)] = 9
        if jaw > 0.6:
            lab[_ell(theta, phi, mc_t, mc_p - 0.035 * jaw, 0.08, 0.015) < 1] = 10
    return lab


def _identity_texture(seed: int, capture: CaptureId, scene: _Scene, size: int) -> np.ndarray:
    """(T, T, 3) float32 albedo of the capture's neutral face in uv space (no per-frame effects)."""
    rng = _rng(seed, capture.folder, "texture", size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (cols + 0.5) / size
    v = 1.0 - (rows + 0.5) / size
    theta, phi, inside = _uv_to_angles(u, v)
    tex = np.empty((size, size, 3), np.float32)
    blotch = _smooth_noise(rng, size, size, 6, octaves=4)
    wrinkles = _smooth_noise(rng, size, size, 96, octaves=2)
    pores = rng.standard_normal((size, size)).astype(np.float32)
    skin = (
        scene.skin[None, None] * (1 + 0.12 * blotch[..., None] + DETAIL * wrinkles[..., None])
        + PORES * pores[..., None]
    )
    # shading baked into the unwrapped texture (like the release's average textures)
    skin *= (0.55 + 0.45 * np.cos(np.clip(theta, -1.6, 1.6)) * np.cos(np.clip(phi, -1.3, 1.3)))[..., None]
    tex[:] = skin
    hairline = 0.78 - 0.12 * np.cos(theta * 1.3)
    hair = (phi > hairline) | (np.abs(theta) > 1.55)
    strands = _smooth_noise(rng, max(2, size // 8), size, 24, octaves=2)
    strands = np.asarray(Image.fromarray(strands, mode="F").resize((size, size), Image.BILINEAR))
    tex[hair] = scene.hair * (1 + 0.35 * strands[hair, None]) + 4.0 * pores[hair, None]
    for et, ep in topo.EYE_CENTERS:
        socket = np.exp(-0.5 * _ell(theta, phi, et, ep, 0.16, 0.09))
        tex *= (1 - 0.35 * socket)[..., None]
        brow = _ell(theta, phi, et, ep + 0.15, 0.19, 0.03) < 1
        tex[brow] = tex[brow] * 0.35 + scene.hair * 0.65
        eye = _ell(theta, phi, et, ep, 0.12, 0.045)
        tex[eye < 1] = np.array([150.0, 145.0, 130.0]) * (0.8 + 0.1 * pores[eye < 1, None])
        iris = _ell(theta, phi, et, ep, 0.045, 0.042) < 1
        tex[iris] = np.array([45.0, 35.0, 25.0])
    nose_shadow = np.exp(-0.5 * _ell(theta, phi, 0.07, -0.05, 0.04, 0.18))
    tex *= (1 - 0.3 * nose_shadow)[..., None]
    for s in (-1, 1):
        nostril = _ell(theta, phi, 0.05 * s, -0.2, 0.03, 0.015) < 1
        tex[nostril] *= 0.4
    mc_t, mc_p = topo.MOUTH_CENTER
    lip = _ell(theta, phi, mc_t, mc_p, 0.28, 0.075) < 1
    tex[lip] = tex[lip] * np.array([1.05, 0.75, 0.75])
    tex[~inside] = 8.0 + 4.0 * pores[~inside, None]
    return tex


def frame_texture(base: np.ndarray, expr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, T, 3) uint8 uv texture of one frame: the identity texture with blinks and an open mouth."""
    size = base.shape[0]
    tex = base.copy()
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, phi, _ = _uv_to_angles((cols + 0.5) / size, 1.0 - (rows + 0.5) / size)
    jaw, smile, _brow, blink, _cheek = (float(x) for x in expr)
    if blink > 0.3:
        for et, ep in topo.EYE_CENTERS:
            lid = (_ell(theta, phi, et, ep, 0.13, 0.055) < 1) & (phi > ep + 0.05 - 0.1 * blink)
            tex[lid] = base[
                np.clip(rows[lid].astype(int) - int(0.06 * size), 0, size - 1), cols[lid].astype(int)
            ]
    mc_t, mc_p = topo.MOUTH_CENTER
    if jaw > 0.05:
        open_ = _ell(theta, phi, mc_t, mc_p - 0.01, 0.2, 0.005 + 0.05 * jaw) < 1
        teeth = open_ & (np.abs(phi - mc_p + 0.01) > 0.012 * jaw)
        tex[open_] = np.array([20.0, 10.0, 10.0])
        tex[teeth] = np.array([150.0, 145.0, 120.0])
    if smile > 0.05:
        cheeks = sum(np.exp(-0.5 * _ell(theta, phi, s * 0.45, -0.25, 0.12, 0.12)) for s in (-1, 1))
        tex *= (1 + 0.12 * smile * cheeks)[..., None]
    tex += rng.normal(0, TEX_NOISE, tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)


class _Camera:
    """Per-camera ray set-up at a given image size (directions are computed per render: bounded memory)."""

    def __init__(self, cal: Calibration, i: int, pixels: np.ndarray):
        height, width = pixels.shape[:2]
        k = cal.intrinsics[i].copy()
        k[0] *= width / SENSOR_WIDTH
        k[1] *= height / SENSOR_HEIGHT
        r = cal.extrinsics[i][:, :3]
        t = cal.extrinsics[i][:, 3]
        self.center = -r.T @ t
        self.forward = r[2]
        self._m = (np.linalg.inv(k).T @ r).astype(np.float32)  # pixel (x, y, 1) -> world direction
        self._pixels = pixels

    @property
    def dirs(self) -> np.ndarray:
        d = self._pixels @ self._m
        return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _pixel_grid(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)], -1)


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear lookup of img (H, W[, C]) at float pixel coordinates (pixel centres at integers), clamped."""
    h, w = img.shape[:2]
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.minimum(y.astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    x0 = np.minimum(x.astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    fy = (y - y0).astype(np.float32)
    fx = (x - x0).astype(np.float32)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    if img.ndim == 3:
        fy, fx = fy[:, None], fx[:, None]
    a = img[y0, x0].astype(np.float32)
    b = img[y0, x1].astype(np.float32)
    c = img[y1, x0].astype(np.float32)
    d = img[y1, x1].astype(np.float32)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _ray_ellipsoid(o: np.ndarray, d: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive hit distance (inf where missed) of rays o + s d with an axis-aligned ellipsoid at 0
    (float32 throughout: these are whole-image arrays)."""
    inv = (1.0 / np.asarray(radii, np.float64)).astype(np.float32)
    o_ = (np.asarray(o, np.float64) / radii).astype(np.float32)
    d_ = d * inv
    a = np.einsum("...i,...i->...", d_, d_)
    b = 2 * (d_ @ o_)
    c = np.float32(o_ @ o_ - 1.0)
    disc = b * b - 4 * a * c
    hit = disc > 0
    np.sqrt(disc, out=disc, where=hit)
    s = (-b - disc) / (2 * a)
    s[~hit | (s <= 0)] = np.inf
    return s, np.isfinite(s)


_GRAIN_PAD = 64


@lru_cache(maxsize=4)
def _grain_bank(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(h * 100003 + w)
    bank = rng.standard_normal((h + _GRAIN_PAD, w + _GRAIN_PAD, 3), dtype=np.float32)
    bank *= GRAIN
    return bank


def render_view(
    cam: _Camera,
    pose: np.ndarray,
    tex: np.ndarray,
    expr: np.ndarray,
    scene: _Scene,
    background: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the head (textured ellipsoid), shoulders and chair into one camera.
    Returns (H, W, 3) uint8 image and (H, W) uint8 labels."""
    dirs = cam.dirs
    h, w = dirs.shape[:2]
    rot, trans = pose[:, :3].astype(np.float64), pose[:, 3].astype(np.float64)
    # head, in the head frame relative to the ellipsoid centre
    o_h = rot.T @ (cam.center - trans) - topo.HEAD_CENTER
    d_h = dirs @ rot.astype(np.float32)
    s_head, _ = _ray_ellipsoid(o_h, d_h, topo.HEAD_RADII)
    # shoulders (apparel) and chair back, static in the world below/behind the mean head position
    body_c = scene.head_world + np.array([0.0, 230.0, -40.0])
    s_body, _ = _ray_ellipsoid(cam.center - body_c, dirs, np.array([210.0, 120.0, 120.0]))
    chair_c = scene.head_world + np.array([0.0, 250.0, -230.0])
    s_chair, _ = _ray_ellipsoid(cam.center - chair_c, dirs, np.array([260.0, 320.0, 40.0]))
    is_head = np.isfinite(s_head) & (s_head <= s_body) & (s_head <= s_chair)
    is_body = np.isfinite(s_body) & ~is_head & (s_body <= s_chair)
    is_chair = np.isfinite(s_chair) & ~is_head & ~is_body
    img = background.copy()
    labels = np.zeros((h, w), np.uint8)
    light = -cam.forward + np.array([0.0, -0.6, 0.0])
    light /= np.linalg.norm(light)
    if is_head.any():
        p = o_h + s_head[is_head, None].astype(np.float64) * d_h[is_head]  # head frame, relative to centre
        q = p / topo.HEAD_RADII
        theta = np.arctan2(q[:, 0], q[:, 2])
        phi = np.arctan2(-q[:, 1], np.hypot(q[:, 0], q[:, 2]))
        u, v = _angles_to_uv(theta, phi)
        t = tex.shape[0]
        albedo = _bilinear(tex, (1 - v) * t - 0.5, u * t - 0.5)
        outside = (np.abs(theta) > topo.AZIMUTH) | (np.abs(phi) > topo.ELEVATION)
        albedo[outside] = scene.hair
        albedo[outside & (phi < -topo.ELEVATION) & (np.abs(theta) <= topo.AZIMUTH)] = (
            scene.skin * 0.45
        )  # neck
        # view-independent micro-detail the uv texture does not resolve (stubble, pores, fine hair)
        dh, dw = scene.detail.shape
        micro = _bilinear(
            scene.detail, (0.5 - phi / np.pi) * dh - 0.5, (theta / (2 * np.pi) + 0.5) * dw - 0.5
        )
        albedo *= (1.0 + IMAGE_DETAIL * micro)[:, None]
        n = q / topo.HEAD_RADII
        n = (n / np.linalg.norm(n, axis=1, keepdims=True)) @ rot.T  # world normal
        shade = 0.35 + 0.65 * np.clip(n @ light, 0, 1)
        img[is_head] = albedo * shade[:, None].astype(np.float32)
        labels[is_head] = _label_map(theta, phi, expr)
    for mask, s, c, color, lab in (
        (is_body, s_body, body_c, np.array([40.0, 45.0, 60.0]), 4),
        (is_chair, s_chair, chair_c, np.array([18.0, 18.0, 20.0]), 3),
    ):
        if mask.any():
            p = cam.center + s[mask, None] * dirs[mask] - c
            n = p / np.linalg.norm(p, axis=1, keepdims=True)
            img[mask] = color * (0.4 + 0.6 * np.clip(n @ light, 0, 1))[:, None]
            labels[mask] = lab
    # sensor grain: a random crop of a per-image-size noise bank (a fresh draw per view costs ~10x more)
    bank = _grain_bank(h, w)
    oy, ox = (int(x) for x in rng.integers(0, _GRAIN_PAD, 2))
    img += bank[oy : oy + h, ox : ox + w]
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), labels


def _background(seed: int, capture: CaptureId, camera_id: str, w: int, h: int) -> np.ndarray:
    rng = _rng(seed, capture.folder, "background", camera_id, w, h)
    base = 10.0 + 6.0 * _smooth_noise(rng, h, w, 5, octaves=4)
    tint = np.array([1.0, 1.0, 0.7])
    return (np.clip(base, 0, 255)[..., None] * tint).astype(np.float32)


def _encoder_frame(rng: np.random.Generator, name: str, size: int, expr: np.ndarray) -> np.ndarray:
    """A greyscale close-up IR-like image: dark periphery, a lit skin patch, an eye or a mouth."""
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5
    skin = 90.0 * np.exp(-((xs / 0.45) ** 2 + (ys / 0.4) ** 2))
    tex = 10.0 * _smooth_noise(rng, size, size, 8, octaves=3)
    img = 15.0 + skin + tex
    if "eye" in name or "cyclop" in name:
        open_ = 1.0 - float(np.clip(expr[3], 0, 1))
        eye = ((xs / 0.22) ** 2 + (ys / (0.01 + 0.1 * open_)) ** 2) < 1
        img[eye] = 170.0
        img[(xs**2 + ys**2) < (0.07 * open_) ** 2] = 20.0
    else:
        jaw = float(np.clip(expr[0], 0, 1))
        mouth = ((xs / 0.3) ** 2 + ((ys - 0.1) / (0.02 + 0.12 * jaw)) ** 2) < 1
        img[mouth] = 25.0
    img += rng.normal(0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Writing a capture
# ---------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, fsync=False)  # synthetic data: re-generated, never fsync'd


class _ZipSet:
    """Several stored zips written member by member, each to a temp file, all renamed into place on success
    (removed on failure)."""

    def __init__(self, root: Path):
        self.root = root
        self._open: dict[str, tuple[zipfile.ZipFile, Path]] = {}
        self.keys: list[str] = []

    def _zip(self, key: str) -> zipfile.ZipFile:
        if key not in self._open:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            self._open[key] = (zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED), tmp)
            self.keys.append(key)
        return self._open[key][0]

    def ensure(self, key: str) -> None:
        self._zip(key)

    def add(self, key: str, name: str, data: bytes) -> None:
        zi = zipfile.ZipInfo(name, date_time=(2023, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_STORED
        zi.external_attr = 0o644 << 16
        self._zip(key).writestr(zi, data)

    def __enter__(self) -> _ZipSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for key, (zf, tmp) in self._open.items():
            zf.close()
            if exc_type is None:
                os.replace(tmp, self.root / key)
            else:
                tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _RenderSpec:
    """What a process needs to render frames of one capture (hashable: its context is cached per process)."""

    seed: int
    capture: CaptureId
    cameras: int
    frames: int
    width: int
    height: int
    tsize: int
    quality: int
    texture: bool  # write uv textures
    image: bool
    segmentation: bool


@dataclass
class _FrameOut:
    """One frame's encoded files: the uv texture (AVIF) and its pixels (for the mean), and per camera the
    image (AVIF) and labels (PNG), None where the view is dropped or the asset not chosen."""

    texture: bytes | None = None
    pixels: np.ndarray | None = None
    views: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)


@lru_cache(maxsize=2)
def _render_context(spec: _RenderSpec) -> tuple:
    scene = _scene(spec.seed, spec.capture, spec.cameras, spec.frames)
    base_tex = _identity_texture(spec.seed, spec.capture, scene, spec.tsize)
    cal = scene.calibration
    render = spec.image or spec.segmentation
    pixels = _pixel_grid(spec.width, spec.height) if render else None
    cams = [_Camera(cal, ci, pixels) for ci in range(len(cal))] if render else []
    bgs = (
        [_background(spec.seed, spec.capture, c, spec.width, spec.height) for c in cal.camera_ids]
        if render
        else []
    )
    return scene, base_tex, cams, bgs


def _render_frames(spec: _RenderSpec, frames: list[tuple[int, frozenset[str]]]) -> list[_FrameOut]:
    """Render frames given as (frame index, camera ids dropped at that frame)."""
    scene, base_tex, cams, bgs = _render_context(spec)
    cal, folder = scene.calibration, spec.capture.folder
    outs = []
    for i, dropped in frames:
        fid = int(scene.frame_list.frame_ids[i])
        tex = frame_texture(base_tex, scene.expr[i], _rng(spec.seed, folder, "frame-texture", fid))
        out = _FrameOut()
        if spec.texture:
            out.texture, out.pixels = encode_avif(tex, spec.quality, speed=AVIF_SPEED), tex
        for ci, cid in enumerate(cal.camera_ids if (spec.image or spec.segmentation) else ()):
            if cid in dropped:
                out.views.append((None, None))
                continue
            rng = _rng(spec.seed, folder, "image", cid, fid)
            rgb, lab = render_view(cams[ci], scene.head_pose[i], tex, scene.expr[i], scene, bgs[ci], rng)
            out.views.append(
                (
                    encode_avif(rgb, spec.quality, speed=AVIF_SPEED) if spec.image else None,
                    encode_png(lab) if spec.segmentation else None,
                )
            )
        outs.append(out)
    return outs


def _ordered(pool: Executor | None, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``fn(*item)`` for each item, results in order; with a pool at most ``window`` calls in flight (the
    results of a long capture never pile up in memory)."""
    if pool is None:
        for item in items:
            yield fn(*item)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _per_frame_keys(chosen: set[str], camera_ids: Sequence[str]) -> list[str]:
    """The per-frame archives of the ``chosen`` assets (from the asset registry's naming facts)."""
    return [
        arch.archive_key(c)
        for arch in cap.FRAME_ARCHIVES.values()
        if arch.asset in chosen
        for c in arch.cameras(camera_ids)
    ]


def _parse_assets(assets: Sequence[str] | str | None) -> set[str]:
    return set(cap.parse_assets(assets if assets is not None else ASSETS))


def generate_capture(
    capture_root: Path,
    capture: CaptureId,
    *,
    size: str = "4TB",
    cameras: int = 8,
    frames: int = 40,
    seed: int = 0,
    assets: Sequence[str] | str = ASSETS,
    image_size: tuple[int, int] | None = None,
    texture_size: int | None = None,
    drop_rate: float = 0.001,
    encoder_size: int | None = None,
    pool: Executor | None = None,
    window: int = 32,
) -> dict:
    """Write one synthetic capture to ``capture_root/{capture.folder}/`` (decoder/..., encoder/...).

    ``capture_root`` is the folder that holds capture folders (a size prefix of a bucket, or a raw tree).
    ``image_size`` (W, H) overrides the release size's image size (portrait 667 x 1024 for 4TB/8TB,
    1334 x 2048 for 16TB/32TB); ``texture_size`` overrides the 1024 uv textures; ``encoder_size``
    overrides the 400 x 400 IR images (default: 400, scaled like the image width when ``image_size`` is
    given). ``drop_rate`` is the fraction of missing image entries (per camera and frame; segmentation
    drops the same entries) and of missing per-frame entries of head pose, keypoints, meshes and textures:
    exactly ``floor(rate * n)`` plus one more with the remaining probability, so a rate >= 1/n forces
    drops. Returns a summary dict: ``capture``, ``path``, ``camera_ids``, ``frame_ids``, ``segments``,
    ``encoder_frame_ids``, ``dropped`` ({"image": {camera_id: [frame_id, ...]}, "head_pose": [...], ...}),
    ``files`` (keys relative to the capture folder) and ``bytes``. ``pool``: render and encode frames in
    this executor's processes (at most ``window`` frames in flight); the files do not depend on it.
    """
    rel = parse_size_dims(size, image_size)
    width, height = rel
    quality = cap.parse_size(size).avif_quality
    tsize = int(texture_size) if texture_size else 1024
    esize = (
        int(encoder_size)
        if encoder_size
        else (
            ENCODER_SIZE
            if image_size is None
            else max(16, round(ENCODER_SIZE * width / cap.SIZES["4TB"].width))
        )
    )
    if cameras < 1 or frames < 1:
        raise ValueError(f"need at least one camera and one frame, got cameras={cameras}, frames={frames}")
    if not 0 <= drop_rate <= 1:
        raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
    chosen = _parse_assets(assets)
    root = Path(capture_root) / capture.folder
    scene = _scene(seed, capture, cameras, frames)
    fl, efl, cal = scene.frame_list, scene.encoder_frames, scene.calibration
    n = len(fl)
    fids = fl.frame_ids.tolist()
    written: list[str] = []
    total = 0

    def put(key: str, data: bytes) -> None:
        nonlocal total
        _write_atomic(root / key, data)
        written.append(key)
        total += len(data)

    drng = _rng(seed, capture.folder, "drops")
    dropped: dict = {"image": {cid: [] for cid in cal.camera_ids}}
    for j in _drops(drng, n * len(cal), drop_rate).tolist():
        dropped["image"][cal.camera_ids[j // n]].append(fids[j % n])
    frame_drop = {  # in this order of draws from drng: the dropped frames depend on it
        a: set(_drops(drng, n, drop_rate).tolist())
        for a in ("head_pose", "keypoints_3d", "vertices", "uv_texture")
    }
    for a, dropped_idx in frame_drop.items():
        dropped[a] = [fids[i] for i in sorted(dropped_idx)]
    image_drop = {cid: set(v) for cid, v in dropped["image"].items()}

    # meta
    put(cap.CALIBRATION_KEY, write_calibration(cal))
    put(cap.FRAME_LIST_KEY, write_frame_list(fl))
    put(cap.ENCODER_FRAME_LIST_KEY, write_frame_list(efl))

    # one pass over the frames with every per-frame archive open; frames are rendered (in ``pool`` when
    # given) at most ``window`` ahead of the writer, so memory stays bounded
    zips = _ZipSet(root)
    kv = _keypoint_vertices(seed)
    krng = _rng(seed, capture.folder, "keypoints")
    spec = _RenderSpec(
        seed, capture, cameras, frames, width, height, tsize, quality,
        "uv_texture" in chosen, "image" in chosen, "segmentation" in chosen,
    )  # fmt: skip
    need_frames = spec.texture or spec.image or spec.segmentation
    per_frame = [(i, frozenset(c for c in cal.camera_ids if fids[i] in image_drop[c])) for i in range(n)]
    rendered = _ordered(pool, _render_frames, ((spec, [f]) for f in per_frame), window)
    vsum = vsq = None
    tsum = None
    tsq = 0
    with zips:
        for i, fid in enumerate(fids):
            fo = next(rendered)[0] if need_frames else _FrameOut()
            if "head_pose" in chosen and i not in frame_drop["head_pose"]:
                zips.add(cap.HEAD_POSE_KEY, cap.head_pose_member(fid), write_head_pose(scene.head_pose[i]))
            if chosen & {"vertices", "keypoints_3d"}:
                v = frame_vertices(scene, i)
                v64 = v.astype(np.float64)
                vsum = v64 if vsum is None else vsum + v64
                vsq = v64**2 if vsq is None else vsq + v64**2
                if "vertices" in chosen and i not in frame_drop["vertices"]:
                    zips.add(cap.VERTICES_KEY, cap.vertices_member(fid), write_ply(v, binary=True))
                if "keypoints_3d" in chosen:
                    present = np.flatnonzero(krng.random(NUM_KEYPOINTS) > krng.uniform(0.0, 0.15))
                    head = v64[kv[present]] + krng.normal(0, 0.5, (present.size, 3))
                    pose = scene.head_pose[i].astype(np.float64)
                    world = head @ pose[:, :3].T + pose[:, 3]
                    rows = np.column_stack(
                        [
                            present,
                            world,
                            krng.uniform(0.5, 6.0, present.size),
                            krng.integers(2, 21, present.size),
                        ]
                    )
                    if i not in frame_drop["keypoints_3d"]:
                        zips.add(cap.KEYPOINTS_KEY, cap.keypoints_member(fid), write_keypoints(rows))
            if fo.pixels is not None:
                t64 = fo.pixels.astype(np.int64)  # exact integer sums: the mean is order-independent
                tsum = t64 if tsum is None else tsum + t64
                tsq += int(np.sum(t64 * t64))
                if i not in frame_drop["uv_texture"]:
                    zips.add(cap.TEXTURE_KEY, cap.texture_member(fid), fo.texture)
            for cid, (img, lab) in zip(cal.camera_ids, fo.views):
                if img is not None:
                    zips.add(cap.image_key(cid), cap.image_member(cid, fid), img)
                if lab is not None:
                    zips.add(cap.segmentation_key(cid), cap.segmentation_member(cid, fid), lab)
        if "encoder_image" in chosen:
            expr_e = scene.expr[np.minimum(np.arange(len(efl)), n - 1)]
            erngs = {name: _rng(seed, capture.folder, "encoder", name) for name in ENCODER_CAMERAS}
            for i, fid in enumerate(efl.frame_ids.tolist()):
                for name in ENCODER_CAMERAS:
                    gray = _encoder_frame(erngs[name], name, esize, expr_e[i])
                    zips.add(
                        cap.encoder_image_key(name),
                        cap.encoder_image_member(fid),
                        encode_avif(gray, quality, speed=AVIF_SPEED),
                    )
        # archives that must exist even if every entry was dropped
        for key in _per_frame_keys(chosen, cal.camera_ids):
            zips.ensure(key)
    for key in zips.keys:
        written.append(key)
        total += (root / key).stat().st_size

    if "vertices" in chosen:
        mean = vsum / n
        put(cap.VERTICES_MEAN_KEY, write_npy(mean.astype(np.float32)))
        put(cap.VERTICES_VARIANCE_KEY, write_scalar_txt(float(np.mean(vsq / n - mean**2))))
    if "uv_texture" in chosen:
        mean_tex = tsum / n
        var = tsq / (n * mean_tex.size) - float(np.mean(mean_tex**2))
        put(cap.TEXTURE_MEAN_KEY, encode_png(np.clip(np.round(mean_tex), 0, 255).astype(np.uint8)))
        put(cap.TEXTURE_VARIANCE_KEY, write_scalar_txt(max(var, 0.0)))

    log.info("synthetic capture %s: %d files, %.1f MB", capture.folder, len(written), total / 1e6)
    return {
        "capture": capture.folder,
        "path": str(root),
        "camera_ids": list(cal.camera_ids),
        "frame_ids": fids,
        "segments": fl.segments.tolist(),
        "encoder_frame_ids": efl.frame_ids.tolist(),
        "dropped": dropped,
        "files": written,
        "bytes": total,
    }


def parse_size_dims(size: str, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """Image (W, H) for a release size, or the override (validated)."""
    rel = cap.parse_size(size)
    if image_size is None:
        return rel.width, rel.height
    w, h = (int(x) for x in image_size)
    if w < 4 or h < 4:
        raise ValueError(f"image size must be at least 4 x 4, got {w} x {h}")
    return w, h


def generate_bucket(
    out: Path,
    *,
    size: str = "4TB",
    captures: int = 2,
    cameras: int = 8,
    frames: int = 40,
    seed: int = 0,
    prefix: str = "ava-256",
    capture_ids: Sequence[CaptureId] | None = None,
    image_size: tuple[int, int] | None = None,
    texture_size: int | None = None,
    workers: int = 1,
    drop_rate: float = 0.001,
    assets: Sequence[str] | str = ASSETS,
) -> list[CaptureId]:
    """Write a bucket-shaped tree ``out/{prefix}/{size}/{capture.folder}/...`` of synthetic captures.

    Capture ids default to the first ``captures`` of the release's list. ``workers`` > 1 renders frames of
    all captures in that many processes (the files do not depend on it). Returns the capture ids written."""
    rel = cap.parse_size(size)
    ids = list(capture_ids) if capture_ids is not None else list(cap.release_capture_ids()[:captures])
    if not ids:
        raise ValueError("no captures to generate")
    root = Path(out) / prefix / rel.name if prefix else Path(out) / rel.name
    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        dict(
            capture_root=root,
            capture=c,
            size=rel.name,
            cameras=cameras,
            frames=frames,
            seed=seed,
            assets=assets,
            image_size=image_size,
            texture_size=texture_size,
            drop_rate=drop_rate,
        )
        for c in ids
    ]
    if workers <= 1:
        for j in jobs:
            generate_capture(**j)
        return ids
    # frames of every capture share one process pool; one writer thread per capture keeps it busy
    with ProcessPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(len(jobs)) as writers:
        window = max(4, 2 * workers // len(jobs))
        for fut in [writers.submit(generate_capture, **j, pool=pool, window=window) for j in jobs]:
            fut.result()
    return ids


def sample_frames(
    *,
    seed: int = 0,
    size: str = "4TB",
    image_size: tuple[int, int] | None = None,
    texture_size: int = 1024,
    views: int = 4,
    capture: CaptureId | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render ``views`` camera images ((H, W, 3) uint8, different cameras and frames) and as many uv
    textures ((T, T, 3) uint8) exactly as :func:`generate_capture` would, without encoding or writing them.
    Used by ``benchmarks/synth.py`` to compare with the release's sample files."""
    width, height = parse_size_dims(size, image_size)
    cid = capture or cap.release_capture_ids()[0]
    cameras = max(views, 2)
    frames = max(views * 5, 10)
    scene = _scene(seed, cid, cameras, frames)
    base = _identity_texture(seed, cid, scene, texture_size)
    trng = _rng(seed, cid.folder, "frame-textures")
    pixels = _pixel_grid(width, height)
    images, textures = [], []
    for k in range(views):
        i = (k * 5 + 2) % frames
        tex = frame_texture(base, scene.expr[i], trng)
        cid_cam = scene.calibration.camera_ids[k % cameras]
        camera = _Camera(scene.calibration, k % cameras, pixels)
        bg = _background(seed, cid, cid_cam, width, height)
        rgb, _ = render_view(
            camera, scene.head_pose[i], tex, scene.expr[i], scene, bg, _rng(seed, "sample", k)
        )
        images.append(rgb)
        textures.append(tex)
    return images, textures
