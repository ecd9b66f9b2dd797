"""Fixtures for the format readers: the real reference files of the public release (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference assets not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def ref_bytes(reference):
    def read(name: str) -> bytes:
        p = reference / name
        if not p.exists():
            pytest.skip(f"reference file {name} not found")
        return p.read_bytes()

    return read
