"""Small helpers shared by the text readers."""

from __future__ import annotations


def to_text(data: bytes | str, what: str) -> str:
    """Decode ``data`` as UTF-8 (a leading BOM is dropped); ValueError naming ``what`` if it is not text."""
    if isinstance(data, str):
        return data.lstrip("\ufeff")
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not UTF-8 text ({exc})") from exc
