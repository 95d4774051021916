"""retrieval.lookup: image files and drawings embedded through the exported model's endpoints.

Real Quick, Draw! drawings rasterized with data_prep.raster; tiny untrained models, so every check
compares an identical drawing sent in other forms (formats, polarity, alpha, 16-bit, EXIF) with an
independent computation: the Keras model on the raster itself, np.packbits of its output.
"""

from __future__ import annotations

import io
import pathlib

import keras
import numpy as np
import orjson
import pytest
from PIL import Image

import configuration_sketch as cs
from data_prep.raster import rasterize
from serving.features import save_features
from retrieval.lookup import (QueryError, embed_files, embed_query, encoded_image, feature_file_vectors,
                              index_image_folder, index_metric, list_image_folder, prepare_query)
from serving import model as serving_model
from serving.export import export_model

CLASSES = ["apple", "cat", "house", "star"]
PER_CLASS = 4
SIZE = 28
BITS = 24


def real_drawings(quickdraw_dir, size=SIZE):
    """[(class, key_id, uint8 (size, size) white-on-black raster)] of the first drawings per class."""
    out = []
    for name in CLASSES:
        for line in (quickdraw_dir / "simplified" / f"{name}.ndjson").read_bytes().splitlines()[:PER_CLASS]:
            record = orjson.loads(line)
            strokes = [np.asarray(s[:2], np.float32).T for s in record["drawing"]]
            out.append((name, str(record["key_id"]), rasterize(strokes, image_size=size)))
    return out


def tiny_classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(16, activation="relu", name="features")(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES), name="logits")(features))


def tiny_hash_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(BITS, activation="tanh", name="codes")(x))


@pytest.fixture(scope="module")
def drawings(quickdraw_dir):
    return real_drawings(quickdraw_dir)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    keras_model = tiny_classifier()
    out = tmp_path_factory.mktemp("classifier")
    export_model(keras_model, out, class_names=CLASSES, image_size=SIZE, channels=1, polarity="white_on_black")
    features = keras.Model(keras_model.input, keras_model.get_layer("features").output)
    return serving_model.load(out), features


@pytest.fixture(scope="module")
def hasher(tmp_path_factory):
    keras_model = tiny_hash_model()
    out = tmp_path_factory.mktemp("hash")
    export_model(keras_model, out, class_names=None, image_size=SIZE, channels=1, kind="hash",
                 polarity="white_on_black")
    return serving_model.load(out), keras_model


def save_folder(root: pathlib.Path, drawings, render=lambda x: x) -> pathlib.Path:
    """<root>/<class>/<key_id>.png of each drawing, its pixels passed through `render`."""
    for name, key, image in drawings:
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(image)).save(root / name / f"{key}.png")
    return root


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_tf_formats_are_sent_as_they_are(drawings, tmp_path):
    image = Image.fromarray(drawings[0][2])
    for fmt, suffix, img in [("PNG", ".png", image), ("JPEG", ".jpg", image), ("GIF", ".gif", image),
                             ("BMP", ".bmp", image.convert("RGB")), ("PNG", ".png", image.convert("LA"))]:
        path = tmp_path / f"a_{img.mode}{suffix}"
        path.write_bytes(encode(img, fmt))
        assert encoded_image(path) == path.read_bytes(), (fmt, img.mode)


def test_other_formats_are_reencoded_upright_with_alpha_and_depth(drawings, tmp_path):
    pixels = drawings[0][2]
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise; a viewer turns it back
    (tmp_path / "r.webp").write_bytes(encode(image.transpose(Image.Transpose.ROTATE_90), "WEBP", lossless=True,
                                             exif=exif.tobytes()))
    (tmp_path / "d.tif").write_bytes(encode(Image.fromarray(pixels.astype(np.uint16) * 257), "TIFF"))
    # 32-bit BMP, padding byte 0 (as Windows writes it): TF would read that byte as alpha, all transparent
    (tmp_path / "x.bmp").write_bytes(encode(Image.fromarray(np.dstack([pixels] * 3 + [0 * pixels])), "BMP"))
    transparent = Image.fromarray(pixels).convert("P")
    (tmp_path / "t.gif").write_bytes(encode(transparent, "GIF", transparency=0))

    def png(name):
        data = encoded_image(tmp_path / name)
        assert data.startswith(b"\x89PNG"), name
        return Image.open(io.BytesIO(data))

    np.testing.assert_array_equal(np.asarray(png("r.webp").convert("L")), pixels)
    tiff = png("d.tif")
    assert tiff.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(tiff), pixels.astype(np.uint16) * 257)
    np.testing.assert_array_equal(np.asarray(png("x.bmp").convert("L")), pixels)
    gif = png("t.gif").convert("RGBA")
    np.testing.assert_array_equal(np.asarray(gif)[..., 3] == 0, pixels == 0)


def test_formats_polarity_and_alpha_embed_as_the_raster(drawings, classifier, tmp_path):
    """Every form of a drawing gets the Keras model's features of the raster itself."""
    model, features = classifier
    pixels = drawings[5][2]
    expected = features(pixels[None, ..., None].astype(np.float32) / 255.0).numpy()
    exif = Image.Exif()
    exif[0x0112] = 8
    forms = {
        "white_on_black.png": Image.fromarray(pixels),
        "black_on_white.png": Image.fromarray(255 - pixels),
        "rgba_transparent.png": Image.fromarray(np.dstack([np.zeros_like(pixels)] * 3 + [pixels])),
        "rgb_black_on_white.png": Image.fromarray(255 - pixels).convert("RGB"),
        "sixteen.tif": Image.fromarray(pixels.astype(np.uint16) * 257),
    }
    paths = []
    for name, image in forms.items():
        image.save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "turned.webp").write_bytes(encode(Image.fromarray(255 - pixels).transpose(Image.Transpose.ROTATE_270),
                                                  "WEBP", lossless=True, exif=exif.tobytes()))
    paths.append(tmp_path / "turned.webp")
    (tmp_path / "padded.bmp").write_bytes(encode(Image.fromarray(np.dstack([255 - pixels] * 3 + [0 * pixels])), "BMP"))
    paths.append(tmp_path / "padded.bmp")
    got = embed_files(model, paths, polarity="auto")
    assert got.shape == (len(paths), 16) and got.dtype == np.float32
    scale = np.linalg.norm(expected)
    assert scale > 0
    for path, row in zip(paths, got):
        assert np.linalg.norm(row - expected[0]) < 1e-3 * scale, path.name  # TF grey weights sum to 0.9999
    as_is = embed_files(model, [tmp_path / "black_on_white.png"], polarity="as_is")
    assert np.linalg.norm(as_is[0] - expected[0]) > 0.1 * scale  # the policy reaches the endpoint


def test_ndjson_query_is_rasterized_and_sent_as_pixels(quickdraw_dir, classifier, tmp_path):
    model, features = classifier
    line = (quickdraw_dir / "simplified" / "cat.ndjson").read_bytes().splitlines()[3]
    (tmp_path / "q.ndjson").write_bytes(line + b"\n")
    query = prepare_query(tmp_path / "q.ndjson", model.meta)
    strokes = [np.asarray(s[:2], np.float32).T for s in orjson.loads(line)["drawing"]]
    raster = rasterize(strokes, image_size=SIZE)
    np.testing.assert_array_equal(query.pixels[..., 0], raster)
    expected = features(raster[None, ..., None].astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(embed_query(model, query), expected, rtol=1e-5, atol=1e-5)
    inverted = embed_query(model, query, polarity="invert")
    assert np.linalg.norm(inverted - expected) > 0.1 * np.linalg.norm(expected)


def test_hash_index_holds_the_models_codes(drawings, hasher, tmp_path):
    model, keras_model = hasher
    gallery = save_folder(tmp_path / "gallery", drawings, render=lambda x: 255 - x)
    index = index_image_folder(model, gallery, metric="hamming", thumbnail_size=0)
    paths, labels, _ = list_image_folder(gallery)
    rasters = {key: image for _, key, image in drawings}
    values = keras_model(np.stack([rasters[p.stem] for p in paths])[..., None].astype(np.float32) / 255.0).numpy()
    assert np.min(np.abs(values)) > 1e-4  # no bit sits on the sign boundary
    expected = np.packbits(values > 0, axis=1)
    stored = index.index.reconstruct_n(0, len(index))
    assert stored.shape == (len(paths), BITS // 8) and index.dimensions == BITS
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_array_equal(index.labels, labels)
    Image.fromarray(drawings[6][2]).save(tmp_path / "query.png")  # white on black: the other polarity
    codes = embed_query(model, prepare_query(tmp_path / "query.png", model.meta), metric="hamming")
    distances, found = index.search(codes, 3)
    assert index.ids[found[0, 0]] == drawings[6][1] and distances[0, 0] == 0
    assert distances[0, 1] > 0


def test_index_features_checks_the_models_width(hasher, tmp_path):
    model, _ = hasher
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (10, BITS // 8), dtype=np.uint8)
    save_features(tmp_path / "codes.npz", codes, np.arange(10) % 2)
    save_features(tmp_path / "wide.npz", rng.integers(0, 256, (10, 4), dtype=np.uint8), np.arange(10) % 2)
    floats = rng.standard_normal((10, BITS)).astype(np.float32)
    save_features(tmp_path / "floats.npz", floats, np.arange(10) % 2)
    save_features(tmp_path / "narrow.npz", floats[:, :16], np.arange(10) % 2)

    def vectors(name, metric="hamming"):
        return feature_file_vectors(tmp_path / name, model.meta, metric, model.export_dir)[0]

    np.testing.assert_array_equal(vectors("codes.npz"), codes)  # packed codes are kept, not re-packed
    np.testing.assert_array_equal(vectors("floats.npz"), np.packbits(floats > 0, axis=1))
    np.testing.assert_array_equal(vectors("floats.npz", "l2"), floats)
    with pytest.raises(ValueError, match="holds 4-byte packed codes but the model at .* gives 24-bit codes"):
        vectors("wide.npz")
    with pytest.raises(ValueError, match="holds 16-dimensional features but the model at .* embeds to 24"):
        vectors("narrow.npz")


def test_index_metric_is_hamming_for_a_hash_model_unless_the_user_chose_one():
    assert index_metric({"kind": "hash"}, "l2", metric_given=False) == "hamming"
    assert index_metric({"kind": "hash"}, "l2", metric_given=True) == "l2"
    assert index_metric({"kind": "embedding"}, "cosine", metric_given=False) == "cosine"
    assert index_metric({"kind": "classifier"}, "l2", metric_given=False) == "l2"


def test_unreadable_images_are_named(drawings, classifier, tmp_path):
    model, _ = classifier
    folder = save_folder(tmp_path / "gallery", drawings[:3])
    good = sorted((folder / drawings[0][0]).glob("*.png"))
    truncated = folder / drawings[0][0] / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    with pytest.raises(QueryError, match=r"cannot read image '.*truncated\.png': unreadable_image .*truncated"):
        embed_files(model, sorted(folder.rglob("*.png")))
    (folder / drawings[0][0] / "empty.png").write_bytes(b"")
    with pytest.raises(QueryError, match=r"cannot read image '.*empty\.png'"):
        embed_files(model, sorted(folder.rglob("*.png")))
    with pytest.raises(QueryError, match="expected an image"):
        (tmp_path / "notes.txt").write_text("x")
        prepare_query(tmp_path / "notes.txt", model.meta)


def test_index_a_data_set_split_with_drawing_thumbnails(trained_bitmap_export, quickdraw_28px, tmp_path):
    """`index --data_path`: every record of the split, its own class names (a gallery may hold classes
    the model was not trained on), vectors equal to the Keras features layer, thumbnails dark on white."""
    import evaluate_similarity_lookup as cli
    from data_prep import tfrecords
    from retrieval.index import load_index

    config = cs.EvalConfig(model=str(trained_bitmap_export.export_dir), data_path=str(quickdraw_28px), split="test",
                           out=str(tmp_path / "index"))
    assert cli.run_index(config) == 0
    index = load_index(tmp_path / "index")
    info = tfrecords.read_dataset_info(quickdraw_28px)
    assert len(index) == info["splits"]["test"]["num_examples"] and index.class_names == info["classes"]
    import tensorflow as tf

    specs = tfrecords.feature_specs(info)
    images, labels, key_ids = [], [], []
    for shard in tfrecords.shard_paths(quickdraw_28px, info, "test"):
        for raw in tf.data.TFRecordDataset(str(shard)):
            example = tf.train.Example.FromString(raw.numpy())
            f = example.features.feature
            images.append(np.frombuffer(f["image"].bytes_list.value[0], np.uint8).reshape(specs["image"].shape))
            labels.append(f["label"].int64_list.value[0])
            key_ids.append(f["key_id"].bytes_list.value[0].decode())
    images = np.stack(images)
    assert list(index.ids) == key_ids and list(index.labels) == labels
    features = keras.Model(trained_bitmap_export.model.inputs,
                           trained_bitmap_export.model.get_layer("features").output)(images / 255.0).numpy()
    distances, found = index.search(features[:5], 1)
    assert found[:, 0].tolist() == list(range(5)) and np.all(distances[:, 0] < 1e-3)
    np.testing.assert_array_equal(index.thumbnails[..., 0], 255 - images[..., 0])
    from retrieval.lookup import index_dataset

    calls = []
    index_dataset(serving_model.load(trained_bitmap_export.export_dir), quickdraw_28px, "test", metric="l2",
                  batch_size=16, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(16, 38), (32, 38), (38, 38)]  # the index CLI's progress bar is fed by these
    with pytest.raises(ValueError, match="one of --images"):
        cli.run_index(cs.EvalConfig(model=str(trained_bitmap_export.export_dir), data_path=str(quickdraw_28px),
                                    images=str(tmp_path)))


def test_index_and_lookup_errors_are_one_line_without_library_noise(tmp_path):
    """A bad --model is one line on stderr: no faiss loader lines, no TensorFlow start-up lines."""
    import subprocess
    import sys

    for command in ("index", "lookup"):
        result = subprocess.run([sys.executable, "evaluate_similarity_lookup.py", command, "--model",
                                 str(tmp_path / "missing"), "--images", str(tmp_path), "--query", str(tmp_path)],
                                cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "missing" in lines[0], result.stderr


def test_a_photo_folder_is_indexed_as_line_drawings_with_the_photos_as_thumbnails(sketchy_dir, tmp_path):
    """index --images of real Sketchy photos for a model trained on canny edge maps: each photo is
    embedded as its edge map (computed here from the file, sent as PNG), its thumbnail is the photo;
    --photo_edges auto follows the export's model_meta, none sends the photos as they are."""
    from data_prep import edges
    from retrieval.lookup import display_image, thumbnail

    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs))
    keras_model = keras.Model(inputs, keras.layers.Dense(8, name="features")(x))
    export = tmp_path / "export"
    meta = export_model(keras_model, export, class_names=None, image_size=SIZE, channels=3, kind="embedding",
                        photo_edges="canny")
    assert meta["photo_edges"] == "canny"
    model = serving_model.load(export)
    root = tmp_path / "photos"
    for name in ("apple", "cat"):
        (root / name).mkdir(parents=True)
        for path in sorted((sketchy_dir / "photo" / name).glob("*.jpg"))[:3]:
            (root / name / path.name).symlink_to(path)
    paths, _, _ = list_image_folder(root)

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    drawings = [png(edges.edge_map(np.asarray(Image.open(p).convert("RGB")), "canny")) for p in paths]
    expected = model.run("encoded", drawings, head="embed")["embedding"]
    as_they_are = model.run("encoded", [p.read_bytes() for p in paths], head="embed")["embedding"]
    index = index_image_folder(model, root, metric="l2", photo_edges="canny")

    def vectors(gallery):
        return gallery.index.reconstruct_n(0, len(gallery))

    np.testing.assert_allclose(vectors(index), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(vectors(index) - as_they_are).max() > 1e-3
    np.testing.assert_array_equal(index.thumbnails[0], thumbnail(paths[0], 64))
    assert np.asarray(display_image(paths[0])).std() > 0  # a colour photo, not its drawing

    import subprocess
    import sys

    from retrieval.index import load_index

    for flag, want in (("auto", expected), ("none", as_they_are)):
        out = tmp_path / f"index_{flag}"
        result = subprocess.run([sys.executable, "evaluate_similarity_lookup.py", "index", "--model", str(export),
                                 "--images", str(root), "--out", str(out), "--photo_edges", flag],
                                cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        assert ("as canny edge maps" in result.stdout) == (flag == "auto")
        np.testing.assert_allclose(vectors(load_index(out)), want, rtol=1e-5, atol=1e-5)
