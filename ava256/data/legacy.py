"""The seed's per-sample loading approach over the RAW tree — the benchmark baseline, never used to train.

A faithful re-implementation of the reference ``SingleCaptureDataset`` (ava-256 ``data/ava_dataset.py``):
per capture, once, it parses the calibration into camera positions/rotations, reads the normalisation
statistics and loads the neutral mesh and texture; then **per sample** it opens the camera's image zip
(re-reading its central directory), decodes the AVIF, resizes it, opens the mesh zip and parses the PLY,
opens the texture zip and decodes the texture AVIF, opens the head pose zip and parses the text, builds the
pixel coordinate grid, and normalises with numpy. On a decoding error it logs and returns None, which
:func:`ava256.data.loader.collate_samples` drops (as the seed's ``none_collate_fn`` did).

Deliberate differences from the seed, so that the equivalence test compares like with like (none changes
its cost materially): the image is resized with the repack's filter and size (``ava256.store.resample``:
Pillow BOX to ``floor(size / downsample)``; the seed used Pillow's default bicubic to ``sensor / k``),
focal length and principal point use the store's pixel-centre convention
(``ava256.store.layout.sensor_to_image_intrinsics``; the seed divided K by k), the neutral frame is chosen by
frame order (the seed sorted frame ids as strings), cross-capture statistics use
:func:`ava256.data.normalization.combine_stats`, and the dict has the keys of the contract.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ava256 import capture as cat
from ava256.data.dataset import choose_neutral_frame
from ava256.data.normalization import CaptureStats, NormStats, combine_stats
from ava256.formats.calibration import read_calibration
from ava256.formats.frame_list import read_frame_list
from ava256.formats.head_pose import read_head_pose
from ava256.formats.images import decode_rgb
from ava256.formats.ply import read_ply
from ava256.formats.scalars import read_npy, read_scalar_txt
from ava256.formats.zips import ZipReader
from ava256.store.layout import downsampled_size, sensor_to_image_intrinsics
from ava256.store.resample import resize_rgb

log = logging.getLogger(__name__)


def capture_dir(raw: str | os.PathLike[str], capture: str) -> Path:
    """The folder of ``capture`` under a raw tree root (either folder spelling)."""
    cid = cat.CaptureId.parse(capture)
    for name in cid.folder_names:
        p = Path(raw) / name
        if p.is_dir():
            return p
    raise FileNotFoundError(
        f"capture {capture}: no folder {cid.folder} (or {cid.datasheet_folder}) under {raw}"
    )


class _LegacyCapture:
    """What the seed's ``SingleCaptureDataset.__init__`` prepared for one capture."""

    def __init__(self, root: Path, name: str, stats: NormStats | None) -> None:
        self.root, self.name = root, name
        cal = read_calibration((root / cat.CALIBRATION_KEY).read_bytes())
        self.camera_ids = list(cal.camera_ids)
        self.K = {c: cal.intrinsics[i] for i, c in enumerate(cal.camera_ids)}
        self.campos = {
            c: (-cal.extrinsics[i, :, :3].T @ cal.extrinsics[i, :, 3]).astype(np.float32)
            for i, c in enumerate(cal.camera_ids)
        }
        self.camrot = {c: cal.extrinsics[i, :, :3].astype(np.float32) for i, c in enumerate(cal.camera_ids)}
        self.frames = read_frame_list((root / cat.FRAME_LIST_KEY).read_bytes())
        self.own_stats = CaptureStats(
            name,
            decode_rgb((root / cat.TEXTURE_MEAN_KEY).read_bytes()).astype(np.float32),
            read_scalar_txt((root / cat.TEXTURE_VARIANCE_KEY).read_bytes()),
            np.asarray(read_npy((root / cat.VERTICES_MEAN_KEY).read_bytes()), dtype=np.float32).reshape(
                -1, 3
            ),
            read_scalar_txt((root / cat.VERTICES_VARIANCE_KEY).read_bytes()),
        )
        # Neutral conditioning: a frame whose mesh and texture exist (checked by listing the zips).
        with ZipReader(root / cat.VERTICES_KEY) as zv, ZipReader(root / cat.TEXTURE_KEY) as zt:
            ok = np.array(
                [
                    zv.has(cat.vertices_member(int(f))) and zt.has(cat.texture_member(int(f)))
                    for f in self.frames.frame_ids
                ]
            )
            nf = choose_neutral_frame(self.frames.segments, ok, name)
            fid = int(self.frames.frame_ids[nf])
            self.neut_vert = read_ply(zv.read(cat.vertices_member(fid)))
            self.neut_tex = decode_rgb(zt.read(cat.texture_member(fid))).transpose(2, 0, 1).astype(np.float32)
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: NormStats) -> None:
        self.texmean = stats.tex_mean.numpy()
        self.texstd = stats.tex_std
        self.vertmean = stats.vert_mean.numpy()
        self.vertstd = stats.vert_std


class LegacySampleDataset(Dataset):
    """Samples of a split table read the seed's way from the raw tree ``raw`` (capture folders directly
    under it). ``downsample`` divides the raw image size (as ``ava256 repack --downsample``). Same dict as
    :class:`ava256.data.ZarrSampleDataset`; ``captures``/``camera_ids``/``stats`` as there."""

    def __init__(
        self,
        raw: str | os.PathLike[str],
        split_df: pd.DataFrame,
        *,
        downsample: int = 1,
        stats: NormStats | None = None,
        captures: Sequence[str] | None = None,
        camera_ids: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.raw, self.downsample = Path(raw), int(downsample)
        df = split_df.loc[
            split_df["valid"].astype(bool), ["capture", "frame_index", "camera_index", "camera_id"]
        ].copy()
        df["capture"], df["camera_id"] = df["capture"].astype(str), df["camera_id"].astype(str)
        df = df.sort_values(["capture", "frame_index", "camera_index"], kind="stable").reset_index(drop=True)
        present = sorted(df["capture"].unique())
        self.captures = list(captures) if captures is not None else present
        self.camera_ids = list(camera_ids) if camera_ids is not None else sorted(df["camera_id"].unique())
        self._caps = {c: _LegacyCapture(capture_dir(raw, c), c, None) for c in present}
        self.stats = stats if stats is not None else combine_stats(c.own_stats for c in self._caps.values())
        for c in self._caps.values():
            c.set_stats(self.stats)
        cap_code = {c: i for i, c in enumerate(self.captures)}
        cam_code = {c: i for i, c in enumerate(self.camera_ids)}
        self._rows = list(
            zip(
                df["capture"],
                df["frame_index"].astype(int),
                df["camera_id"],
                df["capture"].map(cap_code).astype(int),
                df["camera_id"].map(cam_code).astype(int),
            )
        )

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        cap_name, frame_index, camera_id, idindex, camindex = self._rows[index]
        cap = self._caps[cap_name]
        frame_id = int(cap.frames.frame_ids[frame_index])
        try:
            # Camera image: open the camera's zip, decode, resize.
            with ZipReader(cap.root / cat.image_key(camera_id)) as z:
                img = decode_rgb(z.read(cat.image_member(camera_id, frame_id)))
            out_hw = downsampled_size(img.shape[:2], self.downsample)
            img = resize_rgb(img, out_hw)
            img = img.transpose(2, 0, 1).astype(np.float32)
            # Mesh
            with ZipReader(cap.root / cat.VERTICES_KEY) as z:
                verts = read_ply(z.read(cat.vertices_member(frame_id)))
            # Average texture
            with ZipReader(cap.root / cat.TEXTURE_KEY) as z:
                avgtex = decode_rgb(z.read(cat.texture_member(frame_id)))
            avgtex = avgtex.transpose(2, 0, 1).astype(np.float32)
            # Head pose (head -> world)
            with ZipReader(cap.root / cat.HEAD_POSE_KEY) as z:
                headpose = read_head_pose(z.read(cat.head_pose_member(frame_id)))
        except Exception as exc:  # noqa: BLE001 - the seed logs and skips the sample
            log.error("legacy loader: %s frame %d camera %s: %s", cap_name, frame_id, camera_id, exc)
            return None
        K = sensor_to_image_intrinsics(cap.K[camera_id], out_hw)
        px, py = np.meshgrid(np.arange(out_hw[1], dtype=np.float32), np.arange(out_hw[0], dtype=np.float32))
        pixelcoords = np.stack((px, py), axis=-1)
        out = {
            "image": img,
            "camrot": np.dot(headpose[:3, :3].T, cap.camrot[camera_id].T).T,
            "campos": np.dot(headpose[:3, :3].T, cap.campos[camera_id] - headpose[:3, 3]),
            "focal": np.array([K[0, 0], K[1, 1]], dtype=np.float32),
            "princpt": np.array([K[0, 2], K[1, 2]], dtype=np.float32),
            "verts": (verts - cap.vertmean) / cap.vertstd,
            "tex": (avgtex - cap.texmean) / cap.texstd,
            "neut_verts": (cap.neut_vert - cap.vertmean) / cap.vertstd,
            "neut_tex": (cap.neut_tex - cap.texmean) / cap.texstd,
            "idindex": idindex,
            "camindex": camindex,
            "pixelcoords": pixelcoords,
            "valid": True,
            "capture": cap_name,
            "frame_index": frame_index,
        }
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        out["idindex"] = torch.tensor(idindex, dtype=torch.int64)
        out["camindex"] = torch.tensor(camindex, dtype=torch.int64)
        out["valid"] = torch.tensor(True)
        return out
