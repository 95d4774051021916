"""Downloader against a local HTTP server (127.0.0.1, port 0) serving real Quick, Draw! bytes."""

from __future__ import annotations

import http.server
import re
import sys
import threading
import time
import urllib.parse

import pytest
import requests

from data_prep import download as dl

CATEGORY = "The Eiffel Tower"  # a name with spaces and capitals: exercises URL quoting
TIMEOUT = (2.0, 2.0)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files (URL path -> bytes); behaviour switched by server.mode."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        body = server.files.get(path)
        if body is None:
            self._send(404, b"not found", {})
            return
        if server.mode == "stall":
            time.sleep(1.5)
        total = len(body)
        status, start, headers = 200, 0, {}
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.mode != "ignore_range":
            start = int(match.group(1))
            if start >= total:
                self._send(416, b"", {"Content-Range": f"bytes */{total}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
        payload = body[start:]
        self.send_response(status)
        if server.mode == "no_length":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if server.mode == "cut" and server.cuts_left > 0:
            server.cuts_left -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _send(self, status, payload, headers):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.mode = "normal"
        self.cuts_left = 0
        self.requests = []
        self.errors = []

    def handle_error(self, request, client_address):
        """A client that stops reading early is legitimate here: record, do not print."""
        self.errors.append(sys.exc_info()[1])


@pytest.fixture(scope="module")
def real_bytes(quickdraw_dir):
    return (quickdraw_dir / "simplified" / f"{CATEGORY}.ndjson").read_bytes()


@pytest.fixture
def server(real_bytes):
    srv = _Server({f"/quickdraw_dataset/full/simplified/{CATEGORY}.ndjson": real_bytes})
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/quickdraw_dataset"
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(server):
    return dl.official_url(CATEGORY, "simplified", server.base_url)


def test_official_urls_quote_names_and_follow_googles_layout():
    base = dl.DEFAULT_BASE_URL
    assert dl.official_url("The Eiffel Tower", "simplified") == f"{base}/full/simplified/The%20Eiffel%20Tower.ndjson"
    assert dl.official_url("cat", "raw") == f"{base}/full/raw/cat.ndjson"
    assert dl.official_url("hot dog", "bitmap") == f"{base}/full/numpy_bitmap/hot%20dog.npy"
    assert dl.official_url("cat", "sketchrnn") == f"{base}/sketchrnn/cat.npz"
    assert dl.official_url("cat", "raw", "http://mirror/x/") == "http://mirror/x/full/raw/cat.ndjson"
    with pytest.raises(ValueError, match="fmt.*'png'"):
        dl.official_url("cat", "png")
    with pytest.raises(ValueError, match="category"):
        dl.official_url("../etc", "raw")


def test_base_url_from_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)
    assert dl.resolve_base_url(None) == dl.DEFAULT_BASE_URL
    monkeypatch.setenv(dl.BASE_URL_ENV, "http://127.0.0.1:9/qd/")
    assert dl.resolve_base_url(None) == "http://127.0.0.1:9/qd"
    assert dl.resolve_base_url("http://other") == "http://other"


def test_plain_download_is_byte_identical_and_then_skipped(server, real_bytes, tmp_path):
    dest = tmp_path / f"{CATEGORY}.ndjson"
    path = dl.download_file(_url(server), dest, progress=False, expected_size=len(real_bytes), timeout=TIMEOUT)
    assert path == dest and dest.read_bytes() == real_bytes
    assert not (tmp_path / f"{CATEGORY}.ndjson.part").exists()
    assert server.requests == [(f"/quickdraw_dataset/full/simplified/The%20Eiffel%20Tower.ndjson", None)]
    dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert len(server.requests) == 1  # complete file: no second request


def test_cut_transfer_keeps_part_then_resumes_with_range(server, real_bytes, tmp_path):
    server.mode, server.cuts_left = "cut", 1
    dest = tmp_path / "eiffel.ndjson"
    part = tmp_path / "eiffel.ndjson.part"
    broken = r"connection broken after \d+ bytes of \d+.*run again to resume"
    with pytest.raises(dl.DownloadError, match=broken) as info:
        dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert "127.0.0.1" in str(info.value)
    assert not dest.exists()
    half = len(real_bytes) // 2
    assert part.read_bytes() == real_bytes[:half]
    dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == real_bytes
    assert not part.exists()
    assert server.requests[-1][1] == f"bytes={half}-"


def test_server_ignoring_range_restarts_from_scratch(server, real_bytes, tmp_path):
    server.mode = "ignore_range"
    dest = tmp_path / "eiffel.ndjson"
    (tmp_path / "eiffel.ndjson.part").write_bytes(b"GARBAGE-THAT-MUST-BE-REPLACED")
    dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == real_bytes
    assert server.requests[-1][1] == "bytes=29-"


def test_complete_part_answered_416_is_finished_without_body(server, real_bytes, tmp_path):
    dest = tmp_path / "eiffel.ndjson"
    (tmp_path / "eiffel.ndjson.part").write_bytes(real_bytes)
    dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == real_bytes
    assert server.requests == [(server.requests[0][0], f"bytes={len(real_bytes)}-")]


def test_oversized_part_is_discarded_and_downloaded_again(server, real_bytes, tmp_path):
    dest = tmp_path / "eiffel.ndjson"
    (tmp_path / "eiffel.ndjson.part").write_bytes(real_bytes + b"extra")
    dl.download_file(_url(server), dest, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == real_bytes
    assert [r[1] for r in server.requests] == [f"bytes={len(real_bytes) + 5}-", None]


def test_404_names_the_url(server, tmp_path):
    url = dl.official_url("no such thing", "simplified", server.base_url)
    with pytest.raises(dl.DownloadError, match=r"no%20such%20thing\.ndjson: HTTP 404"):
        dl.download_file(url, tmp_path / "x.ndjson", progress=False, timeout=TIMEOUT)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_an_error_and_keeps_the_part(server, real_bytes, tmp_path):
    dest = tmp_path / "eiffel.ndjson"
    part = tmp_path / "eiffel.ndjson.part"
    announced = f"size mismatch, server announces {len(real_bytes)} bytes but expected 123"
    with pytest.raises(dl.DownloadError, match=announced):
        dl.download_file(_url(server), dest, progress=False, expected_size=123, timeout=TIMEOUT)
    assert not dest.exists() and not part.exists()
    # No Content-Length announced: the received size is checked against the caller's expectation.
    server.mode = "no_length"
    with pytest.raises(dl.DownloadError, match=f"got {len(real_bytes)} bytes but expected 123.*kept at"):
        dl.download_file(_url(server), dest, progress=False, expected_size=123, timeout=TIMEOUT)
    assert not dest.exists() and part.read_bytes() == real_bytes
    server.mode = "normal"
    dl.download_file(_url(server), dest, progress=False, expected_size=len(real_bytes), timeout=TIMEOUT)
    assert dest.read_bytes() == real_bytes


def test_existing_final_file_with_wrong_size_is_reported(tmp_path):
    dest = tmp_path / "cat.ndjson"
    dest.write_bytes(b"abc")
    with pytest.raises(dl.DownloadError, match="already exists with 3 bytes, expected 10"):
        dl.download_file("http://127.0.0.1:9/cat.ndjson", dest, progress=False, expected_size=10)


def test_stalled_server_times_out_with_a_clear_error(server, tmp_path):
    """The server answers after 1.5 s, so a download that waited would succeed: the timeout error itself
    shows the 0.3 s read timeout applied, with no wall-clock bound for a loaded machine to break."""
    server.mode = "stall"
    with pytest.raises(dl.DownloadError, match=r"cannot download http://127\.0\.0\.1.*(?i:timed out)"):
        dl.download_file(_url(server), tmp_path / "x.ndjson", progress=False, timeout=(1.0, 0.3))
    assert not (tmp_path / "x.ndjson").exists()


def test_refused_connection_is_a_clear_error(tmp_path):
    """The port is held bound, never listening, for the whole request: the connection is refused and no
    other process can take the port in between (a port freed before use could be)."""
    import socket

    with requests.Session() as session, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(dl.DownloadError, match=f"cannot download http://127.0.0.1:{port}/"):
            dl.download_file(f"http://127.0.0.1:{port}/cat.ndjson", tmp_path / "c", session=session,
                             progress=False, timeout=TIMEOUT)


def test_download_many_with_workers_and_partial_failure(server, real_bytes, tmp_path, monkeypatch):
    server.files[f"/quickdraw_dataset/full/simplified/cat.ndjson"] = b'{"word":"cat"}\n'
    monkeypatch.setenv(dl.BASE_URL_ENV, server.base_url)
    paths = dl.download([CATEGORY, "cat"], "simplified", tmp_path, workers=2, progress=False, timeout=TIMEOUT)
    assert paths == [tmp_path / f"{CATEGORY}.ndjson", tmp_path / "cat.ndjson"]
    assert paths[0].read_bytes() == real_bytes and paths[1].read_bytes() == b'{"word":"cat"}\n'
    with pytest.raises(dl.DownloadError, match=r"1 of 2 downloads failed:\n.*dog\.ndjson: HTTP 404"):
        dl.download(["cat", "dog"], "simplified", tmp_path / "b", progress=False, timeout=TIMEOUT)
    assert (tmp_path / "b" / "cat.ndjson").exists()  # the good one is still downloaded


def test_download_main_exit_codes_and_messages(server, real_bytes, tmp_path, capsys):
    assert dl.download_main([CATEGORY], "simplified", str(tmp_path), server.base_url) == 0
    assert (tmp_path / f"{CATEGORY}.ndjson").read_bytes() == real_bytes
    assert "downloaded 1 simplified file(s)" in capsys.readouterr().out
    assert dl.download_main(["dog"], "simplified", str(tmp_path), server.base_url) == 1
    err = capsys.readouterr().err
    assert err.startswith("download failed:") and "dog.ndjson: HTTP 404" in err and "Traceback" not in err
    assert dl.download_main(["dog"], "svg", str(tmp_path), server.base_url) == 2
    assert "Expected one of" in capsys.readouterr().err
