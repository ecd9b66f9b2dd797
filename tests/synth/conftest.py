"""A tiny synthetic bucket built once per session (2 captures x 4 cameras x 12 frames, 64 x 96 images)."""

from __future__ import annotations

import pytest

from ava256.capture import parse_size, release_capture_ids
from ava256.synth.generate import generate_bucket

CAMERAS, FRAMES, IMAGE_SIZE, TEXTURE_SIZE = 4, 12, (64, 96), 64


@pytest.fixture(scope="session")
def tiny_bucket(tmp_path_factory):
    """(bucket root, size root, capture ids) of a drop-free tiny bucket."""
    out = tmp_path_factory.mktemp("synth-bucket")
    ids = generate_bucket(
        out,
        captures=2,
        cameras=CAMERAS,
        frames=FRAMES,
        seed=3,
        image_size=IMAGE_SIZE,
        texture_size=TEXTURE_SIZE,
        drop_rate=0.0,
    )
    assert ids == list(release_capture_ids()[:2])
    return out, out / "ava-256" / parse_size("4TB").name, ids
