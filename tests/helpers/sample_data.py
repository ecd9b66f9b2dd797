"""Contract-shaped in-memory samples (the loader -> model dict of docs/pipeline.md) for the model and train
tests: no store, no decoding, smooth identity-dependent images."""

from __future__ import annotations

import math

import numpy as np
import torch

from ava256.models.uvmap import load_topology
from ava256.train.data import DataInfo


def look_at(campos: np.ndarray) -> np.ndarray:
    """head->camera rotation (rows: camera x, y, z axes) of a camera at ``campos`` looking at the origin."""
    f = -campos / np.linalg.norm(campos)
    down = np.array([0.0, 1.0, 0.0])
    x = np.cross(down, f)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(f, x), f])


def fake_samples(n_ids: int = 2, n_cams: int = 3, frames: int = 4, hw=(32, 24), tex: int = 32, seed: int = 0):
    """Sample dicts of the loader -> model contract (docs/pipeline.md) with smooth, identity-dependent images."""
    rng = np.random.default_rng(seed)
    topo = load_topology()
    v = topo.vertices.shape[0]
    h, w = hw
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    samples = []
    for i in range(n_ids):
        neut_v = rng.normal(0, 0.1, (v, 3)).astype(np.float32)
        neut_t = rng.normal(0, 0.5, (3, tex, tex)).astype(np.float32)
        for c in range(n_cams):
            ang = (c - (n_cams - 1) / 2) * 0.4
            campos = np.array([math.sin(ang) * 700, 0.0, math.cos(ang) * 700])
            for f in range(frames):
                img = (
                    100 + 60 * np.sin(xx / 5 + i + 0.3 * f)[None] * np.array([1.0, 0.5, -0.5])[:, None, None]
                )
                img = img + 40 * np.cos(yy / 7 + c)[None]
                samples.append(
                    {
                        "image": torch.tensor(np.clip(img, 0, 255), dtype=torch.float32),
                        "camrot": torch.tensor(look_at(campos), dtype=torch.float32),
                        "campos": torch.tensor(campos, dtype=torch.float32),
                        "focal": torch.tensor([70.0, 70.0]),
                        "princpt": torch.tensor([w / 2, h / 2]),
                        "verts": torch.tensor(neut_v + rng.normal(0, 0.05, (v, 3)).astype(np.float32)),
                        "tex": torch.tensor(neut_t + rng.normal(0, 0.1, (3, tex, tex)).astype(np.float32)),
                        "neut_verts": torch.tensor(neut_v),
                        "neut_tex": torch.tensor(neut_t),
                        "idindex": torch.tensor(i, dtype=torch.int64),
                        "camindex": torch.tensor(c, dtype=torch.int64),
                        "pixelcoords": torch.tensor(np.stack([xx, yy], -1)),
                        "valid": torch.tensor(True),
                        "capture": f"cap{i}",
                        "frame_index": f,
                    }
                )
    info = DataInfo(
        topo, topo.vertices.astype(np.float32), 5.0, n_cams, n_ids, [f"cap{i}" for i in range(n_ids)]
    )
    return samples, info
