"""A deterministic, resumable, DDP-aware sampler of sample indices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffles ``n`` indices with a per-epoch seed, gives rank ``r`` of ``world`` every world-th index of
    each epoch (padded by wrapping so every rank sees the same number), and can resume mid-epoch.

    Iterating yields the rest of the current epoch from the current offset; call :meth:`advance` once per
    consumed index (the trainer does this per batch) and :meth:`next_epoch` at an epoch's end. The state
    (``epoch``, ``offset``) is what a checkpoint stores.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        if n <= 0:
            raise ValueError("sampler over an empty dataset")
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0
        self.offset = 0

    def per_rank(self) -> int:
        return -(-self.n // self.world)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank() * self.world
        order = (order * (total // self.n + 1))[:total]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.offset :])

    def __len__(self) -> int:
        return self.per_rank() - self.offset

    def advance(self, k: int) -> None:
        self.offset += k

    def next_epoch(self) -> None:
        self.epoch += 1
        self.offset = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "n": self.n,
            "world": self.world,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n", self.n) != self.n:
            raise ValueError(f"checkpoint sampler covers {state['n']} samples, the dataset has {self.n}")
        if state.get("world", self.world) != self.world:
            raise ValueError(
                f"checkpoint was written by {state['world']} ranks, now {self.world}: cannot resume exactly"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
