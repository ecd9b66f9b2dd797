"""Camera geometry of a training sample: the dome camera expressed in the head frame, pixel coordinates.

Conventions (all float32 on output, millimetres):

- ``head_pose`` (3, 4) ``[Rh | th]`` maps head coordinates to world: ``x_w = Rh @ x_h + th``.
- ``extrinsics`` (3, 4) ``[Rc | tc]`` maps world to camera: ``x_c = Rc @ x_w + tc``. The camera centre in the
  world is ``c_w = -Rc^T @ tc``.

Composing both, head -> camera is ``x_c = (Rc @ Rh) @ x_h + (Rc @ th + tc)``, so in the head frame

- ``camrot = Rc @ Rh`` (3, 3): rotates head-frame vectors into the camera frame (world -> camera rotation of a
  camera whose "world" is the head frame);
- ``campos = Rh^T @ (c_w - th)`` (3,): the camera centre in head coordinates.

This is the reference training code's ``camrot = (Rh^T @ Rc^T)^T`` and ``campos = Rh^T (campos_w - th)``.
"""

from __future__ import annotations

import numpy as np


def camera_in_head_frame(extrinsics: np.ndarray, head_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera rotation (3, 3) and position (3,) in the head frame, float32, from a world -> camera
    ``extrinsics`` (3, 4) and a head -> world ``head_pose`` (3, 4) (see module doc). Computed in float64."""
    E = np.asarray(extrinsics, dtype=np.float64)
    P = np.asarray(head_pose, dtype=np.float64)
    if E.shape != (3, 4) or P.shape != (3, 4):
        raise ValueError(f"need (3, 4) extrinsics and head pose, got {E.shape} and {P.shape}")
    Rc, tc = E[:, :3], E[:, 3]
    Rh, th = P[:, :3], P[:, 3]
    center_world = -Rc.T @ tc
    camrot = Rc @ Rh
    campos = Rh.T @ (center_world - th)
    return camrot.astype(np.float32), campos.astype(np.float32)


def focal_principal(intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``focal (2,) = (fx, fy)`` and ``princpt (2,) = (cx, cy)`` (float32 pixels) of a (3, 3) ``K``."""
    K = np.asarray(intrinsics, dtype=np.float64)
    return (
        np.array([K[0, 0], K[1, 1]], dtype=np.float32),
        np.array([K[0, 2], K[1, 2]], dtype=np.float32),
    )


def pixel_coords(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates: ``[..., 0] = x`` (column), ``[..., 1] = y`` (row)."""
    px, py = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return np.stack((px, py), axis=-1)
