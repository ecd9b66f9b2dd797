import pytest

from ava256 import capture as cat
from ava256.capture import (
    ASSETS,
    CaptureId,
    UnsafePathError,
    asset_keys,
    capture_keys,
    parse_assets,
    parse_size,
    read_capture_ids_csv,
    release_capture_ids,
    safe_relpath,
)


def test_release_ids_are_the_256_with_leading_zeros():
    ids = release_capture_ids()
    assert len(ids) == 256
    assert len(set(ids)) == 256
    first = ids[0]
    assert first == CaptureId("20230405", "1635", "AAN112")
    assert CaptureId("20230831", "0814", "ADL311") in ids  # mct keeps its leading zero
    assert all(len(c.mct) == 4 for c in ids)


@pytest.mark.parametrize(
    "name", ["20230831--0814--ADL311", "m--20230831--0814--ADL311--GHS", "20230831--0814--ADL311/"]
)
def test_both_folder_spellings_parse(name):
    cid = CaptureId.parse(name)
    assert cid == CaptureId("20230831", "0814", "ADL311")
    assert cid.folder == "20230831--0814--ADL311"
    assert cid.datasheet_folder == "m--20230831--0814--ADL311--GHS"


@pytest.mark.parametrize(
    "bad", ["", "2023--0814--X", "20230831-0814-ADL311", "20230831--814--ADL311", "../x"]
)
def test_bad_folder_names_fail(bad):
    with pytest.raises(ValueError):
        CaptureId.parse(bad)


def test_ids_csv_int_like_time_is_zero_padded():
    ids = read_capture_ids_csv(["mcd,sid,mct", "20230831,ADL311,814"])
    assert ids == [CaptureId("20230831", "0814", "ADL311")]
    with pytest.raises(ValueError, match="lacks column"):
        read_capture_ids_csv(["a,b", "1,2"])


def test_sizes_and_assets():
    assert parse_size("8tb").fps == 15.0
    with pytest.raises(ValueError, match="unknown release size"):
        parse_size("5TB")
    assert parse_assets("image") == ("meta", "image")
    assert parse_assets(None) == ASSETS
    with pytest.raises(ValueError, match="unknown asset"):
        parse_assets("images")
    assert asset_keys("image", ["400940"]) == ["decoder/image/cam400940.zip"]
    keys = capture_keys(ASSETS, ["1", "2"])
    assert len(keys) == len(set(keys))
    assert "decoder/segmentation_parts/cam2.zip" in keys
    assert "encoder/image/cam-cyclop.zip" in keys


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs", "a/../../b", "a\\b", "C:/x", "", "a\x00b"])
def test_unsafe_paths_rejected(bad):
    with pytest.raises(UnsafePathError):
        safe_relpath(bad)


def test_safe_paths_normalised():
    assert safe_relpath("decoder/./image/cam1.zip") == "decoder/image/cam1.zip"


@pytest.mark.parametrize("asset", sorted(cat.FRAME_ARCHIVES))
def test_every_archive_resolves_its_members_with_and_without_the_prefix(asset):
    arch = cat.frame_archive(asset)
    camera = {"image": "400940", "segmentation": "400940", "encoder_image": "cam-cyclop"}.get(asset, "")
    prefixed, bare = sorted(arch.patterns(camera), key=lambda p: "/" not in p)
    assert bare.startswith("{frame:06d}.") and prefixed.endswith(bare) and prefixed.count("/") == 1
    for pattern in (prefixed, bare):
        names = [arch.member(camera, f, pattern) for f in (3, 17, 123456)] + ["readme.txt"]
        assert cat.resolve_member_pattern(asset, names, camera) == pattern
    assert cat.resolve_member_pattern(asset, ["notes/000001.bin", "x.png"], camera) is None
    assert cat.resolve_member_pattern(asset, [], camera) is None


def test_segmentation_is_written_as_the_original_code_reads_it():
    assert cat.segmentation_member("400940", 12) == "cam400940/000012.png"
    assert cat.image_member("400940", 12) == "cam400940/000012.avif"
    assert cat.texture_member(12) == "color/000012.avif"
    # a zip mixing both forms resolves to the majority
    names = ["cam1/000001.png", "000002.png", "000003.png"]
    assert cat.resolve_member_pattern("segmentation", names, "1") == "{frame:06d}.png"
