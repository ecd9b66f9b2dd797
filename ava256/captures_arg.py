"""The ``--captures`` option shared by ``ava256 fetch`` and ``ava256 repack``: one parser, one behaviour.

Pure: no Dask, no pyarrow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ava256.capture import CaptureId, read_capture_ids_csv

CapturesArg = str | os.PathLike[str] | Sequence[str | CaptureId] | None


def parse_captures(value: CapturesArg) -> list[CaptureId] | None:
    """``--captures``: a CSV file of ids (columns mcd, sid, mct, like the release's ``256_ids.csv``), a comma
    list of folder names (either spelling), or a sequence of CaptureId/str. None, "" or an empty sequence stay
    None (= every capture). Duplicates are dropped, order kept.

    Raises FileNotFoundError for a ``*.csv`` that does not exist, ValueError for a bad id or a value (or file)
    that lists no capture."""
    if value is None or (not isinstance(value, os.PathLike) and len(value) == 0):
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if os.path.isfile(text):
            with open(text, newline="") as f:
                ids = read_capture_ids_csv(f)
            if not ids:
                raise ValueError(f"--captures {text}: the file lists no captures")
            return list(dict.fromkeys(ids))
        if text.lower().endswith(".csv"):
            raise FileNotFoundError(f"--captures {text}: no such file")
        items: Sequence[str | CaptureId] = [t for t in text.split(",") if t.strip()]
    else:
        items = value
    out = [c if isinstance(c, CaptureId) else CaptureId.parse(str(c)) for c in items]
    if not out:
        raise ValueError(f"--captures {value!r} lists no captures")
    return list(dict.fromkeys(out))


def capture_folders(value: CapturesArg) -> list[str] | None:
    """:func:`parse_captures` as canonical folder names (``mcd--mct--sid``), or None for all."""
    ids = parse_captures(value)
    return None if ids is None else [c.folder for c in ids]


__all__ = ["CapturesArg", "capture_folders", "parse_captures"]
