"""Resumable downloads of Google's Quick, Draw! files (one file per category and format).

Each file is streamed into `<name>.part` and renamed only once its size matches what the
server announced, so an interrupted transfer resumes from where it stopped (HTTP Range)
and a final file is always complete. The base URL can be overridden (argument, or the
QUICKDRAW_BASE_URL environment variable) to point at a mirror or a local test server.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import sys
import urllib.parse

import requests
import urllib3
from tqdm import tqdm

from data_prep.categories import NAME_RULE, is_safe_name

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"
BASE_URL_ENV = "QUICKDRAW_BASE_URL"

# Format -> (path template under the base URL, file extension). The official layout.
FORMATS: dict[str, tuple[str, str]] = {
    "simplified": ("full/simplified/{}.ndjson", ".ndjson"),
    "raw": ("full/raw/{}.ndjson", ".ndjson"),
    "bitmap": ("full/numpy_bitmap/{}.npy", ".npy"),
    "sketchrnn": ("sketchrnn/{}.npz", ".npz"),
}

# (connect, read) seconds: every request is bounded; a read timeout applies between bytes.
DEFAULT_TIMEOUT = (10.0, 60.0)
DEFAULT_CHUNK_SIZE = 1 << 16

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that could not complete; the message names the URL and what went wrong."""


def resolve_base_url(base_url: str | None = None) -> str:
    """The base URL to use: the argument if given, else $QUICKDRAW_BASE_URL, else Google's."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"Invalid value for argument `fmt`. Received: {fmt!r}. Expected one of {sorted(FORMATS)}.")


def _check_category(category: str) -> None:
    if not is_safe_name(category):
        raise ValueError(
            f"Invalid value for argument `category`. Received: {category!r}. "
            f"Expected a Quick, Draw! category name such as 'The Eiffel Tower': {NAME_RULE}."
        )


def official_url(category: str, fmt: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """URL of one category's file in format `fmt`; the name is URL-quoted (spaces become %20)."""
    _check_format(fmt)
    _check_category(category)
    template, _ = FORMATS[fmt]
    return f"{base_url.rstrip('/')}/" + template.format(urllib.parse.quote(category))


def local_name(category: str, fmt: str) -> str:
    """File name of a downloaded category, as Google names it: `<category><ext>`, spaces kept."""
    _check_format(fmt)
    _check_category(category)
    return category + FORMATS[fmt][1]


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    if not value:
        return None, None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        return None, None
    start, _, total = match.groups()
    return (int(start) if start is not None else None), (int(total) if total != "*" else None)


def _content_length(response: requests.Response) -> int | None:
    """Announced body size; None when absent or when it counts encoded (compressed) bytes."""
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _finish(
    part: pathlib.Path, dest: pathlib.Path, url: str, total: int | None, expected_size: int | None
) -> pathlib.Path:
    """Check the .part against the announced and expected sizes, then move it into place."""
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{url}: incomplete download, {size} of {total} bytes in {part} (kept: run again to resume)"
        )
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"{url}: size mismatch, got {size} bytes but expected {expected_size} (partial file kept at {part})"
        )
    os.replace(part, dest)
    return dest


def download_file(
    url: str,
    dest_path: str | os.PathLike,
    *,
    session: requests.Session | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    expected_size: int | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> pathlib.Path:
    """Download `url` to `dest_path`, resuming a previous `.part` with an HTTP Range request.

    Skips a file already in place (only complete files are ever renamed there). Raises
    DownloadError naming the URL on any network or HTTP error or size mismatch; the
    `.part` file is kept so the next call resumes.
    """
    dest = pathlib.Path(dest_path)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        size = dest.stat().st_size
        if expected_size is not None and size != expected_size:
            raise DownloadError(
                f"{url}: {dest} already exists with {size} bytes, expected {expected_size}; delete it to download again"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    session = session or requests.Session()
    # A restart from scratch is needed at most once (server ignored Range, or the .part was bad).
    for _ in range(2):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = session.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as error:
            raise DownloadError(f"cannot download {url}: {error}") from error
        with response:
            if response.status_code == 416 and offset:
                _, total = _parse_content_range(response.headers.get("Content-Range"))
                if total == offset or (total is None and expected_size == offset):
                    return _finish(part, dest, url, offset, expected_size)
                part.unlink()  # the .part does not match the remote file: start again
                continue
            if response.status_code == 206 and offset:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink()
                    continue
                mode = "ab"
            elif response.status_code == 200:
                offset, total, mode = 0, _content_length(response), "wb"
            else:
                raise DownloadError(f"cannot download {url}: HTTP {response.status_code} {response.reason}")
            if expected_size is not None and total is not None and total != expected_size:
                raise DownloadError(
                    f"{url}: size mismatch, server announces {total} bytes but expected {expected_size}"
                )
            _stream(response, part, mode, url, offset, total, chunk_size, progress)
            return _finish(part, dest, url, total, expected_size)
    raise DownloadError(f"cannot download {url}: the server keeps rejecting the resumed range")


def _stream(response, part, mode, url, offset, total, chunk_size, progress) -> None:
    """Append the response body to `part`; a broken connection leaves what arrived for resuming.

    Reads with `read1` so that bytes received before a connection breaks are written, not
    lost inside a half-filled chunk.
    """
    with open(part, mode) as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
        disable=not progress, leave=False,
    ) as bar:
        try:
            while chunk := response.raw.read1(chunk_size, decode_content=True):
                out.write(chunk)
                bar.update(len(chunk))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            out.flush()
            raise DownloadError(
                f"{url}: connection broken after {out.tell()} bytes"
                + (f" of {total}" if total is not None else "")
                + f" ({error}); partial file kept at {part}, run again to resume"
            ) from error


def download(
    categories: list[str],
    fmt: str,
    dest: str | os.PathLike,
    base_url: str | None = None,
    workers: int = 1,
    progress: bool = True,
    *,
    session: requests.Session | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> list[pathlib.Path]:
    """Download each category's file in format `fmt` into folder `dest` (`<category><ext>`).

    All files are attempted; if any failed, one DownloadError lists every failed URL.
    Returns the paths in the order of `categories`.
    """
    _check_format(fmt)
    if not categories:
        raise ValueError("Invalid value for argument `categories`. Received: []. Expected at least one name.")
    if workers < 1:
        raise ValueError(f"Invalid value for argument `workers`. Received: {workers}. Expected an integer >= 1.")
    base = resolve_base_url(base_url)
    folder = pathlib.Path(dest)
    jobs = [(official_url(c, fmt, base), folder / local_name(c, fmt)) for c in categories]
    session = session or requests.Session()

    def fetch(job):
        url, path = job
        return download_file(url, path, session=session, progress=progress, timeout=timeout)

    results: list[pathlib.Path | DownloadError] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fetch, job) for job in jobs]
        for future in futures:
            try:
                results.append(future.result())
            except DownloadError as error:
                results.append(error)
    failures = [str(r) for r in results if isinstance(r, DownloadError)]
    if failures:
        raise DownloadError(f"{len(failures)} of {len(jobs)} downloads failed:\n  " + "\n  ".join(failures))
    return results  # type: ignore[return-value]


def download_main(categories: list[str], fmt: str, dest: str, base_url: str | None = None) -> int:
    """CLI body: download, print one line per outcome, return 0 on success, 1 on failure, 2 on bad arguments."""
    try:
        paths = download(categories, fmt, dest, base_url=base_url)
    except ValueError as error:
        print(f"download: {error}", file=sys.stderr)
        return 2
    except DownloadError as error:
        print(f"download failed: {error}", file=sys.stderr)
        return 1
    print(f"downloaded {len(paths)} {fmt} file(s) into {dest}")
    return 0
