"""Atomic checkpoints: model, optimizer, scheduler, sampler and RNG state, so a killed run resumes exactly."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ava256.atomic import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. The torch states must be CPU ByteTensors, whatever ``map_location`` the
    checkpoint was loaded with (a checkpoint loaded onto a GPU carries them as CUDA tensors)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_path(folder: Path, iteration: int) -> Path:
    return Path(folder) / f"ckpt_{iteration:08d}.pt"


def save_checkpoint(folder: Path, iteration: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``folder/ckpt_<iteration>.pt`` atomically (temp file, fsync, ``os.replace``) and delete all but
    the newest ``keep`` checkpoints. Returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, iteration)
    with atomic_write(path) as f:
        torch.save(payload, f)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint; a truncated or foreign file raises ValueError naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e


def latest_checkpoint(folder: Path) -> Path | None:
    """Newest checkpoint in ``folder`` (or a checkpoint file given directly), None if there is none."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    found = list_checkpoints(folder)
    return found[-1] if found else None
