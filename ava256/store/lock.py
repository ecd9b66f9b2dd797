"""One writer per store: the repack lock file ``STORE/_manifests/repack.lock`` (and, with other names, one
writer per raw tree: ``OUT/_manifests/fetch.lock`` held by ``ava256 fetch`` and ``ava256 verify``).

Two repack processes pointed at one store would both write the driver-only ``valid/*`` mask chunks and the
manifest part files (read-modify-write), so the second one is **refused**: :class:`StoreLock` creates the lock
file exclusively (``O_CREAT | O_EXCL`` on a local disk) holding the owner's pid, host, process start time and
command line, and refreshes its mtime every ``heartbeat`` seconds while held. A lock is *stale*, and is taken
over, when

- its host is this host and its pid is gone (or is another process: the start time differs), e.g. after
  ``kill -9``; or
- its host is another machine and it has not been refreshed for ``stale_after`` seconds (the owner's machine
  died or lost the shared disk).

A live owner makes :meth:`StoreLock.acquire` raise :class:`StoreLockedError` naming pid, host and start time.
For a store at an fsspec URL (``s3://…``) the lock is the same file written through fsspec, then read back:
object stores have no exclusive create, so two starts within one round trip can both win (documented limit).

Pure: no Dask, no torch.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

LOCK_NAME = "repack.lock"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0

F = TypeVar("F", bound=Callable[..., Any])


class StoreLockedError(BlockingIOError):
    """The store (or raw tree) is held by another live process (message names its pid, host and start time)."""


def _proc_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/pid/stat); "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_path(store: str | os.PathLike[str], name: str = LOCK_NAME) -> str:
    """``STORE/_manifests/{name}`` (a path or URL string; ``repack.lock`` by default)."""
    return "/".join([os.fspath(store).rstrip("/"), "_manifests", name])


class StoreLock:
    """Exclusive lock of ``store`` (see the module doc). Use as a context manager or :meth:`acquire` /
    :meth:`release`; :func:`locked_store` decorates a function taking the store.

    ``name``, ``subject`` and ``job`` make the same lock for another kind of directory, e.g. a raw tree:
    ``StoreLock(out, name="fetch.lock", subject=f"raw tree {out}", job="fetch or verify")``."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        stale_after: float = STALE_AFTER_SECONDS,
        storage_options: dict[str, Any] | None = None,
        name: str = LOCK_NAME,
        subject: str = "store",
        job: str = "repack",
    ) -> None:
        import fsspec

        self.path = lock_path(store, name)
        self.subject, self.job = subject, job
        self.fs, self._fpath = fsspec.core.url_to_fs(self.path, **(storage_options or {}))
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cmd": " ".join(sys.argv)[:500],
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # --- reading ----------------------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """The current lock file's content (None if there is none; {} if it is unreadable/torn)."""
        try:
            with self.fs.open(self._fpath, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data)
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {}

    def _age(self) -> float:
        try:
            mtime = self.fs.modified(self._fpath)
            return time.time() - mtime.timestamp()
        except (FileNotFoundError, NotImplementedError, OSError):
            return 0.0

    def stale_reason(self, owner: dict[str, Any]) -> str:
        """Why ``owner`` (a lock file's content) no longer holds the store, or "" if it still does."""
        if not owner:
            age = self._age()
            return f"unreadable lock file, {age:.0f} s old" if age > self.heartbeat * 2 else ""
        if owner.get("host") == socket.gethostname():
            pid = int(owner.get("pid", -1))
            if pid <= 0 or not _pid_alive(pid):
                return f"pid {pid} on this host is gone"
            if owner.get("proc_start") and _proc_start(pid) and _proc_start(pid) != owner["proc_start"]:
                return f"pid {pid} on this host is another process now"
            return ""
        age = self._age()
        if age > self.stale_after:
            return f"not refreshed for {age:.0f} s (> {self.stale_after:.0f} s)"
        return ""

    # --- acquiring --------------------------------------------------------------------------------------
    def _create(self) -> bool:
        """Create the lock file exclusively; False if it exists."""
        data = json.dumps(self.info, indent=1).encode()
        if self.local:
            os.makedirs(os.path.dirname(self._fpath), exist_ok=True)
            try:
                fd = os.open(self._fpath, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.fs.exists(self._fpath):
            return False
        self.fs.pipe_file(self._fpath, data)
        owner = self.read() or {}
        return owner.get("token") == self.token

    def _remove_stale(self, owner: dict[str, Any] | None) -> None:
        if self.local:
            # rename first: of two processes breaking the same stale lock, only one succeeds
            grave = f"{self._fpath}.stale-{self.token}"
            try:
                os.rename(self._fpath, grave)
            except FileNotFoundError:
                return
            with open(grave, "rb") as f:
                moved = f.read()
            try:
                moved_token = json.loads(moved).get("token") if moved else None
            except ValueError:
                moved_token = None
            if owner and moved_token is not None and moved_token != owner.get("token"):
                # a fresh lock was created between our read and the rename: put it back
                os.rename(grave, self._fpath)
                return
            os.unlink(grave)
        else:
            self.fs.rm_file(self._fpath)

    def acquire(self) -> StoreLock:
        for _ in range(5):
            if self._create():
                self.held = True
                self._start_heartbeat()
                log.info("locked %s (pid %s on %s)", self.path, self.info["pid"], self.info["host"])
                return self
            owner = self.read()
            if owner is None:
                continue  # released meanwhile
            reason = self.stale_reason(owner)
            if not reason and not owner:
                raise StoreLockedError(
                    errno.EAGAIN, f"{self.subject} is locked ({self.path} is being written or unreadable)"
                )
            if not reason:
                busy = "being repacked" if self.job == "repack" else "in use"
                raise StoreLockedError(
                    errno.EAGAIN,
                    f"{self.subject} is {busy} by pid {owner.get('pid')} on {owner.get('host')} since "
                    f"{owner.get('started')} ({owner.get('cmd', '')[:120]}); refusing to run a second {self.job} "
                    f"on it. If that process is really gone, delete {self.path}",
                )
            log.warning("taking over the stale lock %s: %s (was %s)", self.path, reason, owner)
            try:
                self._remove_stale(owner)
            except (OSError, ValueError) as exc:
                log.debug("could not remove stale lock: %s", exc)
            time.sleep(0.05)
        raise StoreLockedError(errno.EAGAIN, f"could not take the lock {self.path} (contended)")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    if self.local:
                        os.utime(self._fpath)
                    else:
                        self.fs.touch(self._fpath, truncate=False)
                except Exception as exc:  # noqa: BLE001 - a missed beat only ages the lock
                    log.debug("lock heartbeat failed: %s", exc)

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="store-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.held = False
        owner = self.read()
        if owner and owner.get("token") == self.token:
            try:
                self.fs.rm_file(self._fpath)
            except FileNotFoundError:
                pass

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def locked_store(fn: F) -> F:
    """Decorate ``fn(raw, store, ...)`` (or ``store=``) to run while holding ``StoreLock(store)``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        store = kwargs["store"] if "store" in kwargs else args[1]
        with StoreLock(store, storage_options=kwargs.get("storage_options")):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["LOCK_NAME", "StoreLock", "StoreLockedError", "lock_path", "locked_store"]
