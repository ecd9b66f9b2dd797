"""``ava256 verify``: re-hash a fetched raw tree against ``OUT/_manifests/fetch.parquet``.

One Dask task per file (sha256 of the whole file, streamed). A file that is gone is marked ``missing``, one whose
size or sha256 differs ``corrupt``; both keep their recorded sha256/etag, so the next ``ava256 fetch OUT``
downloads them again (and only them). Intact files get their current mtime recorded, so the fast "already
present" check of fetch holds for them again. Holds ``OUT/_manifests/fetch.lock`` (shared with ``ava256 fetch``)
for the run, so a fetch cannot overwrite its marks; it writes only the rows it checked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ava256.capture import UnsafePathError, safe_relpath
from ava256.manifests.fetch import (
    STATUS_CORRUPT,
    STATUS_FAILED,
    STATUS_MISSING,
    STATUS_OK,
    FetchRow,
    manifest_path,
    read_fetch_manifest,
    update_fetch_manifest,
)
from ava256.pipeline.fetch import RAW_LOCK_NAME, hash_file, raw_tree_lock
from ava256.store.lock import lock_path

log = logging.getLogger(__name__)


def is_raw_tree(out: str | os.PathLike) -> bool:
    """Whether ``out`` is a fetched raw tree: it has a fetch manifest, or the lock of a first fetch still
    running (which writes its manifest at the end)."""
    return manifest_path(out).is_file() or os.path.isfile(lock_path(out, RAW_LOCK_NAME))


def verify_file(out: str, path: str, size: int, sha256: str) -> tuple[str, str, int | None, int]:
    """Check ``OUT/path`` against (size, sha256): (status, error, mtime_ns, bytes read)."""
    try:
        p = Path(out) / safe_relpath(path)  # a manifest is not trusted to name files outside OUT
    except UnsafePathError as exc:
        return STATUS_CORRUPT, str(exc), None, 0
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return STATUS_MISSING, f"file is gone: {p}", None, 0
    if st.st_size != size:
        return STATUS_CORRUPT, f"size {st.st_size} != {size} recorded", st.st_mtime_ns, 0
    try:
        n, sha, _ = hash_file(p)
    except OSError as exc:
        return STATUS_CORRUPT, f"unreadable: {exc}", st.st_mtime_ns, 0
    if sha != sha256:
        return STATUS_CORRUPT, f"sha256 {sha[:16]}… != {sha256[:16]}… recorded", st.st_mtime_ns, n
    return STATUS_OK, "", st.st_mtime_ns, n


@dataclass
class VerifySummary:
    out: Path
    checked: int = 0
    ok: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[FetchRow] = field(default_factory=list)  # rows now missing/corrupt
    not_fetched: list[FetchRow] = field(default_factory=list)  # rows that failed to download (not checked)

    @property
    def clean(self) -> bool:
        return not self.problems and not self.not_fetched

    def lines(self) -> list[str]:
        rate = self.bytes_read / 1e6 / self.seconds if self.seconds else 0.0
        out = [
            f"verify {self.out}: {self.checked} files checked, {self.ok} ok, {len(self.problems)} bad, "
            f"{len(self.not_fetched)} never fetched; {self.bytes_read / 1e6:.1f} MB hashed in {self.seconds:.1f} s "
            f"({rate:.1f} MB/s)"
        ]
        for row in self.problems[:20]:
            out.append(f"  {row.status.upper()} {row.path}: {row.error}")
        for row in self.not_fetched[:10]:
            out.append(f"  NOT FETCHED {row.path}: {row.error}")
        if self.problems or self.not_fetched:
            out.append("  run `ava256 fetch` again (same arguments) to download these again")
        return out


def verify(
    out: str | os.PathLike,
    workers: int = 8,
    *,
    scheduler: str | None = None,
    processes: bool = False,
    client=None,
    progress: bool = True,
) -> VerifySummary:
    """Re-hash every recorded file of ``out`` and update the manifest (see the module doc).

    Raises FileNotFoundError if ``out`` has no fetch manifest, StoreLockedError if a fetch or verify holds it."""
    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    missing = f"no fetch manifest at {manifest_path(out)}; run `ava256 fetch {out} …` first"
    if not manifest_path(out).parent.is_dir():  # not a raw tree: leave it as it is (no lock file)
        raise FileNotFoundError(missing)
    with raw_tree_lock(out):
        if not manifest_path(out).exists():
            raise FileNotFoundError(missing)
        return _verify_locked(out, workers, scheduler, processes, client, progress, t0)


def _verify_locked(out: Path, workers: int, scheduler, processes: bool, client, progress: bool,
                   t0: float) -> VerifySummary:  # fmt: skip
    rows = read_fetch_manifest(out)
    if not rows:
        raise FileNotFoundError(f"the fetch manifest {manifest_path(out)} lists no files")
    summary = VerifySummary(out)
    todo = [r for r in rows.values() if r.status != STATUS_FAILED and r.sha256]
    summary.not_fetched = [r for r in rows.values() if r.status == STATUS_FAILED]
    checked: dict[tuple[str, str], FetchRow] = {}
    try:
        if todo and client is None:
            from ava256.pipeline.cluster import dask_client

            with dask_client(workers, processes=processes, scheduler=scheduler) as c:
                _run(c, out, todo, checked, summary, progress)
        elif todo:
            _run(client, out, todo, checked, summary, progress)
    finally:
        if checked:
            update_fetch_manifest(out, checked.values())  # only the rows checked; the others stay as on disk
    summary.seconds = time.perf_counter() - t0
    for line in summary.lines():
        log.info(line)
    return summary


def _run(client, out: Path, todo: list[FetchRow], checked: dict[tuple[str, str], FetchRow],
         summary: VerifySummary, progress: bool) -> None:  # fmt: skip
    from distributed import as_completed

    from ava256.progress import Progress

    futs = {client.submit(verify_file, str(out), r.path, r.bytes, r.sha256, pure=False): r for r in todo}
    total = sum(r.bytes or 0 for r in todo)
    with Progress(f"verify {len(todo)} files", total, unit="B", unit_scale=True, enabled=progress) as bar:
        for fut, result in as_completed(futs, with_results=True):  # results arrive in batches
            status, error, mtime_ns, n = result
            summary.checked += 1
            summary.bytes_read += n
            bar.update(futs[fut].bytes or 0)
            mtime = {} if mtime_ns is None else {"mtime_ns": mtime_ns}
            row = dataclasses.replace(futs[fut], status=status, error=error, time=datetime.now(UTC), **mtime)
            if status == STATUS_OK:
                summary.ok += 1
            else:
                summary.problems.append(row)
            checked[(row.capture, row.key)] = row
    summary.problems.sort(key=lambda r: r.path)
