"""A seeded, DDP-aware sampler that resumes exactly mid-epoch.

Epoch ``e`` visits a permutation of ``range(n)`` drawn from ``torch.Generator().manual_seed(seed * 1_000_003
+ e)`` (or ``range(n)`` without shuffling). With ``world`` ranks the permutation is padded by wrapping to a
multiple of ``world`` (or truncated, ``drop_last``) and rank ``r`` takes every ``world``-th index from ``r``,
so all ranks see the same number of samples and together visit every index (like DistributedSampler).

Consumption is explicit, because a DataLoader's workers prefetch indices long before the training loop sees
them: the trainer calls :meth:`ResumableSampler.advance` with the number of samples of each batch it has
*used* (on every rank) and :meth:`~ResumableSampler.next_epoch` at the end of an epoch. ``state_dict()`` is
``{"epoch", "position", ...}`` where ``position`` counts the epoch's indices consumed *across all ranks*; a
sampler loaded from it yields exactly the indices not yet consumed, even with a different number of ranks.
Iterating never changes the state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed group, or (0, 1) when not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[int]):
    """Indices ``0..n-1`` of a dataset, seeded per epoch, split across ranks, resumable (module doc).

    ``rank``/``world`` default to torch.distributed's when it is initialised, else 0 / 1."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if n <= 0:
            raise ValueError("sampler over an empty dataset (no valid samples)")
        r, w = dist_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world = w if world is None else int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world}")
        self.n, self.seed, self.shuffle, self.drop_last = int(n), int(seed), bool(shuffle), bool(drop_last)
        if self.drop_last and self.n < self.world:
            raise ValueError(f"drop_last with {self.n} samples and {self.world} ranks leaves nothing")
        self.epoch = 0
        self._base = 0  # global position at which this run's iteration of the epoch starts
        self._consumed = 0  # per-rank samples consumed since _base

    # --- the epoch's order ---------------------------------------------------------------------------------
    def epoch_order(self, epoch: int | None = None) -> list[int]:
        """The (unpadded) global order of ``range(n)`` for ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
        return torch.randperm(self.n, generator=g).tolist()

    def _rank_indices(self) -> list[int]:
        order = self.epoch_order()
        rest = order[self._base :]
        if self.drop_last:
            rest = rest[: len(rest) - len(rest) % self.world]
        elif rest and len(rest) % self.world:
            pad = self.world - len(rest) % self.world
            rest = rest + (order * (pad // self.n + 1))[:pad]
        return rest[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        """Indices of this rank not yet consumed in the current epoch (does not change the state)."""
        return iter(self._rank_indices()[self._consumed :])

    def __len__(self) -> int:
        return max(0, len(self._rank_indices()) - self._consumed)

    # --- consumption -----------------------------------------------------------------------------------------
    def advance(self, k: int) -> None:
        """Record that this rank consumed ``k`` more samples (call on every rank, once per used batch)."""
        if k < 0:
            raise ValueError(f"cannot advance by {k}")
        self._consumed += int(k)

    def next_epoch(self) -> None:
        """Start the next epoch from its beginning."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Jump to the beginning of ``epoch`` (a no-op when already in it: keeps a resumed position)."""
        if int(epoch) != self.epoch:
            self.epoch, self._base, self._consumed = int(epoch), 0, 0

    @property
    def position(self) -> int:
        """Indices of the current epoch consumed across all ranks (may exceed n by the padding at the end)."""
        return self._base + self._consumed * self.world

    @property
    def epoch_done(self) -> bool:
        return len(self) == 0

    # --- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "n": self.n,
            "world": self.world,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (same dataset length and seed; any number of ranks)."""
        if int(state["n"]) != self.n:
            raise ValueError(
                f"sampler state covers {state['n']} samples but the dataset has {self.n}: not the same split"
            )
        if (
            int(state.get("seed", self.seed)) != self.seed
            or bool(state.get("shuffle", self.shuffle)) != self.shuffle
        ):
            raise ValueError(
                f"sampler state has seed={state.get('seed')} shuffle={state.get('shuffle')}, this sampler "
                f"seed={self.seed} shuffle={self.shuffle}: the order would differ"
            )
        self.epoch = int(state["epoch"])
        self._base = min(int(state["position"]), self.n)
        self._consumed = 0
