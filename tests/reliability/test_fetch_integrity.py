"""Nothing lost, nothing silent, for ``ava256 fetch`` / ``ava256 verify`` on one raw tree: the OUT lock between
real processes, manifest writes that keep other captures' rows, unsafe symlinks in a local source, a full disk
(a real small tmpfs where we may mount one, and the process file-size limit RLIMIT_FSIZE everywhere), and a
torn manifest rebuilt from the files on disk."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rel_helpers import CAMERAS, calibration_bytes, cli_cmd, run_cli, sha256

from ava256.capture import CALIBRATION_KEY, TEXTURE_KEY, capture_keys, image_key, release_capture_ids
from ava256.cli import cli
from ava256.manifests.fetch import FetchRow, manifest_path, read_fetch_manifest, write_fetch_manifest
from ava256.pipeline.fetch import DiskFullError, fetch, raw_tree_lock
from ava256.pipeline.verify import verify


def fetch_args(bucket, out: Path, *extra: str) -> list[str]:
    return ["fetch", str(out), "--captures", bucket.capture.folder, "--source", bucket.source,
            "--endpoint-url", bucket.endpoint_url, "--no-progress", "-j", "4", *extra]  # fmt: skip


def wait_for(cond, proc: subprocess.Popen | None = None, what: str = "", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, f"the process ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_rows_match_bucket(out: Path, bucket, statuses=("ok",)) -> dict:
    """Every ok row's file equals the bucket's bytes; returns the capture's rows by key."""
    rows = {k: r for (c, k), r in read_fetch_manifest(out).items() if c == bucket.capture.folder}
    for key, row in rows.items():
        if row.status == "ok":
            assert row.sha256 == sha256(bucket.contents[key])
            assert (out / row.path).read_bytes() == bucket.contents[key]
        else:
            assert row.status in statuses, row
    return rows


def stalled_fetch(bucket, chaos, out: Path) -> subprocess.Popen:
    """A real ``ava256 fetch`` process holding OUT's lock, its big object stalled after 1.5 MB."""
    chaos.add("stall", match=bucket.big_key, times=1, after_bytes=1_500_000, stall_timeout=30)
    proc = subprocess.Popen(cli_cmd(*fetch_args(bucket, out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    part = out / bucket.capture.folder / (bucket.big_key + ".part")
    wait_for(lambda: part.exists() and part.stat().st_size >= 1 << 20, proc, "the stalled download")
    return proc


# ---------------------------------------------------------------------------------------------------------
# One fetch or verify per raw tree
# ---------------------------------------------------------------------------------------------------------


def test_a_second_fetch_and_a_verify_are_refused_while_a_fetch_runs(chaos_bucket, chaos, tmp_path):
    out = tmp_path / "raw"
    first = stalled_fetch(chaos_bucket, chaos, out)
    try:
        holder = f"pid {first.pid} on {socket.gethostname()}"
        second = run_cli(*fetch_args(chaos_bucket, out))
        assert second.returncode == 1 and holder in second.stderr, second.stderr
        assert (
            "refusing to run a second fetch or verify" in second.stderr and "Traceback" not in second.stderr
        )
        assert len(second.stderr.strip().splitlines()) == 1  # one line
        check = run_cli("verify", out, "--no-progress")
        assert check.returncode == 1 and holder in check.stderr, check.stderr
    finally:
        chaos.release()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    rows = assert_rows_match_bucket(out, chaos_bucket)
    assert sorted(rows) == sorted(chaos_bucket.contents)
    assert not (out / "_manifests" / "fetch.lock").exists()
    assert verify(out, workers=2, progress=False).clean


def test_fetch_is_refused_while_a_verify_holds_the_tree(chaos_bucket, chaos, tmp_path):
    """The lock taken in this process (as ``verify`` takes it): a real ``ava256 fetch`` process is refused, and
    runs once it is released."""
    out = tmp_path / "raw"
    out.mkdir()
    with raw_tree_lock(out.resolve()):
        refused = run_cli(*fetch_args(chaos_bucket, out))
        assert refused.returncode == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in refused.stderr
    assert not list(out.glob(f"{chaos_bucket.capture.folder}/**/*.zip"))
    assert run_cli(*fetch_args(chaos_bucket, out)).returncode == 0


def test_manifest_writes_keep_rows_of_captures_they_did_not_touch(
    chaos_bucket, chaos, dask_threads, tmp_path
):
    out = tmp_path / "raw"
    other = release_capture_ids()[9].folder
    foreign = FetchRow(capture=other, key=CALIBRATION_KEY, path=f"{other}/{CALIBRATION_KEY}", status="corrupt",
                       bytes=5, sha256="ab" * 32, error="marked by verify")  # fmt: skip
    write_fetch_manifest(out, [foreign])
    summary = fetch(out, **chaos_bucket.kwargs(client=dask_threads))
    assert summary.ok, summary.lines()
    rows = read_fetch_manifest(out)
    assert rows[(other, CALIBRATION_KEY)].status == "corrupt"
    assert rows[(other, CALIBRATION_KEY)].error == "marked by verify"
    assert len(rows) == len(chaos_bucket.contents) + 1

    # verify writes only what it checked: the fetched rows ok, the foreign row stays corrupt
    (out / chaos_bucket.capture.folder / image_key(CAMERAS[0])).write_bytes(b"changed")
    report = verify(out, client=dask_threads, progress=False)
    assert {r.path.rsplit("/", 1)[-1] for r in report.problems} == {
        f"cam{CAMERAS[0]}.zip",
        "camera_calibration.json",
    }
    rows = read_fetch_manifest(out)
    assert rows[(chaos_bucket.capture.folder, image_key(CAMERAS[0]))].status == "corrupt"
    # the next fetch re-downloads the corrupt file instead of calling it "already present"
    again = fetch(out, **chaos_bucket.kwargs(client=dask_threads))
    assert again.ok and again.downloaded == 1, again.lines()
    assert_rows_match_bucket(out, chaos_bucket)


# ---------------------------------------------------------------------------------------------------------
# A local --source never leads out of itself
# ---------------------------------------------------------------------------------------------------------


def test_local_source_refuses_symlinks_that_leave_it(dask_threads, tmp_path):
    cap = release_capture_ids()[5]
    src = tmp_path / "src"
    base = src / "ava-256" / "4TB" / cap.folder
    contents = {}
    for i, key in enumerate(capture_keys(["meta", "image", "segmentation"], CAMERAS)):
        data = calibration_bytes(CAMERAS) if key == CALIBRATION_KEY else os.urandom(1000 + i)
        (base / key).parent.mkdir(parents=True, exist_ok=True)
        (base / key).write_bytes(data)
        contents[key] = data
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the source")
    evil, fine = base / image_key(CAMERAS[0]), base / image_key(CAMERAS[1])
    evil.unlink()
    evil.symlink_to(secret)  # leaves the source: refused
    shared = src / "ava-256" / "4TB" / "shared" / "cam.zip"
    shared.parent.mkdir()
    shared.write_bytes(contents[image_key(CAMERAS[1])])
    fine.unlink()
    fine.symlink_to(shared)  # stays inside the source: fetched
    (base / "decoder" / "loop").symlink_to(base)  # a link loop: the listing still ends

    out = tmp_path / "raw"
    summary = fetch(out, size="4TB", captures=cap.folder, source=str(src), assets="meta,image,segmentation",
                    client=dask_threads, progress=False)  # fmt: skip
    assert [r.path for r in summary.failed] == [f"{cap.folder}/{image_key(CAMERAS[0])}"]
    error = summary.failed[0].error
    assert "outside the source" in error and str(secret) in error and "not copied" in error
    assert not (out / cap.folder / image_key(CAMERAS[0])).exists()
    assert not list(out.rglob("*.part"))
    for p in out.rglob("*"):
        assert not p.is_file() or b"outside the source" not in p.read_bytes() or p.suffix == ".parquet"
    assert (out / cap.folder / image_key(CAMERAS[1])).read_bytes() == contents[image_key(CAMERAS[1])]
    assert read_fetch_manifest(out)[(cap.folder, image_key(CAMERAS[0]))].status == "failed"


# ---------------------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a real tmpfs of that size mounted under tmp_path (skips unless we may mount)."""
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        d = tmp_path / f"small-{len(mounted)}"
        d.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("how", ["tmpfs", "reserve"])
def test_too_little_space_is_refused_before_anything_is_written(chaos_bucket, dask_threads, small_fs, tmp_path,
                                                                how):  # fmt: skip
    root = small_fs("1m") if how == "tmpfs" else tmp_path
    out = root / "raw"
    reserve = 0 if how == "tmpfs" else shutil.disk_usage(tmp_path).free - 100_000
    with pytest.raises(DiskFullError) as info:
        fetch(out, **chaos_bucket.kwargs(client=dask_threads, reserve_bytes=reserve))
    msg = str(info.value)
    need = sum(len(d) for d in chaos_bucket.contents.values())
    assert f"not enough free space in {out.resolve()}" in msg and "still to fetch" in msg and "free" in msg
    shown = int(msg.split(" still to fetch")[0].rsplit(": ", 1)[1].split(" bytes")[0].replace(",", ""))
    assert shown > need  # every object, the calibration included, plus room for the manifest
    assert [p.relative_to(out).as_posix() for p in out.rglob("*")] == ["_manifests"]  # nothing written


def limit_file_size(nbytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_file_size_limit_mid_run_stops_with_a_whole_manifest(chaos_bucket, chaos, tmp_path):
    """RLIMIT_FSIZE (2 MiB) on a real ``ava256 fetch`` process: writing the 6 MB object fails with EFBIG, as a full
    disk would with ENOSPC. The run stops, names the file, and leaves a readable manifest of what finished."""
    out = tmp_path / "raw"
    proc = subprocess.run(cli_cmd(*fetch_args(chaos_bucket, out)), capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_file_size(2 << 20))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    part = out / chaos_bucket.capture.folder / (TEXTURE_KEY + ".part")
    assert f"STOPPED: out of space: {os.strerror(errno.EFBIG)} while writing {part}" in proc.stdout
    rows = assert_rows_match_bucket(out, chaos_bucket, statuses=("failed",))
    assert rows[TEXTURE_KEY].status == "failed" and str(part) in rows[TEXTURE_KEY].error
    assert sorted(rows) == sorted(chaos_bucket.contents)  # every object on the record, none lost
    assert not (out / chaos_bucket.capture.folder / TEXTURE_KEY).exists()

    healed = run_cli(*fetch_args(chaos_bucket, out))
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert all(r.status == "ok" for r in assert_rows_match_bucket(out, chaos_bucket).values())


def test_disk_full_mid_run_on_a_real_small_filesystem(chaos_bucket, chaos, small_fs):
    """A real ENOSPC: a tmpfs with room for the capture; while the big object is stalled, the disk is filled.
    The manifest is still written (the space kept for it is freed) and names the file that did not fit."""
    root = small_fs("8m")
    out = root / "raw"
    proc = stalled_fetch(chaos_bucket, chaos, out)
    try:
        others = [out / chaos_bucket.capture.folder / k for k in chaos_bucket.contents if k != TEXTURE_KEY]
        wait_for(lambda: all(p.exists() for p in others), proc, "the small objects")
        with open(root / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as full:
            while True:
                f.write(bytes(1 << 16))
        assert full.value.errno == errno.ENOSPC
    finally:
        chaos.release()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout + stderr
    part = out / chaos_bucket.capture.folder / (TEXTURE_KEY + ".part")
    assert f"STOPPED: out of space: {os.strerror(errno.ENOSPC)} while writing {part}" in stdout
    rows = assert_rows_match_bucket(out, chaos_bucket, statuses=("failed",))
    assert sorted(rows) == sorted(chaos_bucket.contents)
    assert [k for k, r in rows.items() if r.status != "ok"] == [TEXTURE_KEY]

    (root / "filler").unlink()
    healed = run_cli(*fetch_args(chaos_bucket, out))
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "1 downloaded" in healed.stdout
    assert all(r.status == "ok" for r in assert_rows_match_bucket(out, chaos_bucket).values())


# ---------------------------------------------------------------------------------------------------------
# A torn manifest
# ---------------------------------------------------------------------------------------------------------


def test_torn_manifest_names_the_recovery_and_rebuild_restores_it(
    chaos_bucket, chaos, dask_threads, tmp_path
):
    out = tmp_path / "raw"
    assert fetch(out, **chaos_bucket.kwargs(client=dask_threads)).ok
    good = read_fetch_manifest(out)
    path = manifest_path(out)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # torn

    runner = CliRunner()
    for args in (fetch_args(chaos_bucket, out), ["verify", str(out), "--no-progress"],
                 ["repack", str(out), str(tmp_path / "store"), "--no-progress"]):  # fmt: skip
        res = runner.invoke(cli, args)
        assert res.exit_code == 1, (args, res.output)
        assert f"cannot read fetch manifest {path}" in res.output, res.output
        assert f"ava256 fetch {out} --rebuild-manifest" in res.output and "Traceback" not in res.output

    res = runner.invoke(cli, ["fetch", str(out), "--rebuild-manifest"])
    assert res.exit_code == 0, res.output
    rebuilt = read_fetch_manifest(out)
    assert sorted(rebuilt) == sorted(good)
    for k, row in rebuilt.items():
        assert (row.sha256, row.bytes, row.asset, row.path) == (
            good[k].sha256, good[k].bytes, good[k].asset, good[k].path,
        )  # fmt: skip
        assert row.status == "ok" and row.source == ""

    # The next fetch checks the rebuilt rows against the bucket's ETags (a HEAD for the multipart one) and
    # downloads nothing.
    chaos.clear()
    res = runner.invoke(cli, fetch_args(chaos_bucket, out))
    assert res.exit_code == 0, res.output
    assert "0 downloaded" in res.output
    assert not [
        r for r in chaos.requests if r.method == "GET" and "/4TB/" in r.path and "list-type" not in r.path
    ]
    rows = assert_rows_match_bucket(out, chaos_bucket)
    assert all(r.source and r.etag for r in rows.values())
    assert verify(out, client=dask_threads, progress=False).clean


def test_rebuild_keeps_failed_rows_of_a_readable_manifest(chaos_bucket, chaos, dask_threads, tmp_path):
    out = tmp_path / "raw"
    chaos.add("error", match=image_key(CAMERAS[1]), times=None, status=403, code="AccessDenied")
    assert not fetch(out, **chaos_bucket.kwargs(client=dask_threads)).ok
    (out / chaos_bucket.capture.folder / "decoder" / "notes.txt").write_text("not a catalog key")
    res = CliRunner().invoke(cli, ["fetch", str(out), "--rebuild-manifest"])
    assert res.exit_code == 0 and "not a catalog key" in res.output, res.output
    rows = read_fetch_manifest(out)
    assert rows[(chaos_bucket.capture.folder, image_key(CAMERAS[1]))].status == "failed"
    assert sum(r.status == "ok" for r in rows.values()) == len(chaos_bucket.contents) - 1
    assert hashlib.sha256(b"").hexdigest() not in {r.sha256 for r in rows.values()}
