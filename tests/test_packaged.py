"""Packaged files: a zipped model folder is unzipped once, atomically, and only inside its folder."""

import zipfile

import pytest

from picovlm.packaged import UNZIPPED, unzip_once


def make_zip(path, members: dict[str, str]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_unzips_once_and_reuses_the_finished_folder(tmp_path):
    archive = make_zip(tmp_path / "m.zip", {"config.json": "{}", "1_Pooling/config.json": "{}"})
    out = unzip_once(archive, tmp_path / "cache" / "m")
    assert (out / "config.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    (out / "config.json").write_text("kept")  # a second call must not unzip again
    assert unzip_once(archive, out) == out and (out / "config.json").read_text() == "kept"
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no temporary folder left behind


def test_an_interrupted_extraction_is_redone(tmp_path):
    archive = make_zip(tmp_path / "m.zip", {"config.json": "{}"})
    out = tmp_path / "m"
    out.mkdir()
    (out / "half.bin").write_text("")  # no UNZIPPED marker: an extraction that died midway
    unzip_once(archive, out)
    assert (out / UNZIPPED).is_file() and (out / "config.json").is_file() and not (out / "half.bin").exists()


def test_a_member_outside_the_folder_is_refused(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"../escaped.txt": "x"})
    with pytest.raises(ValueError, match="points outside the folder"):
        unzip_once(archive, tmp_path / "cache" / "evil")
    assert not (tmp_path / "cache" / "escaped.txt").exists() and not (tmp_path / "cache" / "evil").exists()
