"""`data_prep.verify` on real data sets edited by hand: swapped class names and shard paths that
leave the folder are refused."""

from __future__ import annotations

import json
import shutil

import pytest

from configuration_sketch import QuickDrawBuildConfig, RasterConfig
from data_prep import image_folder, quickdraw_build, tfrecords, verify


@pytest.fixture(scope="module")
def quickdraw_set(tmp_path_factory, quickdraw_dir):
    """cat, airplane and bicycle, 8 train and 3 test drawings each (every class fills its quota)."""
    out = tmp_path_factory.mktemp("verify") / "qd"
    config = QuickDrawBuildConfig(source=str(quickdraw_dir / "simplified"), format="simplified",
                                  categories="cat,airplane,bicycle", train_per_class=8, test_per_class=3,
                                  out=str(out), shards=2, workers=1, seed=0)
    info = quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    assert {n for split in info["splits"].values() for n in split["per_class"].values()} == {8, 3}
    return out


def edited_copy(source, dest, edit):
    shutil.copytree(source, dest)
    info = json.loads((dest / tfrecords.INFO_FILE).read_text())
    edit(info)
    (dest / tfrecords.INFO_FILE).write_text(json.dumps(info))
    return dest


def test_swapped_class_names_are_refused(quickdraw_set, tmp_path):
    assert verify.verify(quickdraw_set)["classes"] == 3

    def swap(info):
        assert info["classes"] == ["cat", "airplane", "bicycle"]
        info["classes"] = ["airplane", "cat", "bicycle"]  # equal per-class counts: only the records tell

    swapped = edited_copy(quickdraw_set, tmp_path / "swapped", swap)
    with pytest.raises(verify.VerificationError, match=r"class 'airplane' in dataset_info.json, but names its "
                                                       r"class 'cat'|class 'cat' in dataset_info.json, but names "
                                                       r"its class 'airplane'"):
        verify.verify(swapped)


def test_swapped_class_names_of_an_image_folder_are_refused(tmp_path, sketchy_dir):
    """Image folders and Sketchy name a record's class in its item_id ('<class>/<file>')."""
    source = tmp_path / "source"
    for category in ("apple", "axe"):
        (source / category).mkdir(parents=True)
        for png in sorted((sketchy_dir / "sketch" / category).glob("*.png"))[:6]:
            shutil.copy(png, source / category / png.name)
    out = tmp_path / "folder"
    assert image_folder.main(["image_folder", "build", "--source", str(source), "--out", str(out),
                              "--image_size", "32", "--test_fraction", "0.5", "--workers", "1"]) == 0
    info = json.loads((out / tfrecords.INFO_FILE).read_text())
    assert info["classes"] == ["apple", "axe"]
    assert verify.verify(out)["classes"] == 2
    counts = {split: s["per_class"] for split, s in info["splits"].items()}
    assert all(c["apple"] == c["axe"] for c in counts.values()), counts  # swapping keeps the counts right

    def swap(info):
        info["classes"] = ["axe", "apple"]

    with pytest.raises(verify.VerificationError, match="names its class"):
        verify.verify(edited_copy(out, tmp_path / "swapped", swap))


@pytest.mark.parametrize("outside", ["../outside.tfrecord", "{parent}/outside.tfrecord", "sub/../../outside.tfrecord"])
def test_a_shard_file_outside_the_folder_is_refused(quickdraw_set, tmp_path, outside):
    moved = {}

    def point_outside(info):
        shard = info["splits"]["train"]["shards"][0]
        moved["from"] = shard["file"]
        shard["file"] = outside.format(parent=tmp_path)

    data = edited_copy(quickdraw_set, tmp_path / "data", point_outside)
    (data / "sub").mkdir()
    # The shard itself, moved out: same bytes, size and sha256, so only its path is wrong.
    (data / moved["from"]).rename(tmp_path / "outside.tfrecord")
    with pytest.raises(verify.VerificationError, match="leaves the data set folder"):
        verify.verify(data)
    assert verify.main([str(data)]) == 1
