"""Read members of the release's (uncompressed) zip archives without extracting; write stored zips.

Member names are untrusted: names that fail :func:`ava256.capture.safe_relpath` (``..``, absolute paths,
backslashes, ...) are listed in :attr:`ZipReader.unsafe` and can never be read.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from typing import BinaryIO

from ava256.atomic import atomic_write
from ava256.capture import UnsafePathError, safe_relpath

#: Largest member :meth:`ZipReader.read` inflates unless told otherwise (repack uses the per-asset caps of
#: :data:`ava256.capture.FRAME_ARCHIVES`).
DEFAULT_MAX_MEMBER_BYTES = 256 * 2**20


class MemberTooLarge(ValueError):
    """A member declares, or inflates to, more bytes than the reader's cap (a zip bomb or a wrong file)."""


class ZipReader:
    """Context manager over a zip file (path or binary file object).

    ``names()`` lists the safe member names (directories excluded), ``has(name)``, ``read(name)`` streams
    only that member (KeyError if absent or unsafe; ``zipfile.BadZipFile`` naming the member on a CRC
    mismatch or truncation)."""

    def __init__(self, path_or_fileobj: str | os.PathLike | BinaryIO):
        self.source = str(path_or_fileobj) if isinstance(path_or_fileobj, (str, os.PathLike)) else "<zip>"
        try:
            self._zf = zipfile.ZipFile(path_or_fileobj, "r")
        except zipfile.BadZipFile as exc:
            raise zipfile.BadZipFile(f"{self.source}: not a readable zip ({exc})") from exc
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self.unsafe: list[str] = []
        for info in self._zf.infolist():
            if info.is_dir():
                continue
            try:
                ok = safe_relpath(info.filename) == info.filename
            except UnsafePathError:
                ok = False
            if ok:
                self._infos[info.filename] = info
            else:
                self.unsafe.append(info.filename)

    def __enter__(self) -> ZipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()

    def names(self) -> list[str]:
        """Safe member names in archive order."""
        return list(self._infos)

    def has(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> zipfile.ZipInfo:
        if name not in self._infos:
            raise KeyError(f"{self.source}: no member {name!r}")
        return self._infos[name]

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """Bytes of one member (only that member is read). ``max_bytes`` (default
        :data:`DEFAULT_MAX_MEMBER_BYTES`) bounds what is inflated: a member whose declared size
        (``ZipInfo.file_size``) exceeds it raises :class:`MemberTooLarge` before anything is read, and the
        read itself stops after ``max_bytes + 1`` bytes whatever the header says."""
        info = self.info(name)
        cap = DEFAULT_MAX_MEMBER_BYTES if max_bytes is None else int(max_bytes)
        if info.file_size > cap:
            raise MemberTooLarge(
                f"{self.source}: member {name!r} declares {info.file_size} bytes, over the cap of {cap} "
                "(not inflated)"
            )
        try:
            with self._zf.open(info) as f:
                data = f.read(cap + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise zipfile.BadZipFile(f"{self.source}: member {name!r} is corrupt ({exc})") from exc
        if len(data) > cap:
            raise MemberTooLarge(f"{self.source}: member {name!r} inflates past the cap of {cap} bytes")
        return data


def write_stored_zip(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> int:
    """Write ``(name, bytes)`` members to an uncompressed (STORED) zip atomically (temp file + os.replace).
    Returns the number of members. Names are validated with ``safe_relpath``."""
    n = 0
    with atomic_write(path, fsync=False) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zi = zipfile.ZipInfo(safe_relpath(name), date_time=(2023, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_STORED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
            n += 1
    return n
