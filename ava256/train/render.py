"""Render a trained checkpoint: reconstructions and cross-identity expression transfer, as PNGs + a GIF each."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ava256.atomic import atomic_write
from ava256.train.checkpoint import latest_checkpoint, load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class RenderResult:
    """Files written (paths) and figures: ``psnr`` of the reconstructions (dB, mean over frames)."""

    files: list[Path] = field(default_factory=list)
    frames: int = 0
    identities: list[str] = field(default_factory=list)
    psnr: float = float("nan")


def _to_u8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float 0..255 -> (H, W, 3) uint8."""
    return img.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _write_png(path: Path, arr: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_write(path, fsync=False) as f:
        iio.imwrite(f, arr, extension=".png")


def _write_animation(path: Path, frames: list[np.ndarray], fps: float) -> list[Path]:
    """A looping GIF (always) and an MP4 beside it when imageio has an ffmpeg backend."""
    import imageio.v3 as iio

    with atomic_write(path, fsync=False) as f:
        iio.imwrite(f, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    out = [path]
    mp4 = path.with_suffix(".mp4")
    try:
        h, w = frames[0].shape[:2]
        even = [f[: h - h % 2, : w - w % 2] for f in frames]
        iio.imwrite(mp4, np.stack(even), extension=".mp4", fps=fps)
        out.append(mp4)
    except Exception as e:  # noqa: BLE001 - optional output; GIF already written
        mp4.unlink(missing_ok=True)
        log.info("no MP4 written (%s); the GIF has the same frames", e)
    return out


def _upscale(arr: np.ndarray, min_height: int = 128) -> np.ndarray:
    k = max(1, -(-min_height // arr.shape[0]))
    return arr.repeat(k, 0).repeat(k, 1) if k > 1 else arr


def render(
    checkpoint: str | os.PathLike[str],
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str | None = None,
    part: str = "val",
    frames: int = 24,
    camera: str | None = None,
    identities: int = 3,
    fps: float = 8.0,
    device: str | None = None,
) -> RenderResult:
    """Reconstructions and expression transfer from a checkpoint.

    Args:
        checkpoint: a checkpoint file or a run folder (its newest ``checkpoints/ckpt_*.pt``).
        store: the Zarr store; split: split name (default: the one the run trained on); part: split part.
        frames: frames of the driver capture to render (in frame order, one camera).
        camera: camera id to render from (default: the camera closest to frontal in the first sample).
        identities: other identities to transfer the driver's expression onto.
    Writes to ``out``: ``recon_NNN.png`` ([ground truth | reconstruction]), ``recon.gif``;
    ``transfer_NNN.png`` ([driver | driver reconstruction | identity 1 | ...]), ``transfer.gif``; an MP4
    beside each GIF when an ffmpeg backend is installed; ``render.json`` (files and figures).
    """
    from ava256.data import collate_samples
    from ava256.models import psnr
    from ava256.train.data import open_datasets
    from ava256.train.trainer import build_model, prepare_batch

    ckpt_path = Path(checkpoint)
    if ckpt_path.is_dir():
        run_ckpts = ckpt_path / "checkpoints"
        ckpt_path = latest_checkpoint(run_ckpts if run_ckpts.is_dir() else ckpt_path)
    if ckpt_path is None or not ckpt_path.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    state = load_checkpoint(ckpt_path)
    cfg, info_d = state["config"], state["info"]
    split = split or state.get("split")
    if not split:
        raise ValueError(f"{ckpt_path} does not name its split; pass --split")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ds, _, info = open_datasets(store, split, cfg["data"], info=info_d, parts=(part,))
    model = build_model(cfg["model"], info)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = RenderResult()

    keys = list(ds.keys())  # (capture, frame_index, camera_index), sorted
    driver = keys[0][0]
    cams = sorted({k[2] for k in keys if k[0] == driver})
    if camera is not None:
        cam_ids = dict(enumerate(ds.camera_ids(driver)))
        wanted = [i for i, c in cam_ids.items() if c == str(camera)]
        if not wanted or wanted[0] not in cams:
            raise ValueError(f"camera {camera} has no samples of {driver} in {split}/{part}")
        cam = wanted[0]
    else:  # the camera looking most directly at the face (+z of the head frame)
        first = {k[2]: i for i, k in reversed(list(enumerate(keys))) if k[0] == driver}
        cam = max(cams, key=lambda c: float(torch.nn.functional.normalize(ds[first[c]]["campos"], dim=0)[2]))
    driver_idx = [i for i, k in enumerate(keys) if k[0] == driver and k[2] == cam][:frames]
    others = []
    for cap in dict.fromkeys(k[0] for k in keys):
        if cap != driver and len(others) < identities:
            same_cam = [i for i, k in enumerate(keys) if k[0] == cap and k[2] == cam]
            others.append((cap, (same_cam or [i for i, k in enumerate(keys) if k[0] == cap])[0]))
    res.identities = [driver] + [c for c, _ in others]

    recon_frames, transfer_frames, scores = [], [], []
    with torch.no_grad():
        targets = [prepare_batch(collate_samples([ds[i]]), dev, ds) for _, i in others]
        target_bias = [model.encode_identity(t["neut_verts"], t["neut_tex"]) for t in targets]
        for n, i in enumerate(driver_idx):
            b = prepare_batch(collate_samples([ds[i]]), dev, ds)
            o = model(b, sample=False)
            scores.append(float(psnr(o["image"], b["image"])[0]))
            gt, rec = _to_u8(b["image"][0]), _to_u8(o["image"][0])
            pair = _upscale(np.concatenate([gt, rec], 1))
            p = out / f"recon_{n:03d}.png"
            _write_png(p, pair)
            res.files.append(p)
            recon_frames.append(pair)
            row = [gt, rec]
            for t, bias in zip(targets, target_bias):
                prims = model.decode(o["code"], bias, t["neut_verts"], t["campos"])
                img, _ = model.render(
                    prims,
                    t["camrot"],
                    t["campos"],
                    t["focal"],
                    t["princpt"],
                    t["pixelcoords"],
                    t["camindex"],
                    t["idindex"],
                )
                row.append(_to_u8(img[0]))
            strip = _upscale(np.concatenate(row, 1))
            p = out / f"transfer_{n:03d}.png"
            _write_png(p, strip)
            res.files.append(p)
            transfer_frames.append(strip)
    res.files += _write_animation(out / "recon.gif", recon_frames, fps)
    res.files += _write_animation(out / "transfer.gif", transfer_frames, fps)
    res.frames = len(driver_idx)
    res.psnr = float(np.mean(scores)) if scores else float("nan")
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "iteration": int(state["iteration"]),
        "split": split,
        "part": part,
        "driver": driver,
        "camera_index": int(cam),
        "identities": res.identities,
        "frames": res.frames,
        "recon_psnr_db": res.psnr,
        "files": [p.name for p in res.files],
    }
    (out / "render.json").write_text(json.dumps(summary, indent=2))
    res.files.append(out / "render.json")
    return res
