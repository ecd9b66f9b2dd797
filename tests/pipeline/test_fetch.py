"""ava256 fetch / verify against a real S3 server on loopback (moto server mode) and a real Dask scheduler."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from helpers.s3_data import write_tiny_capture

from ava256.capture import (
    CALIBRATION_KEY,
    TEXTURE_KEY,
    capture_keys,
    image_key,
    parse_assets,
    release_capture_ids,
    segmentation_key,
)
from ava256.cli import cli
from ava256.manifests.fetch import FetchRow, manifest_path, read_fetch_manifest, write_fetch_manifest
from ava256.pipeline.fetch import CaptureNotFoundError, DiskFullError, fetch
from ava256.pipeline.verify import verify
from ava256.synth.server import LOCAL_BUCKET, upload_tree


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gets(faults, needle: str = "") -> list:
    return [
        r for r in faults.requests if r.method == "GET" and needle in r.path and "list-type" not in r.path
    ]


def object_gets(faults) -> list:
    """GETs of objects (listing requests are GETs on the bucket root, whose path has no capture folder)."""
    return [r for r in faults.requests if r.method == "GET" and "/4TB/" in r.path]


def test_full_fetch_writes_tree_and_manifest(tiny_bucket, dask_threads, faults, tmp_path):
    out = tmp_path / "raw"
    summary = fetch(out, **tiny_bucket.kwargs(client=dask_threads))
    assert summary.ok, summary.lines()
    n_keys = len(capture_keys(parse_assets(None), tiny_bucket.cameras))
    assert summary.objects == 2 * n_keys and summary.downloaded == 2 * n_keys

    rows = read_fetch_manifest(out)
    assert len(rows) == 2 * n_keys
    for cap in tiny_bucket.captures:
        for key, data in tiny_bucket.contents[cap.folder].items():
            row = rows[(cap.folder, key)]
            # canonical folder locally, even for the capture stored under the datasheet spelling in the bucket
            assert row.path == f"{cap.folder}/{key}"
            assert (out / row.path).read_bytes() == data
            assert row.status == "ok" and row.error == ""
            assert row.bytes == len(data) and row.sha256 == sha256(data)
            if len(data) == tiny_bucket.big_bytes:
                assert row.etag.endswith("-2") and row.md5 == ""  # multipart: size + sha256 only
            else:
                assert row.md5 == row.etag == hashlib.md5(data).hexdigest()
    second = tiny_bucket.captures[1]
    assert rows[(second.folder, CALIBRATION_KEY)].source.endswith(
        f"/{second.datasheet_folder}/{CALIBRATION_KEY}"
    )
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.part.etag"))

    # A second run finds everything in place and does not touch the bucket at all.
    faults.clear()
    again = fetch(out, **tiny_bucket.kwargs(client=dask_threads))
    assert again.ok and again.skipped == 2 * n_keys and again.downloaded == 0
    assert faults.requests == []


def test_cameras_and_assets_select_keys_and_verify_is_clean(tiny_bucket, dask_threads, tmp_path):
    out = tmp_path / "raw"
    cap = tiny_bucket.captures[0]
    summary = fetch(out, **tiny_bucket.kwargs(client=dask_threads, captures=cap.folder, assets="image",
                                              cameras="cam401031"))  # fmt: skip
    assert summary.ok
    rows = read_fetch_manifest(out)
    assert sorted(k for _, k in rows) == sorted(capture_keys(["meta"], []) + [image_key("401031")])
    report = verify(out, client=dask_threads, progress=False)
    assert report.clean and report.checked == len(rows) == report.ok


def test_resume_after_killed_fetch(tiny_bucket, faults, tmp_path):
    """A fetch process killed mid-object leaves ``.part`` behind; the next run continues it with a Range GET."""
    out = tmp_path / "raw"
    cap = tiny_bucket.captures[0]
    stall_at = 3 * 1024 * 1024 + 100_000
    faults.add("stall", match=TEXTURE_KEY, times=1, after_bytes=stall_at, stall_timeout=30)
    cmd = [
        sys.executable, "-m", "ava256.cli", "fetch", str(out), "--captures", cap.folder, "--assets", "uv_texture",
        "--source", tiny_bucket.source, "--endpoint-url", tiny_bucket.endpoint_url, "-j", "2", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    part = out / cap.folder / (TEXTURE_KEY + ".part")
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 3 * 1024 * 1024):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the fetch never got the stalled object's first bytes"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < tiny_bucket.big_bytes
    faults.clear()  # also releases the stalled response

    summary = fetch(out, **tiny_bucket.kwargs(captures=cap.folder, assets="uv_texture", workers=2))
    assert summary.ok, summary.lines()
    texture_gets = gets(faults, TEXTURE_KEY)
    assert [r.range for r in texture_gets] == [f"bytes={kept}-"]
    row = read_fetch_manifest(out)[(cap.folder, TEXTURE_KEY)]
    assert row.resumed_from == kept and row.status == "ok"
    data = tiny_bucket.contents[cap.folder][TEXTURE_KEY]
    assert row.sha256 == sha256(data) and (out / row.path).read_bytes() == data
    assert not part.exists()


def test_verify_detects_corruption_and_refetch_heals(tiny_bucket, dask_threads, faults, tmp_path):
    out = tmp_path / "raw"
    assert fetch(out, **tiny_bucket.kwargs(client=dask_threads)).ok
    cap = tiny_bucket.captures[1]
    bad = out / cap.folder / image_key("400940")
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte
    bad.write_bytes(bytes(raw))
    gone = out / cap.folder / segmentation_key("401164")
    gone.unlink()

    report = verify(out, client=dask_threads, progress=False)
    assert not report.clean
    assert {(r.path, r.status) for r in report.problems} == {
        (f"{cap.folder}/{image_key('400940')}", "corrupt"),
        (f"{cap.folder}/{segmentation_key('401164')}", "missing"),
    }
    rows = read_fetch_manifest(out)
    assert rows[(cap.folder, image_key("400940"))].status == "corrupt"
    assert rows[(cap.folder, segmentation_key("401164"))].status == "missing"

    faults.clear()
    healed = fetch(out, **tiny_bucket.kwargs(client=dask_threads))
    assert healed.ok and healed.downloaded == 2
    assert sorted(r.path.rsplit("/", 1)[-1] for r in object_gets(faults)) == [
        "cam400940.zip",
        "cam401164.zip",
    ]
    assert bad.read_bytes() == tiny_bucket.contents[cap.folder][image_key("400940")]
    assert verify(out, client=dask_threads, progress=False).clean


def test_server_errors_for_a_while_then_retries_succeed(tiny_bucket, dask_threads, faults, tmp_path):
    out = tmp_path / "raw"
    slow = faults.add("error", match="/ava-256/", times=6, method="*", status=503, code="SlowDown")
    reset = faults.add("reset", match=image_key("401031"), times=2, after_bytes=5_000)
    boom = faults.add("error", match=TEXTURE_KEY, times=1, status=500, code="InternalError")
    summary = fetch(out, **tiny_bucket.kwargs(client=dask_threads))
    assert summary.ok, summary.lines()
    assert slow.hits == 6 and reset.hits == 2 and boom.hits == 1
    rows = read_fetch_manifest(out)
    for cap in tiny_bucket.captures:
        row = rows[(cap.folder, image_key("401031"))]
        assert row.sha256 == sha256(tiny_bucket.contents[cap.folder][image_key("401031")])
    assert max(rows[(c.folder, image_key("401031"))].attempts for c in tiny_bucket.captures) >= 2


def test_persistent_errors_fail_one_object_not_the_run(tiny_bucket, dask_threads, faults, tmp_path):
    out = tmp_path / "raw"
    cap = tiny_bucket.captures[0]
    faults.add("error", match=f"{cap.folder}/{image_key('400940')}", times=None, status=503, code="SlowDown")
    summary = fetch(out, **tiny_bucket.kwargs(client=dask_threads, retries=3))
    assert not summary.ok
    assert [r.path for r in summary.failed] == [f"{cap.folder}/{image_key('400940')}"]
    assert "gave up after 3 attempts" in summary.failed[0].error
    assert "SlowDown" in summary.failed[0].error
    assert summary.downloaded == summary.objects - 1
    rows = read_fetch_manifest(out)
    assert rows[(cap.folder, image_key("400940"))].status == "failed"
    assert not (out / cap.folder / image_key("400940")).exists()

    # The server recovers: a re-run fetches just that object, and the CLI exit codes follow.
    faults.clear()
    result = CliRunner().invoke(cli, ["fetch", str(out), "--no-progress", "--captures", cap.folder,
                                      "--source", tiny_bucket.source, "--endpoint-url", tiny_bucket.endpoint_url])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 downloaded" in result.output
    assert [r.path.rsplit("/", 1)[-1] for r in object_gets(faults)] == ["cam400940.zip"]


def test_cli_exit_code_is_1_when_objects_fail(tiny_bucket, faults, tmp_path):
    cap = tiny_bucket.captures[0]
    faults.add("error", match=image_key("401164"), times=None, status=403, code="AccessDenied")
    result = CliRunner().invoke(cli, ["fetch", str(tmp_path / "raw"), "--no-progress", "--captures", cap.folder,
                                      "--assets", "image", "-j", "2", "--source", tiny_bucket.source,
                                      "--endpoint-url", tiny_bucket.endpoint_url])  # fmt: skip
    assert result.exit_code == 1
    assert f"FAILED {cap.folder}/{image_key('401164')}" in result.output and "AccessDenied" in result.output


def test_local_source_directory(tiny_bucket, dask_threads, tmp_path):
    out = tmp_path / "raw"
    summary = fetch(
        out, **tiny_bucket.kwargs(client=dask_threads, source=str(tiny_bucket.root), endpoint_url=None)
    )
    assert summary.ok
    rows = read_fetch_manifest(out)
    for cap in tiny_bucket.captures:
        for key, data in tiny_bucket.contents[cap.folder].items():
            assert rows[(cap.folder, key)].sha256 == sha256(data)
            assert (out / cap.folder / key).read_bytes() == data
    assert rows[(tiny_bucket.captures[0].folder, CALIBRATION_KEY)].source.startswith(str(tiny_bucket.root))


def test_fetch_on_worker_processes(tiny_bucket, tmp_path):
    """A real LocalCluster with worker processes (the tasks and the Source must pickle)."""
    out = tmp_path / "raw"
    summary = fetch(out, **tiny_bucket.kwargs(workers=2, processes=True, assets="meta,segmentation",
                                              cameras="400940,401164"))  # fmt: skip
    assert summary.ok, summary.lines()
    rows = read_fetch_manifest(out)
    assert {k for _, k in rows} == set(capture_keys(["meta"], [])) | {
        segmentation_key("400940"),
        segmentation_key("401164"),
    }
    assert all(r.status == "ok" for r in rows.values()) and len(rows) == 2 * 5


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any object data moves
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": "5TB"}, ValueError, "unknown release size"),
        ({"assets": "image,depth"}, ValueError, "unknown asset"),
        ({"cameras": "999999"}, ValueError, "unknown camera"),
        ({"cameras": "../x"}, ValueError, "not camera ids"),
        ({"captures": "not-a-capture"}, ValueError, "not a capture folder name"),
        ({"captures": "missing.csv"}, FileNotFoundError, "no such file"),
        ({"captures": [release_capture_ids()[7].folder]}, CaptureNotFoundError, "not found"),
        ({"source": "ftp://x/y"}, ValueError, "expected s3://"),
        ({"reserve_bytes": 10**18}, DiskFullError, "not enough free space"),
    ],
)
def test_bad_input_gives_clear_errors(tiny_bucket, dask_threads, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        fetch(tmp_path / "raw", **tiny_bucket.kwargs(client=dask_threads, **kwargs))


def test_unwritable_out_and_cli_messages(tiny_bucket, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        fetch(blocker / "raw", **tiny_bucket.kwargs())
    result = CliRunner().invoke(cli, ["fetch", str(tmp_path / "raw"), "--size", "5TB"])
    assert result.exit_code == 2 and "5TB" in result.output  # a usage error
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "no fetch manifest" in result.output


HOSTILE_IDS = ["../../../../tmp/pwned", "a/b", "/etc/passwd"]


def test_unsafe_camera_ids_fail_their_capture_alone(local_s3, dask_threads, tmp_path):
    """Calibrations whose camera ids would build keys with '..', '/' or an absolute path: each such capture
    fails alone, on the record (its calibration row), with no download; the clean capture is fetched."""
    caps = release_capture_ids()[3:7]
    size_root = tmp_path / "hostile" / "evil" / "4TB"
    for cap, cam in zip(caps, HOSTILE_IDS):
        cal = size_root / cap.folder / CALIBRATION_KEY
        cal.parent.mkdir(parents=True)
        cal.write_text(json.dumps({"KRT": [{"cameraId": "400940"}, {"cameraId": cam}]}))
    clean = write_tiny_capture(size_root, caps[3], ["400940"], seed=3)
    upload_tree(local_s3.endpoint_url, LOCAL_BUCKET, tmp_path / "hostile")
    out = tmp_path / "raw"
    args = dict(captures=[c.folder for c in caps], source=f"s3://{LOCAL_BUCKET}/evil",
                endpoint_url=local_s3.endpoint_url, progress=False, retry_base_delay=0.01)  # fmt: skip
    summary = fetch(out, client=dask_threads, **args)
    assert not summary.ok and not summary.fatal
    assert sorted(r.path for r in summary.failed) == sorted(f"{c.folder}/{CALIBRATION_KEY}" for c in caps[:3])
    by_capture = {r.capture: r for r in summary.failed}
    for cap, cam in zip(caps, HOSTILE_IDS):
        error = by_capture[cap.folder].error
        assert "not plain names" in error and repr(cam) in error and "capture not fetched" in error
    rows = read_fetch_manifest(out)
    for key, data in clean.items():
        assert (
            rows[(caps[3].folder, key)].status == "ok" and (out / caps[3].folder / key).read_bytes() == data
        )
    for cap in caps[:3]:  # nothing of a hostile capture was written, not even its calibration
        assert rows[(cap.folder, CALIBRATION_KEY)].status == "failed"
        assert not (out / cap.folder).exists()
    assert not (tmp_path / "tmp").exists() and not list(tmp_path.rglob("pwned*"))

    result = CliRunner().invoke(cli, ["fetch", str(out), "--no-progress", "--captures", ",".join(c.folder for c in caps),
                                      "--source", args["source"], "--endpoint-url", local_s3.endpoint_url])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"FAILED {caps[0].folder}/{CALIBRATION_KEY}: UnsafePathError" in result.output
    assert "Traceback" not in result.output


def test_manifest_write_is_atomic_and_bad_manifest_is_named(tmp_path):
    row = FetchRow(capture="c", key="k", path="c/k", status="ok", bytes=3)
    write_fetch_manifest(tmp_path, [row])
    assert [p.name for p in manifest_path(tmp_path).parent.iterdir()] == ["fetch.parquet"]
    assert read_fetch_manifest(tmp_path)[("c", "k")].bytes == 3
    manifest_path(tmp_path).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="fetch.parquet"):
        read_fetch_manifest(tmp_path)


def test_demo_steps_fetch_a_generated_bucket(monkeypatch, tmp_path):
    """The demo's steps on a smaller synthetic bucket from ``generate_bucket``: real AVIF/PNG/PLY files go
    through the local S3 server and come back bit-identical, with the calibration's cameras."""
    from ava256 import demo as demo_mod
    from ava256.formats import read_calibration

    monkeypatch.setattr(demo_mod, "DEMO_CAPTURES", 1)
    monkeypatch.setattr(demo_mod, "DEMO_CAMERAS", 2)
    monkeypatch.setattr(demo_mod, "DEMO_FRAMES", 3)
    monkeypatch.setattr(demo_mod, "DEMO_IMAGE_SIZE", (84, 128))
    monkeypatch.setattr(demo_mod, "DEMO_TEXTURE_SIZE", 64)
    fetch_steps = [demo_mod.step_generate, demo_mod.step_serve, demo_mod.step_fetch, demo_mod.step_verify]
    monkeypatch.setattr(demo_mod, "STEPS", fetch_steps)  # the whole chain: tests/test_demo.py
    lines: list[str] = []
    d = demo_mod.run_demo(tmp_path / "demo", workers=2, echo=lines.append)
    assert d.results["fetch"].ok and d.results["verify"].clean
    assert any(line.startswith("[verify]") for line in lines)
    cap = d.captures[0]
    src = d.bucket_root / "ava-256" / "4TB" / cap.folder
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    rows = read_fetch_manifest(d.raw)
    assert sorted(k for _, k in rows) == files
    for key in files:
        assert (d.raw / cap.folder / key).read_bytes() == (src / key).read_bytes()
    cal = read_calibration((d.raw / cap.folder / CALIBRATION_KEY).read_bytes())
    assert {image_key(c) for c in cal.camera_ids} <= set(files) and len(cal.camera_ids) == 2


def test_captures_from_a_csv_of_ids(tiny_bucket, dask_threads, tmp_path):
    ids = tmp_path / "ids.csv"
    cap = tiny_bucket.captures[1]
    ids.write_text(f"mcd,sid,mct\n{cap.mcd},{cap.sid},{int(cap.mct)}\n")  # mct without its leading zero
    summary = fetch(
        tmp_path / "raw", **tiny_bucket.kwargs(client=dask_threads, captures=str(ids), assets="meta")
    )
    assert summary.ok and summary.captures == 1
    assert {c for c, _ in read_fetch_manifest(tmp_path / "raw")} == {cap.folder}
