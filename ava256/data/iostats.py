"""Read accounting for loaders: a Zarr store wrapper that counts requests and bytes, and the process's
``/proc/self/io`` read counter (Linux). Used by ``benchmarks/loader.py`` and the tests that check a sample
touches only the chunks it needs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest
from zarr.storage import LocalStore, WrapperStore


class CountingStore(WrapperStore[Any]):
    """Wraps a zarr Store; counts every ``get`` / ``get_partial_values`` of this process: ``requests``,
    ``bytes`` (returned payload) and ``keys`` (a Counter of store keys). ``reset()`` zeroes them."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.reset()

    @classmethod
    def local(cls, root: str | os.PathLike[str]) -> CountingStore:
        """A counting wrapper around a read-only LocalStore at ``root``."""
        return cls(LocalStore(os.fspath(root), read_only=True))

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.keys: Counter[str] = Counter()

    def _count(self, key: str, buf: Buffer | None) -> None:
        self.requests += 1
        self.keys[key] += 1
        if buf is not None:
            self.bytes += len(buf)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        self._count(key, buf)
        return buf

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        out = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, out):
            self._count(key, buf)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": self._store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store = state["_store"]
        self.reset()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingStore) and self._store == other._store

    def __repr__(self) -> str:
        return f"CountingStore({self._store!r})"


def process_read_bytes() -> int | None:
    """Bytes this process has read through read()-like system calls so far (``rchar`` of
    ``/proc/self/io``, page cache hits included), or None where unavailable."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
