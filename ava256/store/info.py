"""``ava256 info STORE``: a summary of a repacked store (captures, frames, cameras, sizes, invalid counts),
read from the capture groups' attributes and ``valid/*`` masks plus the repack manifest. STORE is a local folder
or an fsspec URL (``s3://bucket/prefix``), like repack's. Pure: no Dask."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ava256.assets import REGISTRY
from ava256.manifests.repack import REPACK_MANIFEST, STATUS_DONE, read_repack_manifest
from ava256.store import layout as L


def _file_sizes(path: str) -> dict[str, int]:
    """Size of every file under ``path`` (a local folder or an fsspec URL) by its ``/``-separated path relative
    to ``path``: one walk or bucket listing, from which the capture's and each array's bytes are summed."""
    if "://" in path:
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        if not fs.exists(root):
            return {}
        root = root.rstrip("/")
        return {k[len(root) + 1 :]: int(v) for k, v in fs.du(root, total=False).items()}
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        rel = os.path.relpath(dirpath, path).replace(os.sep, "/")
        for f in files:
            out[f if rel == "." else f"{rel}/{f}"] = os.path.getsize(os.path.join(dirpath, f))
    return out


def _bytes_under(sizes: dict[str, int], prefix: str) -> int:
    return sum(n for k, n in sizes.items() if k.startswith(f"{prefix}/"))


def capture_info(store: str | os.PathLike[str], folder: str) -> dict[str, Any]:
    """Summary of one capture group: sizes, shapes and, per asset, valid/invalid slot counts."""
    path = L.capture_store_path(store, folder)
    g = L.open_capture_group(path, mode="r")
    a = g.attrs
    sizes = _file_sizes(path)
    out: dict[str, Any] = {
        "capture": folder,
        "frames": len(a.get(L.ATTR_FRAME_IDS, [])),
        "cameras": len(a.get(L.ATTR_CAMERA_IDS, [])),
        "encoder_frames": len(a.get(L.ATTR_ENCODER_FRAME_IDS, [])),
        "image_size": a.get(L.ATTR_IMAGE_SIZE),
        "downsample": a.get(L.ATTR_DOWNSAMPLE),
        "codec": a.get(L.ATTR_CODEC),
        "complete": bool(a.get(L.ATTR_COMPLETE, False)),
        "format_version": a.get(L.ATTR_FORMAT_VERSION),
        "selection": a.get(L.ATTR_SELECTION),  # None: everything of the raw capture
        "bytes": sum(sizes.values()),
        "assets": {},
    }
    for asset in a.get(L.ATTR_ASSETS, []):
        name = L.valid_name(asset)
        if name not in g:
            continue
        m = np.asarray(g[name][...], dtype=bool)
        array = REGISTRY[asset].array
        arr = g[array]
        out["assets"][asset] = {
            "shape": list(arr.shape),
            "slots": int(m.size),
            "invalid": int(m.size - m.sum()),
            "bytes": _bytes_under(sizes, array),
        }
    return out


def store_info(store: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a whole store. FileNotFoundError if ``store`` holds no capture group."""
    store = os.fspath(store)
    folders = L.list_capture_stores(store)
    if not folders:
        raise FileNotFoundError(f"no repacked capture (<capture>.zarr) under {store}")
    caps = [capture_info(store, f) for f in folders]
    man = read_repack_manifest(L.manifests_path(store, REPACK_MANIFEST))
    return {
        "store": store,
        "captures": caps,
        "total_frames": sum(c["frames"] for c in caps),
        "total_bytes": sum(c["bytes"] for c in caps),
        "tasks": int(len(man)),
        "tasks_failed": int((man["status"] != STATUS_DONE).sum()) if len(man) else 0,
        "errors": int(man["errors"].map(len).sum()) if len(man) else 0,
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_store_info(info: dict[str, Any]) -> str:
    """Human-readable table of :func:`store_info`."""
    lines = [
        f"store {info['store']}: {len(info['captures'])} capture(s), {info['total_frames']} frames, {_size(info['total_bytes'])}"
    ]
    lines.append(
        f"repack manifest: {info['tasks']} task rows, {info['tasks_failed']} failed, {info['errors']} recorded errors"
    )
    for c in info["captures"]:
        hw = "x".join(map(str, c["image_size"])) if c["image_size"] else "-"
        lines.append(
            f"\n{c['capture']}: {c['frames']} frames x {c['cameras']} cameras, image {hw} (downsample {c['downsample']}), "
            f"codec {c['codec']}, {_size(c['bytes'])}, {'complete' if c['complete'] else 'INCOMPLETE'}"
        )
        lines.append(f"  {'asset':<14} {'shape':<26} {'invalid':>14} {'size':>10}")
        for asset, s in c["assets"].items():
            shape = "(" + ", ".join(map(str, s["shape"])) + ")"
            inv = f"{s['invalid']}/{s['slots']}"
            lines.append(f"  {asset:<14} {shape:<26} {inv:>14} {_size(s['bytes']):>10}")
    return "\n".join(lines)
