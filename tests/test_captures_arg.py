"""The one ``--captures`` parser of fetch and repack (``ava256/captures_arg.py``)."""

from __future__ import annotations

import pytest

from ava256.capture import CaptureId, release_capture_ids
from ava256.captures_arg import capture_folders, parse_captures
from ava256.pipeline import repack

IDS = release_capture_ids()[:3]


def test_comma_list_csv_and_sequences_agree(tmp_path):
    csv = tmp_path / "ids.csv"
    csv.write_text(
        "mcd,sid,mct\n"
        + "".join(f"{c.mcd},{c.sid},{c.mct}\n" for c in IDS)
        + f"{IDS[0].mcd},{IDS[0].sid},{IDS[0].mct}\n"
    )
    text = ",".join([IDS[0].folder, IDS[1].datasheet_folder, IDS[2].folder, IDS[0].folder])
    assert (
        parse_captures(text) == parse_captures(csv) == parse_captures(str(csv)) == list(IDS)
    )  # dups dropped
    assert parse_captures([IDS[0], IDS[1].folder]) == [IDS[0], IDS[1]]
    assert capture_folders(text) == [c.folder for c in IDS]
    for empty in (None, "", (), []):
        assert parse_captures(empty) is None and capture_folders(empty) is None


def test_bad_values_are_refused_alike_by_fetch_and_repack(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("mcd,sid,mct\n")
    cases = [
        ("missing.csv", FileNotFoundError, "no such file"),
        (str(empty), ValueError, "lists no captures"),
        (",,", ValueError, "lists no captures"),
        ("not-a-capture", ValueError, "not a capture folder name"),
    ]
    for value, error, match in cases:
        with pytest.raises(error, match=match):
            parse_captures(value)
        with pytest.raises(error, match=match):
            repack.parse_captures_arg(value)  # the name repack and its CLI use


def test_capture_id_objects_pass_through():
    assert parse_captures([CaptureId("20230101", "0930", "ABC")]) == [CaptureId("20230101", "0930", "ABC")]
