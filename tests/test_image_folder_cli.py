"""`image_folder.run_cli` (the image-folder and Sketchy build commands): an --out that cannot be written
is one line naming it, exit 1, not a traceback."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil

import pytest

from data_prep import image_folder, sketchy


def run(cli: str, source: pathlib.Path, out: pathlib.Path) -> int:
    module = image_folder if cli == "image_folder" else sketchy
    return module.main([cli, "build", "--source", str(source), "--out", str(out), "--image_size", "32",
                        "--workers", "1"])


@pytest.fixture
def sketches(tmp_path, sketchy_dir):
    """Two categories of real Sketchy sketches, three files each, as a labelled image folder."""
    source = tmp_path / "source"
    for category in ("apple", "axe"):
        (source / category).mkdir(parents=True)
        for png in sorted((sketchy_dir / "sketch" / category).glob("*.png"))[:3]:
            shutil.copy(png, source / category / png.name)
    return source


@pytest.mark.parametrize("cli", ["image_folder", "sketchy"])
def test_an_out_below_a_file_is_one_line(tmp_path, sketches, sketchy_dir, capsys, cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = run(cli, sketches if cli == "image_folder" else sketchy_dir, blocker / "out")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"data_prep.{cli}: NotADirectoryError") and str(blocker / "out") in err


@pytest.mark.parametrize("cli", ["image_folder", "sketchy"])
def test_a_read_only_out_is_one_line(tmp_path, sketches, sketchy_dir, capsys, monkeypatch, cli):
    out = tmp_path / "mounted_read_only"

    def read_only(self, *args, **kwargs):  # what mkdir meets on a read-only file system (even as root)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    code = run(cli, sketches if cli == "image_folder" else sketchy_dir, out)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "Read-only file system" in err and str(out) in err
