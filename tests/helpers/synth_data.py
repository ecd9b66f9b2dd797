"""Builders of the synthetic data the suites share: a format-exact bucket (``ava256.synth.generate``) and
its repacked, split store. ``tests/conftest.py`` builds them once per session; suites that need other data
call the builders with their own parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ava256.capture import CaptureId, parse_size

# The shared drop-free bucket: 2 captures x 4 cameras x 12 frames, 64 x 96 (W x H) images, 64 x 64 textures.
CAPTURES, CAMERAS, FRAMES, IMAGE_SIZE, TEXTURE_SIZE, SEED = 2, 4, 12, (64, 96), 64, 3
DOWNSAMPLE = 2  # of the shared store: 32 x 48 images
SPLIT = "free-face"
# The shared small bucket: 2 captures x 3 cameras x 12 frames, 48 x 64 (W x H) images, 32 x 32 textures, drop-free,
# only the four assets a training sample reads (its store, downsample 2: 24 x 32 images).
SMALL = dict(captures=2, cameras=3, frames=12, image_size=(48, 64), texture_size=32, seed=3,
             assets=("image", "vertices", "uv_texture", "head_pose"))  # fmt: skip


@dataclass(frozen=True)
class SynthBucket:
    root: Path  # bucket root: root/ava-256/4TB/<capture folder>/...
    raw: Path  # its size root, a raw tree (capture folders directly under it)
    captures: list[CaptureId]


@dataclass(frozen=True)
class SynthStore:
    raw: Path  # the raw tree it was repacked from
    store: Path  # repacked store root, with the ``split`` written
    split: str
    captures: list[str]  # capture folders
    downsample: int


def build_bucket(out: Path, *, captures: int = CAPTURES, cameras: int = CAMERAS, frames: int = FRAMES,
                 image_size: tuple[int, int] = IMAGE_SIZE, texture_size: int = TEXTURE_SIZE, seed: int = SEED,
                 drop_rate: float = 0.0, assets: tuple[str, ...] | None = None) -> SynthBucket:  # fmt: skip
    """A synthetic bucket under ``out`` (defaults: the shared one; ``assets`` None: every asset)."""
    from ava256.synth.generate import generate_bucket

    kw = {} if assets is None else {"assets": list(assets)}
    ids = generate_bucket(out, captures=captures, cameras=cameras, frames=frames, seed=seed,
                          image_size=image_size, texture_size=texture_size, drop_rate=drop_rate, **kw)  # fmt: skip
    return SynthBucket(out, out / "ava-256" / parse_size("4TB").name, ids)


def build_store(
    bucket: SynthBucket, store: Path, downsample: int = DOWNSAMPLE, split: str = SPLIT
) -> SynthStore:
    """``repack`` (real Dask in-process, real Zarr) of ``bucket``'s raw tree into ``store``, then ``split``."""
    from ava256.pipeline.repack import repack
    from ava256.pipeline.split import run_split

    repack(bucket.raw, store, downsample=downsample, workers=1, processes=False, progress=False)
    run_split(store, split)
    return SynthStore(bucket.raw, store, split, [c.folder for c in bucket.captures], downsample)
