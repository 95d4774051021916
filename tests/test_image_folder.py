"""Labelled image folders: a TU-Berlin-like `<root>/<category>/<n>.png` tree of real sketches."""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import pytest

from configuration_sketch import ImageFolderBuildConfig
from data_prep import builder, image_folder, tfrecords, verify
from data_prep.pipeline import load_split, parse_batch
from data_prep.skips import BadRecord, StrictModeError

CATS = ["bear", "cat", "dog", "owl"]
PER_CLASS = 10


def make_tree(sketchy_dir: pathlib.Path, root: pathlib.Path, bad: bool = True) -> pathlib.Path:
    """<root>/<category>/<n>.png symlinks to real Sketchy sketches; with `bad`, one corrupt PNG,
    one text file in a category, one file outside any category and a hidden folder."""
    for category in CATS:
        folder = root / category
        folder.mkdir(parents=True)
        for n, real in enumerate(sorted((sketchy_dir / "sketch" / category).glob("*.png"))[:PER_CLASS]):
            (folder / f"{n + 1}.png").symlink_to(real)
    if bad:
        good = (root / "cat" / "1.png").read_bytes()
        (root / "cat" / "99.png").write_bytes(good[: len(good) // 3])
        (root / "dog" / "notes.txt").write_text("drawn on a tablet")
        (root / "filelist.txt").write_text("bear/1.png\n")
        (root / ".cache").mkdir()
    return root


def build(source, out, **kwargs) -> dict:
    args = {"image_size": 32, "workers": 1, "shards": 2, **kwargs}
    return image_folder.build(ImageFolderBuildConfig(source=str(source), out=str(out), **args), progress=False)


def records(out: pathlib.Path, split: str, names=("label", "domain", "item_id", "photo_id", "sketch_id", "source")):
    import tensorflow as tf

    info = tfrecords.read_dataset_info(out)
    specs = tfrecords.feature_specs(info)
    files = [str(p) for p in tfrecords.shard_paths(out, info, split)]
    rows = []
    for batch in tf.data.TFRecordDataset(files).batch(256):
        parsed = {k: v.numpy() for k, v in parse_batch(batch, specs, list(names)).items()}
        for i in range(len(parsed["label"])):
            rows.append({k: v[i].decode() if v.dtype == object else v[i] for k, v in parsed.items()})
    return rows


def test_build_counts_skips_and_verifies(sketchy_dir, tmp_path):
    source = make_tree(sketchy_dir, tmp_path / "tu")
    info = build(source, tmp_path / "out", grayscale=True)
    assert info["classes"] == CATS and info["domains"] == ["sketch"] and info["ignored_folders"] == [".cache"]
    assert info["skipped"] == {"not_an_image": 1, "outside_category_folder": 1, "unreadable_image": 1}
    assert info["records"] == {"read": 4 * PER_CLASS + 3, "written": 4 * PER_CLASS, "skipped": 3, "over_quota": 0}
    assert "cat/99.png" in info["skip_examples"]["unreadable_image"]
    assert "dog/notes.txt" in info["skip_examples"]["not_an_image"]
    for category in CATS:
        assert info["splits"]["test"]["per_class"][category] == 2, "20% of 10 images"
        assert info["splits"]["train"]["per_class"][category] == 8
    assert info["per_domain"] == {"train": {"sketch": 32, "photo": 0}, "test": {"sketch": 8, "photo": 0}}
    assert info["features"]["image"]["shape"] == [32, 32, 1]
    assert verify.verify(tmp_path / "out")["splits"] == {"train": 32, "test": 8}
    rows = records(tmp_path / "out", "train") + records(tmp_path / "out", "test")
    assert len({r["item_id"] for r in rows}) == 40
    for r in rows:
        assert r["domain"] == "sketch" and r["sketch_id"] == r["item_id"] and r["photo_id"] == ""
        assert r["source"] == r["item_id"] and CATS[r["label"]] == r["item_id"].split("/")[0]
    images, labels = next(iter(load_split(tmp_path / "out", "test", 8, channels=3)))
    assert images.shape == (8, 32, 32, 3) and sorted(collections.Counter(labels.numpy()).values()) == [2, 2, 2, 2]


def test_images_are_the_resized_source(sketchy_dir, tmp_path):
    source = make_tree(sketchy_dir, tmp_path / "tu", bad=False)
    build(source, tmp_path / "out", image_size=48)
    import tensorflow as tf

    info = tfrecords.read_dataset_info(tmp_path / "out")
    specs = tfrecords.feature_specs(info)
    files = [str(p) for p in tfrecords.shard_paths(tmp_path / "out", info, "train")]
    record = next(iter(tf.data.TFRecordDataset(files)))
    f = parse_batch(record[None], specs, ["image", "source"])
    data = (source / f["source"][0].numpy().decode()).read_bytes()
    pixels, mode, fmt = image_folder.load_image(data, 3)
    assert fmt == "PNG" and pixels.shape == (128, 128, 3)
    expected = image_folder.resize_square(pixels, 48)
    np.testing.assert_array_equal(f["image"][0].numpy(), expected)


def test_strict_mode_stops_at_the_corrupt_file(sketchy_dir, tmp_path):
    source = make_tree(sketchy_dir, tmp_path / "tu")
    (source / "dog" / "notes.txt").unlink()
    (source / "filelist.txt").unlink()
    with pytest.raises(StrictModeError, match=r"cat/99.png: unreadable_image"):
        build(source, tmp_path / "out", strict=True)
    argv = ["image_folder", "build", "--source", str(source), "--out", str(tmp_path / "cli"), "--strict",
            "--workers", "1"]
    assert image_folder.main(argv) == 1


def test_photo_domain_encoded_storage_and_an_empty_test_split(sketchy_dir, tmp_path):
    root = tmp_path / "photos"
    for category in CATS[:2]:
        (root / category).mkdir(parents=True)
        for real in sorted((sketchy_dir / "photo" / category).glob("*.jpg"))[:5]:
            (root / category / real.name).symlink_to(real)
    info = build(root, tmp_path / "out", domain="photo", encoding="encoded", test_fraction=0.0)
    assert info["features"]["image"]["encoding"] == "png|jpeg"
    assert info["splits"]["test"]["num_examples"] == 0 and info["splits"]["train"]["num_examples"] == 10
    assert verify.verify(tmp_path / "out")["splits"] == {"train": 10, "test": 0}
    rows = records(tmp_path / "out", "train")
    assert all(r["domain"] == "photo" and r["photo_id"] == r["item_id"] and r["sketch_id"] == "" for r in rows)
    images, _ = next(iter(load_split(tmp_path / "out", "train", 10)))
    assert images.shape == (10, 32, 32, 3)


def test_encoding_choice_and_image_helpers():
    assert image_folder.resolve_encoding("auto", 64) == "raw"
    assert image_folder.resolve_encoding("auto", 128) == "raw"
    assert image_folder.resolve_encoding("auto", 256) == "png|jpeg"
    assert image_folder.resolve_encoding("raw", 256) == "raw"
    with pytest.raises(ValueError, match="--encoding: 'webp'"):
        image_folder.resolve_encoding("webp", 64)
    for data in (b"", b"plain text", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20):
        with pytest.raises(BadRecord) as e:
            image_folder.load_image(data, 3)
        assert e.value.reason == "unreadable_image"
    # A sketch on a transparent canvas comes out dark on white, not on black.
    from PIL import Image
    import io

    canvas = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    canvas.putpixel((3, 3), (0, 0, 0, 255))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    pixels, mode, _ = image_folder.load_image(buf.getvalue(), 1)
    assert mode == "RGBA" and pixels.shape == (8, 8, 1) and pixels[0, 0, 0] == 255 and pixels[3, 3, 0] == 0
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    png = image_folder.encode_image(grey, "sketch", 95)
    assert Image.open(io.BytesIO(png)).mode == "L", "grey sketches are stored with one channel"
    assert image_folder.test_items([f"x{i}" for i in range(10)], 0.25, 0, "a") == \
        image_folder.test_items([f"x{i}" for i in reversed(range(10))], 0.25, 0, "a")
    assert len(image_folder.test_items([f"x{i}" for i in range(10)], 0.25, 0, "a")) == 3  # round(2.5) up


def test_cli_and_argument_errors(sketchy_dir, tmp_path, capsys):
    source = make_tree(sketchy_dir, tmp_path / "tu", bad=False)
    argv = ["image_folder", "build", "--source", str(source), "--out", str(tmp_path / "out"), "--image_size", "16",
            "--workers", "1", "--grayscale"]
    assert image_folder.main(argv) == 0
    assert "wrote" in capsys.readouterr().out and verify.main([str(tmp_path / "out")]) == 0
    with pytest.raises(ValueError, match="--image_size: 4"):
        build(source, tmp_path / "x", image_size=4)
    with pytest.raises(ValueError, match="--domain: 'drawing'"):
        build(source, tmp_path / "x", domain="drawing")
    with pytest.raises(ValueError, match="not a folder"):
        build(tmp_path / "missing", tmp_path / "x")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds no category folder"):
        build(tmp_path / "flat", tmp_path / "x")


# --------------------------------------------------------------------------- hardening (bit depth, EXIF, size, links)


def real_sketch(sketchy_dir: pathlib.Path, n: int = 0) -> pathlib.Path:
    return sorted((sketchy_dir / "sketch" / "cat").glob("*.png"))[n]


def real_photo(sketchy_dir: pathlib.Path, n: int = 0) -> pathlib.Path:
    return sorted((sketchy_dir / "photo" / "cat").glob("*.jpg"))[n]


def test_16_bit_png_is_scaled_and_exif_orientation_applied(sketchy_dir, tmp_path):
    """A real photo as a 16-bit grey PNG (each 8-bit value v stored as v * 257) must come back as v,
    not clipped to near-white; a real sketch saved with EXIF orientation 6 (turn 90 degrees clockwise
    to display) must be stored upright, also where encoded storage would keep the file's own bytes."""
    from PIL import Image

    root = tmp_path / "tree"
    for name in ("deep", "turned"):
        (root / name).mkdir(parents=True)
    grey = np.asarray(Image.open(real_photo(sketchy_dir)).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "deep" / "photo16.png")
    assert Image.open(root / "deep" / "photo16.png").mode == "I;16"
    sketch = Image.open(real_sketch(sketchy_dir)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    sketch.save(root / "turned" / "sketch.png", exif=exif)
    upright = np.rot90(np.asarray(sketch), k=-1)
    assert not np.array_equal(upright, np.asarray(sketch)), "the sketch is not symmetric under rotation"
    build(root, tmp_path / "out", image_size=128, encoding="encoded", test_fraction=0.0)
    rows = {r["item_id"]: r for r in records(tmp_path / "out", "train", names=("label", "item_id", "image"))}
    stored = rows["deep/photo16.png"]["image"]
    assert stored.shape == (128, 128, 3)
    for channel in range(3):
        np.testing.assert_array_equal(stored[..., channel], grey)
    assert abs(float(stored.mean()) - float(grey.mean())) < 1 and grey.mean() < 200
    np.testing.assert_array_equal(rows["turned/sketch.png"]["image"], upright)


def test_too_large_image_is_a_counted_skip_decided_from_the_header(sketchy_dir, tmp_path):
    """A real sketch blown up to 8,001 x 8,001 pixels (26 KB as a 1-bit PNG, about 64 MB a channel
    decoded) is refused from its header, before any pixel is decoded: even its first 2,000 bytes,
    which hold no complete image, are refused for size."""
    from PIL import Image

    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").symlink_to(real_sketch(sketchy_dir))
    huge = Image.open(real_sketch(sketchy_dir, 1)).convert("1").resize((8001, 8001), Image.NEAREST)
    huge.save(root / "cat" / "huge.png")
    info = build(root, tmp_path / "out", test_fraction=0.0)
    assert info["skipped"] == {"too_large": 1}
    assert info["skip_examples"]["too_large"] == "cat/huge.png: too_large (8001 x 8001 pixels > 64,000,000)"
    assert info["splits"]["train"]["per_class"] == {"cat": 1}
    data = (root / "cat" / "huge.png").read_bytes()
    assert len(data) < 100_000
    with pytest.raises(BadRecord, match="too_large: 8001 x 8001 pixels"):
        image_folder.load_image(data[:2000], 3)


def test_links_and_random_bytes_are_named_for_what_they_are(sketchy_dir, tmp_path):
    import random

    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").symlink_to(real_sketch(sketchy_dir))
    (root / "cat" / "loop.png").symlink_to(root / "cat" / "loop.png")
    (root / "cat" / "gone.png").symlink_to(tmp_path / "deleted.png")
    (root / "cat" / "noise.png").write_bytes(random.Random(0).randbytes(3000))
    info = build(root, tmp_path / "out", test_fraction=0.0)
    assert info["skipped"] == {"broken_link": 2, "unreadable_image": 1}
    assert info["records"] == {"read": 4, "written": 1, "skipped": 3, "over_quota": 0}
    examples = info["skip_examples"]
    assert examples["unreadable_image"].startswith("cat/noise.png: unreadable_image (not in an image format")
    assert "BytesIO" not in examples["unreadable_image"]
    assert examples["broken_link"] == "cat/gone.png: broken_link (a symbolic link to " \
        f"{str(tmp_path / 'deleted.png')!r}, which does not exist)"
    (root / "cat" / "gone.png").unlink()
    with pytest.raises(StrictModeError, match=r"^cat/loop.png: broken_link \(a symbolic link loop\)$"):
        build(root, tmp_path / "strict", test_fraction=0.0, strict=True)


# --------------------------------------------------------------------------- short and empty classes, unsafe names


def test_empty_classes_are_refused_and_short_ones_reported(sketchy_dir, tmp_path, capsys):
    """An empty class folder, and a class of 2 images whose 20% test share rounds to 0, stop the build
    naming both; --allow_empty_classes builds and lists them in `shortfalls` and the summary line."""
    root = tmp_path / "tree"
    reals = sorted((sketchy_dir / "sketch" / "cat").glob("*.png"))
    for category, n in (("cat", 10), ("dog", 2), ("owl", 0)):
        (root / category).mkdir(parents=True)
        for k in range(n):
            (root / category / f"{k}.png").symlink_to(reals[k])
    with pytest.raises(builder.BuildError, match=r"3 class/split pair\(s\) have 0 examples: 'dog' in test, 'owl' in "
                                                r"train, 'owl' in test .*--allow_empty_classes"):
        build(root, tmp_path / "out")
    argv = ["image_folder", "build", "--source", str(root), "--out", str(tmp_path / "cli"), "--workers", "1",
            "--image_size", "16"]
    assert image_folder.main(argv) == 1
    assert "--allow_empty_classes" in capsys.readouterr().err
    assert image_folder.main(argv + ["--allow_empty_classes"]) == 0
    line = capsys.readouterr().out
    assert "short: dog test 0/1, owl train 0/1, owl test 0/1" in line
    info = tfrecords.read_dataset_info(tmp_path / "cli")
    assert info["shortfalls"] == [{"class": "dog", "split": "test", "examples": 0, "wanted": 1},
                                  {"class": "owl", "split": "train", "examples": 0, "wanted": 1},
                                  {"class": "owl", "split": "test", "examples": 0, "wanted": 1}]
    # round(0.2 * 10) = 2 test images of cat; dog's 2 images both train.
    assert info["splits"]["test"]["per_class"] == {"cat": 2, "dog": 0, "owl": 0}
    assert info["splits"]["train"]["per_class"] == {"cat": 8, "dog": 2, "owl": 0}


def test_unsafe_class_folder_names_are_counted_skips(sketchy_dir, tmp_path):
    """Folders named ' cat' (leading space), 'ca\\nt' (a newline) or 'a:b' are not classes: their files
    are counted skips (bad_category_name) and the build goes on with the others."""
    root = make_tree(sketchy_dir, tmp_path / "tu", bad=False)
    real = real_sketch(sketchy_dir)
    for name in (" cat", "ca\nt", "a:b"):
        (root / name).mkdir()
        (root / name / "1.png").symlink_to(real)
    (root / "ca\nt" / "2.png").symlink_to(real)
    info = build(root, tmp_path / "out")
    assert info["classes"] == CATS
    assert info["skipped"] == {"bad_category_name": 4}
    assert info["records"] == {"read": 4 * PER_CLASS + 4, "written": 4 * PER_CLASS, "skipped": 4, "over_quota": 0}
    assert all("\n" not in message for message in info["skip_examples"].values()), "one-line messages"
    assert info["skip_examples"]["bad_category_name"].startswith("' cat/1.png': bad_category_name (folder ' cat'")
