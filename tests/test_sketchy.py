"""The Sketchy build on the real sample (../shared/data/sketchy): counts, links, splits, skips."""

from __future__ import annotations

import collections
import pathlib
import re

import numpy as np
import pytest

from configuration_sketch import SketchyBuildConfig
from data_prep import image_folder, sketchy, tfrecords, verify
from data_prep.pipeline import load_split, parse_batch
from data_prep.skips import StrictModeError

SIZE = 32
UNSEEN = 25
TEXT = ["label", "domain", "domain_id", "item_id", "photo_id", "sketch_id", "source"]


def build(source, out, **kwargs) -> dict:
    args = {"image_size": SIZE, "workers": 1, "shards": 4, **kwargs}
    return sketchy.build(SketchyBuildConfig(source=str(source), out=str(out), **args), progress=False)


def read_split(out: pathlib.Path, split: str, images: bool = False) -> list[dict]:
    """Every record of a split as a dict of Python values (decoded image on request)."""
    import tensorflow as tf

    info = tfrecords.read_dataset_info(out)
    specs = tfrecords.feature_specs(info)
    names = TEXT + (["image"] if images else [])
    rows = []
    files = [str(p) for p in tfrecords.shard_paths(out, info, split)]
    for batch in tf.data.TFRecordDataset(files).batch(512):
        parsed = {k: v.numpy() for k, v in parse_batch(batch, specs, names).items()}
        for i in range(len(parsed["label"])):
            row = {k: (parsed[k][i].decode() if parsed[k].dtype == object else parsed[k][i]) for k in names}
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def built(sketchy_dir, tmp_path_factory):
    """The real sample at 32 px with 25 unseen classes (built once for this module)."""
    out = tmp_path_factory.mktemp("sketchy") / "ds"
    info = build(sketchy_dir, out, unseen_classes=str(UNSEEN))
    return out, info


def source_counts(sketchy_dir: pathlib.Path) -> dict:
    photos = {p.relative_to(sketchy_dir / "photo").with_suffix("").as_posix()
              for p in (sketchy_dir / "photo").glob("*/*.jpg")}
    sketches = sorted((sketchy_dir / "sketch").glob("*/*.png"))
    return {"photos": photos, "sketches": sketches,
            "sketched": {f"{s.parent.name}/{s.stem.rsplit('-', 1)[0]}" for s in sketches}}


def test_counts_equal_the_source(built, sketchy_dir):
    out, info = built
    src = source_counts(sketchy_dir)
    assert len(src["photos"]) == 3125 and len(src["sketches"]) == 3125 and len(src["sketched"]) == 578
    assert len(info["classes"]) == 125 and len(set(info["classes"])) == 125
    assert info["records"] == {"read": 6250, "written": 6250, "skipped": 0, "over_quota": 0}
    assert info["skipped"] == {}
    assert sum(d["photo"] for d in info["per_domain"].values()) == 3125
    assert sum(d["sketch"] for d in info["per_domain"].values()) == 3125
    assert sum(info["sketched_photos"].values()) == 578
    assert info["categories"]["reconciled"] == [] and info["categories"]["photo_only"] == []
    assert info["variants"] == {"photo": None, "sketch": None}
    for split, s in info["splits"].items():
        assert s["num_examples"] == info["per_domain"][split]["photo"] + info["per_domain"][split]["sketch"]
        assert sum(s["per_class"].values()) == s["num_examples"]
    # Per class, over all splits: the 25 photos and 25 sketches of the source folder.
    for c in info["classes"]:
        assert sum(info["splits"][s]["per_class"][c] for s in info["splits"]) == 50


def test_verify_passes_on_the_build(built):
    out, info = built
    summary = verify.verify(out)
    assert summary == {"splits": {s: v["num_examples"] for s, v in info["splits"].items()}, "classes": 125}
    assert info["id_feature"] == "item_id"
    assert verify.main([str(out)]) == 0


def test_every_sketch_links_to_its_photo_in_the_same_split(built, sketchy_dir):
    out, info = built
    photos, sketches = {}, []
    for split in info["splits"]:
        for row in read_split(out, split):
            row["split"] = split
            (photos.__setitem__(row["item_id"], row) if row["domain"] == "photo" else sketches.append(row))
    assert len(photos) == 3125 and len(sketches) == 3125
    per_photo = collections.Counter()
    for s in sketches:
        assert s["domain_id"] == 0 and s["sketch_id"] == s["item_id"]
        photo = photos[s["photo_id"]]
        assert photo["split"] == s["split"] and photo["label"] == s["label"]
        category, stem = s["item_id"].split("/")
        assert re.fullmatch(re.escape(s["photo_id"].split("/")[1]) + r"-\d+", stem)
        assert (sketchy_dir / s["source"]).is_file() and s["source"] == f"sketch/{category}/{stem}.png"
        per_photo[s["photo_id"]] += 1
    for p in photos.values():
        assert p["domain_id"] == 1 and p["sketch_id"] == "" and p["photo_id"] == p["item_id"]
        assert info["classes"][p["label"]] == p["item_id"].split("/")[0]
    expected = collections.Counter(f"{s.parent.name}/{s.stem.rsplit('-', 1)[0]}"
                                   for s in source_counts(sketchy_dir)["sketches"])
    assert per_photo == expected


def test_split_is_by_photo_and_stratified(built):
    out, info = built
    split_of_photo: dict[str, str] = {}
    for split in info["splits"]:
        for row in read_split(out, split):
            assert split_of_photo.setdefault(row["photo_id"], split) == split, f"{row['photo_id']} leaks"
    seen = info["classes"][:info["num_seen_classes"]]
    test_photos = info["per_class_domain"]["test"]
    for c in seen:
        assert test_photos[c]["photo"] == 5, "20% of each category's 25 photos"
        assert test_photos[c]["sketch"] >= 1, "every category keeps sketched photos in test"
        assert info["splits"]["train"]["per_class"][c] + info["splits"]["test"]["per_class"][c] == 50


def test_unseen_classes_are_held_out_whole(built):
    out, info = built
    unseen = info["unseen_classes"]
    assert len(unseen) == UNSEEN and info["num_seen_classes"] == 100
    assert info["classes"][100:] == unseen and info["classes"][:100] == sorted(info["classes"][:100])
    assert info["per_domain"]["test_unseen"] == {"sketch": 625, "photo": 625}
    for split in ("train", "test"):
        assert all(row["label"] < 100 for row in read_split(out, split))
    labels = collections.Counter(row["label"] for row in read_split(out, "test_unseen"))
    assert sorted(labels) == list(range(100, 125)) and set(labels.values()) == {50}


def test_images_match_the_source_and_load_grey_or_colour(built, sketchy_dir):
    out, info = built
    rows = read_split(out, "test", images=True)
    photo = next(r for r in rows if r["domain"] == "photo")
    sketch = next(r for r in rows if r["domain"] == "sketch")
    for row in (photo, sketch):
        data = (sketchy_dir / row["source"]).read_bytes()
        expected = image_folder.stored_image(data, row["domain"], SIZE, 3, "raw", 95)
        np.testing.assert_array_equal(row["image"], expected)
    assert (sketch["image"][..., 0] == sketch["image"][..., 2]).all(), "sketches stay grey"
    assert any((r["image"][..., 0] != r["image"][..., 2]).any() for r in rows if r["domain"] == "photo"), \
        "photos stay in colour"
    assert info["features"]["image"]["encoding"] == "raw", "auto stores raw up to 128 px"
    grey = next(iter(load_split(out, "test", 8, channels=1)))[0]
    colour = next(iter(load_split(out, "test", 8, channels=3, image_size=48)))[0]
    assert grey.shape == (8, SIZE, SIZE, 1) and colour.shape == (8, 48, 48, 3)


# --- Trees made in tmp_path from symlinks to the real files ---------------------------------

CATS = ["airplane", "car_(sedan)", "cat", "hot-air_balloon"]


def link_tree(sketchy_dir, root, photo_cats=None, sketch_cats=None, level="") -> pathlib.Path:
    """photo/ and sketch/ trees of symlinked category folders: {name in tree: real category}."""
    for tree, cats in (("photo", photo_cats), ("sketch", sketch_cats)):
        base = root / tree / level if level else root / tree
        base.mkdir(parents=True, exist_ok=True)
        for name, real in (cats or {c: c for c in CATS}).items():
            (base / name).symlink_to(sketchy_dir / tree / real, target_is_directory=True)
    return root


def link_files(sketchy_dir, root, tree, category, keep=lambda name: True) -> pathlib.Path:
    """A real folder of per-file symlinks (so files can be added or left out)."""
    folder = root / tree / category
    folder.mkdir(parents=True)
    for f in sorted((sketchy_dir / tree / category).iterdir()):
        if keep(f.name):
            (folder / f.name).symlink_to(f)
    return folder


def test_category_names_are_reconciled_and_one_tree_categories_reported(sketchy_dir, tmp_path):
    photo = {c: c for c in CATS} | {"zebra": "zebra"}
    sketch = {"airplane": "airplane", "Car (sedan)": "car_(sedan)", "CAT": "cat",
              "hot air balloon": "hot-air_balloon", "swan": "swan"}
    source = link_tree(sketchy_dir, tmp_path / "src", photo, sketch)
    (source / "photo" / "notes.txt").write_text("not a category")
    info = build(source, tmp_path / "out")
    assert info["classes"] == CATS
    reconciled = {r["class"]: (r["photo"], r["sketch"], r["rule"]) for r in info["categories"]["reconciled"]}
    assert reconciled == {"car_(sedan)": ("car_(sedan)", "Car (sedan)", "case/separators"),
                          "cat": ("cat", "CAT", "case/separators"),
                          "hot-air_balloon": ("hot-air_balloon", "hot air balloon", "case/separators")}
    assert info["categories"]["photo_only"] == ["zebra"] and info["categories"]["sketch_only"] == ["swan"]
    assert info["skipped"] == {"category_only_in_photo_tree": 25, "category_only_in_sketch_tree": 25,
                               "outside_category_folder": 1}
    assert info["records"] == {"read": 4 * 50 + 51, "written": 200, "skipped": 51, "over_quota": 0}
    lines = sketchy.report_lines(info)
    assert any("'Car (sedan)'" in line and "car_(sedan)" in line for line in lines)
    assert any("only in the photo tree" in line and "zebra" in line for line in lines)
    assert verify.verify(tmp_path / "out")["classes"] == 4


def test_match_keys_aliases_and_ambiguity():
    assert sketchy.match_key("Car (sedan)") == sketchy.match_key("car_(sedan)") == "car_(sedan)"
    assert sketchy.match_key("Hot Air-Balloon") == "hot_air_balloon"
    assert sketchy.match_key("effiel tower") == "eiffel_tower"
    cats = sketchy.reconcile_categories(["effiel_tower", "Wine Bottle"], ["eiffel_tower", "wine_bottle"])
    assert cats.folders == {"eiffel_tower": {"photo": "effiel_tower", "sketch": "eiffel_tower"},
                            "wine_bottle": {"photo": "Wine Bottle", "sketch": "wine_bottle"}}
    assert [r["rule"] for r in cats.reconciled] == ["known alias", "case/separators"]
    with pytest.raises(ValueError, match="Ambiguous categories in the sketch tree: 'cat' and 'Cat'"):
        sketchy.reconcile_categories(["cat"], ["cat", "Cat"])


def test_select_unseen_and_photo_splits():
    classes = [f"c{i}" for i in range(10)]
    chosen = sketchy.select_unseen("3", classes, seed=1)
    assert len(chosen) == 3 and chosen == sketchy.select_unseen("3", classes, seed=1) and chosen == sorted(chosen)
    assert sketchy.select_unseen("C2, c5", classes, seed=0) == ["c2", "c5"]
    assert sketchy.select_unseen("", classes, seed=0) == []
    for spec, message in (("10", "Expected 1..9"), ("c1,nope", "unknown categories nope"), ("c1,C1", "twice")):
        with pytest.raises(ValueError, match=message):
            sketchy.select_unseen(spec, classes, seed=0)
    photos = [f"p{i}" for i in range(25)]
    sketched = {"p1", "p2", "p3", "p4", "p5"}
    splits = sketchy.photo_splits(photos, sketched, 0.2, 0, "cat")
    assert sum(1 for p in sketched if splits[p] == "test") == 1
    assert sum(1 for p in photos if p not in sketched and splits[p] == "test") == 4
    assert splits == sketchy.photo_splits(list(reversed(photos)), sketched, 0.2, 0, "cat"), "order-free"
    assert splits != sketchy.photo_splits(photos, sketched, 0.2, 1, "cat"), "the seed matters"


def test_bad_files_are_counted_skips_and_strict_mode_stops(sketchy_dir, tmp_path):
    """A corrupt photo (its sketches follow it out), a missing photo, a stray text file and a
    badly named sketch: each a counted skip with its reason; --strict stops at the first."""
    source = tmp_path / "src"
    sketched = sorted({f.name.rsplit("-", 1)[0] for f in (sketchy_dir / "sketch" / "cat").iterdir()})
    corrupt, missing = sketched[0], sketched[1]
    link_files(sketchy_dir, source, "photo", "cat", keep=lambda n: n not in (f"{corrupt}.jpg", f"{missing}.jpg"))
    link_files(sketchy_dir, source, "sketch", "cat")
    good = (sketchy_dir / "photo" / "cat" / f"{corrupt}.jpg").read_bytes()
    (source / "photo" / "cat" / f"{corrupt}.jpg").write_bytes(good[: len(good) // 2])
    (source / "photo" / "cat" / "readme.txt").write_text("hello")
    (source / "sketch" / "cat" / "cat.png").symlink_to(sketchy_dir / "sketch" / "cat" / f"{sketched[2]}-1.png")
    n_corrupt = len(list((sketchy_dir / "sketch" / "cat").glob(f"{corrupt}-*.png")))
    n_missing = len(list((sketchy_dir / "sketch" / "cat").glob(f"{missing}-*.png")))

    info = build(source, tmp_path / "out")
    assert info["skipped"] == {"not_an_image": 1, "photo_missing": n_missing, "photo_unreadable": n_corrupt,
                               "unparsable_sketch_name": 1, "unreadable_image": 1}
    assert info["records"]["read"] == 25 + 26
    assert info["records"]["written"] == 23 + 25 - n_corrupt - n_missing
    assert "cat/" + corrupt in info["skip_examples"]["unreadable_image"]
    assert verify.verify(tmp_path / "out")["classes"] == 1

    with pytest.raises(StrictModeError, match=r"photo/cat/.*(readme.txt: not_an_image|\.jpg: unreadable_image)"):
        build(source, tmp_path / "strict", strict=True)
    argv = ["sketchy", "build", "--source", str(source), "--out", str(tmp_path / "cli"), "--strict",
            "--image_size", "16", "--workers", "1"]
    assert sketchy.main(argv) == 1


def test_augmentation_level_and_variants(sketchy_dir, tmp_path):
    source = link_tree(sketchy_dir, tmp_path / "src", {"cat": "cat"}, {"cat": "cat"}, level="tx_000000000000")
    (source / "sketch" / "tx_000000000010").mkdir()
    (source / "sketch" / "tx_000000000010" / "cat").symlink_to(sketchy_dir / "sketch" / "cat")
    info = build(source, tmp_path / "out")
    assert info["variants"] == {"photo": "tx_000000000000", "sketch": "tx_000000000000"}
    assert info["records"]["written"] == 50
    other = build(source, tmp_path / "out2", sketch_variant="tx_000000000010")
    assert other["variants"]["sketch"] == "tx_000000000010" and other["records"]["written"] == 50
    with pytest.raises(ValueError, match="--sketch_variant: 'tx_000100000000'.*tx_000000000000, tx_000000000010"):
        build(source, tmp_path / "out3", sketch_variant="tx_000100000000")
    with pytest.raises(ValueError, match="has no photo/ folder.*Did you mean --source"):
        build(tmp_path, tmp_path / "out4")


def test_encoded_storage_keeps_the_source_bytes_and_decodes(sketchy_dir, tmp_path):
    source = link_tree(sketchy_dir, tmp_path / "src", {"cat": "cat"}, {"cat": "cat"})
    info = build(source, tmp_path / "enc", image_size=128, encoding="encoded")
    assert info["features"]["image"]["encoding"] == "png|jpeg"
    assert verify.verify(tmp_path / "enc")["classes"] == 1
    import tensorflow as tf

    files = [str(p) for s in info["splits"] for p in tfrecords.shard_paths(tmp_path / "enc", info, s)]
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "source": tf.io.FixedLenFeature([], tf.string)}
    for record in tf.data.TFRecordDataset(files).take(10):
        f = tf.io.parse_single_example(record, spec)
        assert f["image"].numpy() == (sketchy_dir / f["source"].numpy().decode()).read_bytes(), "no re-encoding"
    small = build(source, tmp_path / "enc32", encoding="encoded")
    raw = build(source, tmp_path / "raw32", encoding="raw")
    assert small["features"]["image"]["encoding"] == "png|jpeg" and raw["features"]["image"]["encoding"] == "raw"
    enc_rows = {r["item_id"]: r for r in read_split(tmp_path / "enc32", "train", images=True)}
    photo_errors = []
    for row in read_split(tmp_path / "raw32", "train", images=True):
        other = enc_rows[row["item_id"]]["image"]
        if row["domain"] == "sketch":
            np.testing.assert_array_equal(other, row["image"], err_msg="PNG is lossless")
        else:
            photo_errors.append(np.abs(other.astype(int) - row["image"]).mean())
    assert len(photo_errors) == 20 and np.mean(photo_errors) < 4 and max(photo_errors) < 8, "JPEG q95 is close"
    assert sum(s["num_bytes"] for s in small["splits"]["train"]["shards"]) < \
        sum(s["num_bytes"] for s in raw["splits"]["train"]["shards"])


def test_cli_builds_and_rejects_bad_arguments(sketchy_dir, tmp_path, capsys):
    source = link_tree(sketchy_dir, tmp_path / "src", {"cat": "cat", "dog": "dog"}, {"cat": "cat", "dog": "dog"})
    argv = ["sketchy", "build", "--source", str(source), "--out", str(tmp_path / "out"), "--image_size", "16",
            "--unseen_classes", "dog", "--workers", "1", "--shards", "2"]
    assert sketchy.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"2 classes; train \d+, test \d+, test_unseen 50; skipped 0 files", printed)
    assert "unseen classes (1): dog" in printed
    assert verify.main([str(tmp_path / "out")]) == 0
    assert sketchy.main(argv[:-2] + ["--test_fraction", "1.5"]) == 1
    assert "--test_fraction: 1.5" in capsys.readouterr().err
    assert sketchy.main(["sketchy", "build", "--no_such_flag", "1"]) == 2
    assert sketchy.main(["sketchy", "--source", str(source)]) == 2


@pytest.mark.slow
def test_two_workers_write_the_same_shards(sketchy_dir, tmp_path):
    source = link_tree(sketchy_dir, tmp_path / "src")
    one = build(source, tmp_path / "one", workers=1)
    two = build(source, tmp_path / "two", workers=2)
    assert one["splits"] == two["splits"], "shard bytes (sha256) do not depend on the worker count"


# --------------------------------------------------------------------------- hardening


def test_16_bit_photo_and_exif_turned_sketch_are_stored_as_seen(sketchy_dir, tmp_path):
    """A real photo as a 16-bit grey PNG (8-bit v stored as v * 257) comes back as v in each channel,
    not clipped to near-white; its real sketch saved with EXIF orientation 6 is stored turned upright."""
    from PIL import Image

    real_sketch = sorted((sketchy_dir / "sketch" / "cat").glob("*.png"))[0]
    stem = real_sketch.stem.rsplit("-", 1)[0]
    source = tmp_path / "src"
    (source / "photo" / "cat").mkdir(parents=True)
    (source / "sketch" / "cat").mkdir(parents=True)
    grey = np.asarray(Image.open(sketchy_dir / "photo" / "cat" / f"{stem}.jpg").convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(source / "photo" / "cat" / f"{stem}.png")
    sketch = Image.open(real_sketch).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display
    sketch.save(source / "sketch" / "cat" / real_sketch.name, exif=exif)
    build(source, tmp_path / "out", image_size=128, test_fraction=0.0)
    rows = {r["domain"]: r for r in read_split(tmp_path / "out", "train", images=True)}
    np.testing.assert_array_equal(rows["photo"]["image"], np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(rows["sketch"]["image"], np.rot90(np.asarray(sketch), k=-1))


def test_a_class_left_without_test_photos_is_refused_then_reported(sketchy_dir, tmp_path, capsys):
    """'dog' with one sketched photo: 20% of 1 rounds to 0, so dog has no test example; the build stops
    naming it, and --allow_empty_classes builds it with the shortfall listed."""
    source = link_tree(sketchy_dir, tmp_path / "src", {"cat": "cat"}, {"cat": "cat"})
    real = sorted((sketchy_dir / "sketch" / "dog").glob("*.png"))[0]
    stem = real.stem.rsplit("-", 1)[0]
    for tree, name in (("photo", f"{stem}.jpg"), ("sketch", real.name)):
        (source / tree / "dog").mkdir()
        (source / tree / "dog" / name).symlink_to(sketchy_dir / tree / "dog" / name)
    argv = ["sketchy", "build", "--source", str(source), "--out", str(tmp_path / "out"), "--image_size", "16",
            "--workers", "1"]
    assert sketchy.main(argv) == 1
    assert "1 class/split pair(s) have 0 examples: 'dog' in test" in capsys.readouterr().err
    assert sketchy.main(argv + ["--allow_empty_classes"]) == 0
    assert "short: dog test 0/1" in capsys.readouterr().out
    info = tfrecords.read_dataset_info(tmp_path / "out")
    assert info["shortfalls"] == [{"class": "dog", "split": "test", "examples": 0, "wanted": 1}]
    assert info["splits"]["train"]["per_class"]["dog"] == 2, "its photo and its sketch"
    assert info["per_class_domain"]["test"]["cat"]["photo"] == 5, "20% of cat's 25 photos"


def test_class_folder_names_are_normalised_or_counted_skips(sketchy_dir, tmp_path):
    """Names with a leading space or a newline become the spelling key ('cat', 'do_g'); a backslash
    cannot be in a class name: that folder's files are counted skips and the build goes on."""
    source = link_tree(sketchy_dir, tmp_path / "src", {" cat": "cat", "do\ng": "dog", "ow\\l": "owl"},
                       {" cat": "cat", "do\ng": "dog", "ow\\l": "owl"})
    info = build(source, tmp_path / "out")
    assert info["classes"] == ["cat", "do_g"]
    assert info["skipped"] == {"bad_category_name": 50}
    assert info["records"] == {"read": 150, "written": 100, "skipped": 50, "over_quota": 0}
    assert info["skip_examples"]["bad_category_name"].startswith("'photo/ow\\\\l/")


@pytest.mark.parametrize("name, count", [("sketchy_unseen_21_yelamarthi2018.txt", 21),
                                         ("sketchy_unseen_25_shen2018.txt", 25)])
def test_the_literature_split_files_select_their_categories_of_the_real_sample(sketchy_dir, tmp_path, name, count):
    """data_prep/splits holds the zero-shot splits of Yelamarthi et al. (2018, 21 classes) and Shen et
    al. (2018, 25 classes); their citation lines are comments, and every name each lists is a category
    folder of the real Sketchy sample."""
    split = pathlib.Path(__file__).resolve().parents[1] / "data_prep" / "splits" / name
    listed = [line for line in split.read_text().splitlines() if line and not line.startswith("#")]
    classes = sorted(p.name for p in (sketchy_dir / "photo").iterdir() if p.is_dir())
    assert len(listed) == len(set(listed)) == count and set(listed) <= set(classes)
    assert sketchy.select_unseen(f"@{split}", classes, seed=0) == sorted(listed)
    (tmp_path / "commented.txt").write_text("# a comment\n\ncabin\n  # another\nbat\n")
    assert sketchy.select_unseen(f"@{tmp_path / 'commented.txt'}", classes, seed=0) == ["bat", "cabin"]
