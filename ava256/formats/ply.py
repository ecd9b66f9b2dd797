"""PLY meshes (``registration_vertices.zip`` members ``{frame:06d}.ply``): only vertex positions are read.

Binary (little and big endian) bodies are viewed with ``np.frombuffer`` through a structured dtype built from
the header; ASCII bodies are tokenised in one pass. No per-vertex Python loop.
"""

from __future__ import annotations

import io

import numpy as np

_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _parse_header(data: bytes) -> tuple[str, list[tuple[str, int, list[tuple[str, str]], bool]], int]:
    """Return (format, elements, body offset); elements are (name, count, [(prop, type)], has_list)."""
    if not data.startswith(b"ply"):
        raise ValueError("PLY: missing 'ply' magic")
    end = data.find(b"end_header")
    if end < 0:
        raise ValueError("PLY: no 'end_header' (truncated header)")
    nl = data.find(b"\n", end)
    if nl < 0:
        raise ValueError("PLY: truncated after 'end_header'")
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"PLY: header is not ASCII ({exc})") from exc
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]], bool]] = []
    for ln in lines[1:]:
        parts = ln.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if len(parts) < 2 or parts[1] not in _FORMATS:
                raise ValueError(f"PLY: unsupported format line {ln!r}")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise ValueError(f"PLY: bad element line {ln!r}")
            elements.append((parts[1], int(parts[2]), [], False))
        elif parts[0] == "property":
            if not elements:
                raise ValueError(f"PLY: property before any element: {ln!r}")
            name, count, props, has_list = elements[-1]
            if len(parts) >= 2 and parts[1] == "list":
                if len(parts) != 5:
                    raise ValueError(f"PLY: bad list property {ln!r}")
                elements[-1] = (name, count, props + [(parts[4], "list")], True)
            else:
                if len(parts) != 3 or parts[1] not in _TYPES:
                    raise ValueError(f"PLY: bad property line {ln!r}")
                props.append((parts[2], _TYPES[parts[1]]))
        else:
            raise ValueError(f"PLY: unknown header line {ln!r}")
    if fmt is None:
        raise ValueError("PLY: header has no 'format' line")
    return fmt, elements, nl + 1


def read_ply(data: bytes) -> np.ndarray:
    """Vertex positions of a PLY (ascii or binary LE/BE) as (V, 3) float32 (x, y, z properties).

    ValueError on a malformed header, a missing x/y/z property, a truncated body, or a body whose size does
    not match the vertex count in the header (when the vertex element is the only element)."""
    data = bytes(data)
    fmt, elements, offset = _parse_header(data)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise ValueError("PLY: no 'vertex' element")
    vi = names.index("vertex")
    if any(e[3] for e in elements[:vi]) or (fmt == "ascii" and vi > 0):
        raise ValueError("PLY: elements before 'vertex' are not supported")
    _, n, props, has_list = elements[vi]
    if has_list:
        raise ValueError("PLY: list properties in the vertex element are not supported")
    pnames = [p[0] for p in props]
    missing = [c for c in "xyz" if c not in pnames]
    if missing:
        raise ValueError(f"PLY: vertex element lacks propert(ies) {missing}")
    only_vertices = len(elements) == 1
    if fmt == "ascii":
        body = data[offset:].split(b"\n")
        lines = [ln for ln in body[:n] if ln.strip()] if n else []
        if len(lines) < n or (n and len(body) < n):
            raise ValueError(f"PLY: truncated ascii body: header says {n} vertices, body has fewer lines")
        if only_vertices and any(ln.strip() for ln in body[n:]):
            extra = sum(1 for ln in body[n:] if ln.strip())
            raise ValueError(f"PLY: header says {n} vertices but the body has {extra} more line(s)")
        tokens = b" ".join(lines).split()
        if len(tokens) != n * len(props):
            raise ValueError(
                f"PLY: ascii body has {len(tokens)} values for {n} vertices x {len(props)} properties"
            )
        try:
            vals = np.array(tokens, dtype=np.float64).reshape(n, len(props))
        except ValueError as exc:
            raise ValueError(f"PLY: non-numeric value in ascii body ({exc})") from exc
        cols = [pnames.index(c) for c in "xyz"]
        return vals[:, cols].astype(np.float32)
    order = _FORMATS[fmt]
    skip = 0
    for _, cnt, ps, _ in elements[:vi]:
        skip += cnt * np.dtype([(p, order + t) for p, t in ps]).itemsize
    dtype = np.dtype([(p, order + t) for p, t in props])
    need = offset + skip + n * dtype.itemsize
    if len(data) < need:
        raise ValueError(
            f"PLY: truncated binary body: header says {n} vertices ({need - offset} bytes), "
            f"body has {len(data) - offset} bytes"
        )
    if only_vertices and len(data) > need:
        raise ValueError(
            f"PLY: header says {n} vertices ({need - offset} bytes) but the body has {len(data) - offset} bytes"
        )
    rec = np.frombuffer(data, dtype=dtype, count=n, offset=offset + skip)
    out = np.empty((n, 3), dtype=np.float32)
    for j, c in enumerate("xyz"):
        out[:, j] = rec[c]
    return out


def write_ply(v: np.ndarray, binary: bool = True) -> bytes:
    """Serialise (V, 3) vertex positions as a PLY with float x, y, z (binary little endian or ascii with
    9 significant digits, which round-trips float32)."""
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"write_ply: vertices must be (V, 3), got {arr.shape}")
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\nelement vertex {arr.shape[0]}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    ).encode()
    if binary:
        return header + arr.astype("<f4").tobytes()
    buf = io.BytesIO()
    np.savetxt(buf, arr.astype(np.float64), fmt="%.9g")
    return header + buf.getvalue()
