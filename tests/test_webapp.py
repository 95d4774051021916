"""The web app's JSON API (FastAPI's test client), its CLI, and every bad input it must refuse."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.raster import rasterize
from tests.conftest import BITMAP_CLASSES, ROOT
from tests.webapp_fixtures import build_gallery, real_drawings

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def served(trained_bitmap_export, tmp_path_factory):
    from fastapi.testclient import TestClient

    from webapp.app import create_app
    from webapp.inputs import Limits
    from webapp.service import open_service

    gallery = build_gallery(trained_bitmap_export, tmp_path_factory.mktemp("gallery") / "index")
    limits = Limits(max_body_bytes=300_000, max_strokes=50, max_points=2_000, max_image_pixels=4_000_000)
    service = open_service(str(trained_bitmap_export.export_dir), str(gallery.index_dir), limits=limits, k=8)
    with TestClient(create_app(service)) as client:
        yield client, trained_bitmap_export, gallery


def keras_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    """The trained Keras model's softmax on uint8 [N, 28, 28, 1] (an independent path to the answer)."""
    logits = model.predict(pixels.astype(np.float32) / 255.0, verbose=0)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def keras_features(model, pixels: np.ndarray) -> np.ndarray:
    import keras

    network = keras.Model(model.inputs, model.get_layer("features").output)
    return network.predict(pixels.astype(np.float32) / 255.0, verbose=0)


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_model_description(served):
    client, export, gallery = served
    assert client.get("/healthz").json() == {"status": "ok"}
    model = client.get("/api/model").json()
    assert model["class_names"] == BITMAP_CLASSES and model["classifies"] is True
    assert (model["image_size"], model["channels"], model["kind"]) == (28, 1, "classifier")
    assert model["index"]["count"] == len(gallery.labels) and model["index"]["metric"] == "l2"
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="canvas"' in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("fmt", ["simplified", "raw"])
def test_classify_strokes_matches_the_trained_model(served, fmt):
    client, export, _ = served
    drawings = real_drawings(fmt, per_class=2)
    pixels = np.stack([rasterize([s[:, :2] for s in strokes], 28)[..., None] for _, strokes, _ in drawings])
    expected = keras_probabilities(export.model, pixels)
    agree = 0
    for (name, _, drawing), probabilities in zip(drawings, expected):
        answer = client.post("/api/classify", json={"drawing": drawing})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["input"] == {"kind": "strokes", "strokes": len(drawing),
                                 "points": sum(len(s[0]) for s in drawing), "format": fmt}
        top = np.argsort(-probabilities, kind="stable")[:5]
        assert [c["class"] for c in body["classes"]] == [BITMAP_CLASSES[i] for i in top]
        np.testing.assert_allclose([c["probability"] for c in body["classes"]], probabilities[top], atol=2e-5)
        agree += body["classes"][0]["class"] == name
    assert agree >= len(drawings) * 0.75  # a real classifier on held-out drawings, not an echo


def test_classify_png_body_and_base64_json(served):
    client, export, _ = served
    name, strokes, _ = real_drawings("simplified", per_class=1)[1]
    image = rasterize(strokes, 28)
    expected = keras_probabilities(export.model, image[None, :, :, None])[0]
    for answer in (client.post("/api/classify", content=png_of(image), headers={"Content-Type": "image/png"}),
                   client.post("/api/classify", json={"png": base64.b64encode(png_of(image)).decode(), "k": 6})):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["input"]["kind"] == "image"
        got = {c["class"]: c["probability"] for c in body["classes"]}
        for i, cls in enumerate(BITMAP_CLASSES):
            if cls in got:
                assert got[cls] == pytest.approx(expected[i], abs=2e-5)
    assert len(body["classes"]) == 6  # k from the request


def test_search_returns_the_exact_nearest_gallery_items(served):
    client, export, gallery = served
    name, strokes, drawing = real_drawings("simplified", per_class=1)[3]
    query = keras_features(export.model, rasterize(strokes, 28)[None, :, :, None])[0]
    items = keras_features(export.model, gallery.images)
    distances = np.sqrt(((items - query) ** 2).sum(axis=1))
    answer = client.post("/api/search", json={"drawing": drawing, "k": 10})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["count"] == len(gallery.labels) and len(body["results"]) == 10
    got = [r["item"] for r in body["results"]]
    np.testing.assert_allclose([r["distance"] for r in body["results"]], np.sort(distances)[:10], rtol=1e-4, atol=1e-4)
    assert set(got) <= set(np.argsort(distances)[:12].tolist())  # equal up to near-ties of float32 sums
    assert [r["class"] for r in body["results"]] == [BITMAP_CLASSES[gallery.labels[i]] for i in got]
    thumb = client.get(body["results"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(thumb.content)))
    np.testing.assert_array_equal(shown[..., 0], 255 - gallery.images[got[0], :, :, 0])  # dark on white


@pytest.mark.parametrize("path", ["/api/items/100000/thumbnail.png", "/api/items/-1/thumbnail.png",
                                  "/api/items/..%2F..%2Fetc%2Fpasswd/thumbnail.png", "/api/nothing",
                                  "/static/..%2F..%2Fserving%2Fexport.py"])
def test_unknown_paths_are_json_errors_that_touch_no_file(served, path):
    client, _, _ = served
    answer = client.get(path)
    assert answer.status_code in (404, 422)
    assert "error" in answer.json()


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def many_points(n: int) -> dict:
    return {"drawing": [[list(range(n)), list(range(n))]]}


BAD_INPUTS = {
    "malformed json": (b'{"drawing": [[[1,2', "application/json", 400),
    "NaN literal": (b'{"drawing": [[[NaN, 1], [1, 2]]]}', "application/json", 400),
    "overflowing number": (b'{"drawing": [[[1e400, 1], [1, 2]]]}', "application/json", 400),
    "not an object": (b"[1, 2, 3]", "application/json", 400),
    "empty body": (b"", "application/json", 400),
    "no drawing": (b'{"strokes": []}', "application/json", 422),
    "both drawing and png": (b'{"drawing": [[[1],[2]]], "png": ""}', "application/json", 422),
    "empty drawing": (b'{"drawing": []}', "application/json", 422),
    "stroke of one row": (b'{"drawing": [[[1, 2, 3]]]}', "application/json", 422),
    "unequal rows": (b'{"drawing": [[[1, 2, 3], [1, 2]]]}', "application/json", 422),
    "strings for numbers": (b'{"drawing": [[["1", "2"], ["3", "4"]]]}', "application/json", 422),
    "absurd coordinate": (b'{"drawing": [[[1e300, 2], [3, 4]]]}', "application/json", 422),
    "deep nesting": (b"[" * 5000 + b"]" * 5000, "application/json", 400),
    "bad k": (b'{"drawing": [[[1, 2], [3, 4]]], "k": 0}', "application/json", 422),
    "k as a string": (b'{"drawing": [[[1, 2], [3, 4]]], "k": "5"}', "application/json", 422),
    "bad base64": (b'{"png": "%%%not base64"}', "application/json", 422),
    "png not a string": (b'{"png": 12}', "application/json", 422),
    "too many points": (json.dumps(many_points(2_001)).encode(), "application/json", 413),
    "too many strokes": (json.dumps({"drawing": [[[1], [2]]] * 51}).encode(), "application/json", 413),
    "body over the limit": (b" " * 300_001, "application/json", 413),
    "random bytes as png": (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "image/png", 422),
    "truncated png": (None, "image/png", 422),
    "png bomb": (None, "image/png", 413),
    "unsupported type": (b"drawing", "text/plain", 415),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("route", ["/api/classify", "/api/search", "/api/recognize"])
def test_bad_inputs_get_a_4xx_json_error_and_the_server_goes_on(served, case, route):
    client, _, _ = served
    body, content_type, status = BAD_INPUTS[case]
    if case == "truncated png":
        body = png_of(rasterize(real_drawings(per_class=1)[0][1], 28))[:60]
    if case == "png bomb":
        body = big_png(10_000)  # about 100 KB that would decode to 100 million pixels
        assert len(body) < 300_000
    answer = client.post(route, content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status, (case, answer.status_code, answer.text)
    message = answer.json()["error"]
    assert message and "\n" not in message and "Traceback" not in message
    ok = client.post(route, json={"drawing": real_drawings(per_class=1)[0][2]})
    assert ok.status_code == 200


def test_a_streamed_body_over_the_limit_is_refused_without_reading_it_whole(served):
    client, _, _ = served

    def chunks():
        for _ in range(100):
            yield b" " * 10_000

    answer = client.post("/api/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "error" in answer.json()


def test_an_embedding_model_only_searches(photo_hash_export, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.index import build_index
    from serving import model as serving_model
    from webapp.app import create_app
    from webapp.service import open_service

    photos = np.random.default_rng(1).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    codes = serving_model.load(photo_hash_export.export_dir).run("images", photos, head="embed")["codes"]
    build_index(codes, np.arange(20) % 2, metric="hamming").save(tmp_path / "index")
    with pytest.raises(ValueError, match="only embeds"):
        open_service(str(photo_hash_export.export_dir))
    client = TestClient(create_app(open_service(str(photo_hash_export.export_dir), str(tmp_path / "index"))))
    assert client.get("/api/model").json()["classifies"] is False
    refused = client.post("/api/classify", content=png_of(photos[3]), headers={"Content-Type": "image/png"})
    assert refused.status_code == 409 and "only" in refused.json()["error"]
    found = client.post("/api/search", content=png_of(photos[3]), headers={"Content-Type": "image/png"})
    assert found.status_code == 200, found.text
    first = found.json()["results"][0]
    assert first["item"] == 3 and first["distance"] == 0 and first["thumbnail"] is None


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "webapp", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_cli_help_and_one_line_errors(tmp_path, trained_bitmap_export):
    helped = run_cli("--help")
    assert helped.returncode == 0 and "--model" in helped.stdout and "--max_body_bytes" in helped.stdout
    missing = run_cli("--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nowhere" in missing.stderr
    wrong_index = run_cli("--model", str(trained_bitmap_export.export_dir), "--index", str(tmp_path))
    assert wrong_index.returncode == 2 and "not an index folder" in wrong_index.stderr
    assert wrong_index.stderr.count("\n") == 1


def test_cli_serves_on_the_port_it_prints(trained_bitmap_export, tmp_path):
    import urllib.request

    gallery = build_gallery(trained_bitmap_export, tmp_path / "index")
    server = subprocess.Popen([sys.executable, "-m", "webapp", "--model", str(trained_bitmap_export.export_dir),
                               "--index", str(gallery.index_dir), "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "on http://127.0.0.1:" in line, (line, server.poll())
        url = line.split(" on ")[1].split("/ ")[0]
        name, strokes, drawing = real_drawings(per_class=1)[2]
        request = urllib.request.Request(url + "/api/classify", data=json.dumps({"drawing": drawing}).encode(),
                                         headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(request, timeout=30).read())
        expected = keras_probabilities(trained_bitmap_export.model, rasterize(strokes, 28)[None, :, :, None])[0]
        assert body["classes"][0]["class"] == BITMAP_CLASSES[int(expected.argmax())]
        assert json.loads(urllib.request.urlopen(url + "/healthz", timeout=10).read()) == {"status": "ok"}
    finally:
        server.terminate()
        server.wait(20)
    assert server.stderr.read().strip() == ""  # quiet by default: no TensorFlow or uvicorn lines


def test_a_stalled_client_and_parallel_requests_leave_no_worker_stuck(served):
    """A client that sends half a body and waits holds no worker: requests in parallel are all answered,
    each as alone."""
    import concurrent.futures
    import socket
    import urllib.request

    from webapp.server import BackgroundServer

    client, _, _ = served
    drawings = [d for _, _, d in real_drawings(per_class=2)]
    alone = [client.post("/api/classify", json={"drawing": d}).json()["classes"] for d in drawings]
    with BackgroundServer(client.app) as server:
        port = int(server.url.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100000\r\n\r\n{\"drawing\": [[[1, 2")

        def classify(drawing):
            request = urllib.request.Request(server.url + "/api/classify", data=json.dumps({"drawing": drawing}).encode(),
                                             headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(request, timeout=60).read())["classes"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(classify, drawings))
        stalled.close()
    assert together == alone


def test_recognize_answers_classify_and_search_from_one_pass(served):
    """/api/recognize (what the page asks) equals /api/classify and /api/search for the same drawing."""
    client, _, _ = served
    for _, _, drawing in real_drawings("raw", per_class=1)[:3]:
        both = client.post("/api/recognize", json={"drawing": drawing, "k": 7})
        assert both.status_code == 200, both.text
        classes = client.post("/api/classify", json={"drawing": drawing}).json()["classes"]
        results = client.post("/api/search", json={"drawing": drawing, "k": 7}).json()["results"]
        assert both.json()["classes"] == classes and both.json()["results"] == results
    refused = client.post("/api/recognize", json={"drawing": []})
    assert refused.status_code == 422 and "error" in refused.json()
