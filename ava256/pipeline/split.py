"""``ava256 split``: train/val/test partitions of a store's ``samples.parquet``.

The core, :func:`make_split`, is a pure, deterministic function of (samples table, protocol, seed): it does no
I/O and its result does not depend on the row order of the input. :func:`run_split` is the thin shell that
reads ``STORE/_manifests/samples.parquet`` and writes ``STORE/_splits/<name>/`` atomically (STORE a local
folder or an fsspec URL such as ``s3://bucket/store``). The table is small enough (one row per (capture,
frame, camera)) to be split in one process, so there is no Dask graph here.

Protocols (AVA-256 datasheet, plus a camera hold-out):

``free-face``
    Per-subject generalisation to unseen expressions. Every capture contributes to every part. ``train`` = all
    valid samples whose segment is not ``EXP_free_face``. The ``EXP_free_face`` frames of each capture are
    divided *in time*: the first ``floor(n/2)`` of its ``n`` free-face frames (by frame index) go to ``val``,
    the rest to ``test`` (a contiguous cut, so near-identical neighbouring frames never straddle val and
    test; all cameras of a frame stay together). The seed has no effect.
``holdout-20`` / ``holdout-12``
    Generalisation to unseen identities (20 subjects) / the driving protocol (12 subjects). ``N`` subjects
    are held out (all of their captures); they are ordered by a seeded hash and the first ``N // 4`` become
    ``val`` (5 resp. 3 subjects), the remaining ``N - N // 4`` ``test`` (15 resp. 9); every other subject is
    ``train``. All three parts are subject-disjoint. Needs at least ``N + 1`` subjects with valid samples.
``cameras``
    Novel views. ``k`` dome cameras (default ``max(2, round(C / 10))`` of the ``C`` camera ids that have valid
    samples: 8 of 80) are held out by a seeded hash order: the first ``k // 2`` are ``val``, the rest
    ``test``; all frames of all subjects appear in every part, seen from disjoint cameras.

Subjects are the ``subject`` column (one subject may have several captures). Held-out subjects and cameras are
chosen by sorting on ``sha256(f"{seed}:{item}")``: stable across platforms and library versions, and adding
one subject to a manifest never reshuffles the others. Invalid samples (``valid == False``) are excluded and
counted. Full coverage (every valid sample in exactly one part) and the protocol's disjointness are checked
before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ava256.manifests.samples import SAMPLES_MANIFEST as SAMPLES_FILE
from ava256.manifests.splits import PARTS, SAMPLE_COLUMNS, SORT_KEYS, write_split
from ava256.store import urls
from ava256.store.layout import MANIFESTS_DIR

log = logging.getLogger(__name__)

FREE_FACE_SEGMENT = "EXP_free_face"
SAMPLES_MANIFEST = Path(MANIFESTS_DIR) / SAMPLES_FILE

#: protocol name -> number of held-out subjects (None for protocols that hold out no subject).
PROTOCOLS: dict[str, int | None] = {"free-face": None, "holdout-20": 20, "holdout-12": 12, "cameras": None}

_STRING_COLUMNS = ("capture", "subject", "segment", "camera_id")


class SplitError(ValueError):
    """A protocol cannot be met by a samples table, or a computed split violates its guarantees."""


@dataclass(frozen=True)
class Split:
    """The three parts of a split (DataFrames with the samples columns, sorted by capture, frame_index,
    camera_index) and ``info``: the JSON-able parameters and counts written to ``split.json``."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}


def default_split_name(protocol: str, seed: int) -> str:
    """``<protocol>`` for seed 0, else ``<protocol>-seed<seed>``."""
    return protocol if seed == 0 else f"{protocol}-seed{seed}"


def seeded_order(items: Iterable[str], seed: int) -> list[str]:
    """``items`` (deduplicated) ordered by ``sha256(f"{seed}:{item}")``, ties broken by the item itself."""
    return sorted(set(items), key=lambda s: (hashlib.sha256(f"{seed}:{s}".encode()).hexdigest(), s))


def _normalise(samples: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise SplitError(f"samples table lacks column(s) {missing}; has {list(samples.columns)}")
    df = samples[list(SAMPLE_COLUMNS)].copy()
    for col in _STRING_COLUMNS:
        # Categoricals (dictionary-encoded parquet) keep memory small; sort their categories lexically so
        # that sorting by them is sorting by the strings.
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].cat.remove_unused_categories()
            df[col] = df[col].cat.reorder_categories(sorted(df[col].cat.categories.astype(str)))
    for col in ("valid", "valid_image", "valid_segmentation"):
        if df[col].isna().any():
            raise SplitError(f"samples column {col!r} has missing values")
        df[col] = df[col].astype(bool)
    df = df.sort_values(list(SORT_KEYS), kind="stable").reset_index(drop=True)
    dup = df.duplicated(list(SORT_KEYS))
    if dup.any():
        first = df.loc[dup, list(SORT_KEYS)].iloc[0].to_dict()
        raise SplitError(
            f"samples table has {int(dup.sum())} duplicate (capture, frame_index, camera_index) rows, e.g. {first}"
        )
    return df


def _sample_keys(df: pd.DataFrame, capture_codes: dict[str, int]) -> np.ndarray:
    """One int64 per sample: capture code << 40 | frame_index << 16 | camera_index."""
    cap = df["capture"].astype(str).map(capture_codes).to_numpy(dtype=np.int64)
    return (cap << 40) | (df["frame_index"].to_numpy(np.int64) << 16) | df["camera_index"].to_numpy(np.int64)


def check_split(valid: pd.DataFrame, split: Split, protocol: str) -> None:
    """Raise :class:`SplitError` unless every valid sample is in exactly one part, no part holds an invalid
    sample, and the protocol's promise holds (subject-disjoint parts for ``holdout-*``, camera-disjoint parts
    for ``cameras``, free-face frames only in val/test and never one frame in both for ``free-face``)."""
    parts = split.parts()
    for name, df in parts.items():
        if len(df) and not df["valid"].all():
            raise SplitError(f"split part {name!r} contains {int((~df['valid']).sum())} invalid samples")
    codes = {c: i for i, c in enumerate(sorted(valid["capture"].astype(str).unique()))}
    for name, df in parts.items():
        unknown = set(df["capture"].astype(str).unique()) - set(codes)
        if unknown:
            raise SplitError(
                f"split part {name!r} has captures not among the valid samples: {sorted(unknown)[:5]}"
            )
    want = np.sort(_sample_keys(valid, codes))
    got = np.sort(np.concatenate([_sample_keys(df, codes) for df in parts.values()]))
    if len(got) != len(want) or not np.array_equal(got, want):
        dupes = int(len(got) - len(np.unique(got)))
        missing = int(len(np.setdiff1d(want, got, assume_unique=True)))
        raise SplitError(
            f"split does not cover the valid samples exactly once: {len(want)} valid samples, {len(got)} in "
            f"parts, {dupes} in more than one part, {missing} in none"
        )
    if PROTOCOLS.get(protocol):
        _check_disjoint(parts, "subject")
    elif protocol == "cameras":
        _check_disjoint(parts, "camera_id")
    elif protocol == "free-face":
        seg = {n: df["segment"].astype(str) for n, df in parts.items()}
        if (seg["train"] == FREE_FACE_SEGMENT).any():
            raise SplitError(f"free-face split: train contains {FREE_FACE_SEGMENT} samples")
        for n in ("val", "test"):
            if (seg[n] != FREE_FACE_SEGMENT).any():
                raise SplitError(f"free-face split: {n} contains samples outside {FREE_FACE_SEGMENT}")
        frames = {
            n: set(zip(parts[n]["capture"].astype(str), parts[n]["frame_index"])) for n in ("val", "test")
        }
        both = frames["val"] & frames["test"]
        if both:
            raise SplitError(
                f"free-face split: {len(both)} frames are in both val and test, e.g. {sorted(both)[0]}"
            )


def _check_disjoint(parts: dict[str, pd.DataFrame], column: str) -> None:
    sets = {n: set(df[column].astype(str).unique()) for n, df in parts.items()}
    for i, a in enumerate(PARTS):
        for b in PARTS[i + 1 :]:
            shared = sets[a] & sets[b]
            if shared:
                raise SplitError(f"{column} not disjoint: {a} and {b} share {sorted(shared)[:5]}")


def _free_face(valid: pd.DataFrame) -> tuple[pd.Series, pd.Series, dict[str, Any]]:
    is_ff = valid["segment"].astype(str) == FREE_FACE_SEGMENT
    if not is_ff.any():
        raise SplitError(
            f"protocol free-face cannot be met: no valid sample of segment {FREE_FACE_SEGMENT!r} in "
            f"{valid['capture'].nunique()} capture(s)"
        )
    ff = valid.loc[is_ff, ["capture", "frame_index"]].drop_duplicates()
    ff = ff.assign(capture=ff["capture"].astype(str)).sort_values(["capture", "frame_index"])
    rank = ff.groupby("capture").cumcount()
    count = ff.groupby("capture")["frame_index"].transform("size")
    val_frames = ff.loc[rank < count // 2]
    key = valid["capture"].astype(str) + "\x00" + valid["frame_index"].astype(str)
    val_keys = set(val_frames["capture"] + "\x00" + val_frames["frame_index"].astype(str))
    in_val = is_ff & key.isin(val_keys)
    in_test = is_ff & ~in_val
    if not in_val.any():
        raise SplitError(
            f"protocol free-face cannot be met: val would be empty (every capture has at most one valid "
            f"{FREE_FACE_SEGMENT} frame)"
        )
    all_caps = set(valid["capture"].astype(str).unique())
    without = sorted(all_caps - set(ff["capture"]))
    if without:
        log.warning(
            "free-face split: %d capture(s) have no valid %s frame and only train: %s",
            len(without),
            FREE_FACE_SEGMENT,
            without[:10],
        )
    info = {
        "free_face_segment": FREE_FACE_SEGMENT,
        "val_rule": "first floor(n/2) free-face frames of each capture (by frame_index)",
        "test_rule": "remaining free-face frames of each capture",
        "captures_without_free_face": without,
    }
    return in_val, in_test, info


def _holdout_subjects(
    valid: pd.DataFrame, n: int, seed: int, protocol: str
) -> tuple[pd.Series, pd.Series, dict[str, Any]]:
    subjects = sorted(valid["subject"].astype(str).unique())
    if len(subjects) < n + 1:
        raise SplitError(
            f"protocol {protocol} cannot be met: it holds out {n} subjects and needs at least {n + 1} "
            f"(one left for training), but the samples have {len(subjects)} subject(s) with valid samples in "
            f"{valid['capture'].nunique()} capture(s)"
        )
    held = seeded_order(subjects, seed)[:n]
    n_val = n // 4
    val_subjects, test_subjects = sorted(held[:n_val]), sorted(held[n_val:])
    subj = valid["subject"].astype(str)
    info = {"held_out_subjects": sorted(held), "val_subjects": val_subjects, "test_subjects": test_subjects}
    return subj.isin(val_subjects), subj.isin(test_subjects), info


def _holdout_cameras(
    valid: pd.DataFrame, k: int | None, seed: int
) -> tuple[pd.Series, pd.Series, dict[str, Any]]:
    cams = sorted(valid["camera_id"].astype(str).unique())
    k = max(2, round(len(cams) / 10)) if k is None else int(k)
    if k < 2:
        raise SplitError(f"protocol cameras needs at least 2 held-out cameras (one val, one test), got {k}")
    if len(cams) < k + 1:
        raise SplitError(
            f"protocol cameras cannot be met: holding out {k} camera(s) needs at least {k + 1}, but the samples "
            f"have {len(cams)} camera id(s) with valid samples"
        )
    held = seeded_order(cams, seed)[:k]
    val_cams, test_cams = sorted(held[: k // 2]), sorted(held[k // 2 :])
    cam = valid["camera_id"].astype(str)
    info = {"held_out_cameras": sorted(held), "val_cameras": val_cams, "test_cameras": test_cams}
    return cam.isin(val_cams), cam.isin(test_cams), info


def make_split(
    samples: pd.DataFrame, protocol: str, seed: int = 0, *, held_out_cameras: int | None = None
) -> Split:
    """Split a samples table (the columns of ``samples.parquet``) by ``protocol`` (one of :data:`PROTOCOLS`).

    Pure and deterministic: the same (rows, protocol, seed) give the same parts whatever the input row order.
    ``held_out_cameras`` overrides the number of held-out cameras of the ``cameras`` protocol.
    Raises :class:`SplitError` when the protocol cannot be met or the samples table is malformed.
    """
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown split protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if held_out_cameras is not None and protocol != "cameras":
        raise SplitError("held_out_cameras only applies to the 'cameras' protocol")
    df = _normalise(samples)
    valid = df.loc[df["valid"]].reset_index(drop=True)
    n_invalid = int(len(df) - len(valid))
    if valid.empty:
        raise SplitError(f"protocol {protocol} cannot be met: none of the {len(df)} samples is valid")

    if protocol == "free-face":
        in_val, in_test, extra = _free_face(valid)
    elif protocol == "cameras":
        in_val, in_test, extra = _holdout_cameras(valid, held_out_cameras, seed)
    else:
        in_val, in_test, extra = _holdout_subjects(valid, PROTOCOLS[protocol] or 0, seed, protocol)
    in_train = ~(in_val | in_test)
    parts = {
        name: valid.loc[mask].reset_index(drop=True) for name, mask in zip(PARTS, (in_train, in_val, in_test))
    }
    for name, part in parts.items():
        if part.empty:
            raise SplitError(f"protocol {protocol} cannot be met: part {name!r} would be empty")

    info: dict[str, Any] = {
        "protocol": protocol,
        "seed": int(seed),
        "samples": int(len(df)),
        "invalid_excluded": n_invalid,
        "valid": int(len(valid)),
        "counts": {name: int(len(p)) for name, p in parts.items()},
        "subjects": {name: int(p["subject"].astype(str).nunique()) for name, p in parts.items()},
        "captures": {name: int(p["capture"].astype(str).nunique()) for name, p in parts.items()},
        "cameras": {name: int(p["camera_id"].astype(str).nunique()) for name, p in parts.items()},
        **extra,
    }
    split = Split(parts["train"], parts["val"], parts["test"], info)
    check_split(valid, split, protocol)
    return split


def read_samples(store: str | os.PathLike[str], data: bytes | None = None) -> pd.DataFrame:
    """``STORE/_manifests/samples.parquet`` (STORE a folder or an fsspec URL; ``data``: its bytes, already
    read) with its string columns dictionary-encoded (categoricals)."""
    if data is None:
        data = _read_samples_bytes(store)
    return pq.read_table(
        io.BytesIO(data), columns=list(SAMPLE_COLUMNS), read_dictionary=list(_STRING_COLUMNS)
    ).to_pandas()


def _read_samples_bytes(store: str | os.PathLike[str]) -> bytes:
    path = urls.join(store, MANIFESTS_DIR, SAMPLES_FILE)
    try:
        return urls.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist — is {store} a repacked store (`ava256 repack RAW STORE`)?"
        ) from None


def run_split(
    store: str | os.PathLike[str],
    protocol: str,
    seed: int = 0,
    name: str | None = None,
    *,
    held_out_cameras: int | None = None,
) -> dict[str, Any]:
    """Read the store's samples manifest, split it by ``protocol`` and write ``STORE/_splits/<name>/``
    (``train/val/test.parquet`` + ``split.json``). Returns the ``split.json`` content plus ``path``."""
    data = _read_samples_bytes(store)  # read once: the split and its digest are of the same bytes
    samples = read_samples(store, data)
    split = make_split(samples, protocol, seed, held_out_cameras=held_out_cameras)
    name = name or default_split_name(protocol, seed)
    digest = hashlib.sha256(data).hexdigest()
    info = {**split.info, "name": name, "samples_manifest_sha256": digest}
    folder = write_split(store, name, split.parts(), info)
    log.info(
        "split %s written to %s: %s (invalid excluded: %d)",
        name,
        folder,
        info["counts"],
        info["invalid_excluded"],
    )
    return {**info, "path": str(folder)}
