"""data_prep.builder on real Quick, Draw! drawings: stray shards refused, partial files of killed or
failed runs removed, a full disk as one line, workers that die with the build process."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from configuration_sketch import QuickDrawBuildConfig, RasterConfig
from data_prep import builder, quickdraw_build, verify
from tests.conftest import ROOT

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def config_for(source: pathlib.Path, out: pathlib.Path, **overrides) -> QuickDrawBuildConfig:
    values = {"source": str(source), "format": "simplified", "categories": "cat,airplane", "train_per_class": 8,
              "test_per_class": 3, "out": str(out), "shards": 2, "workers": 1, "seed": 0}
    return QuickDrawBuildConfig(**{**values, **overrides})


def partial_files(out: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp-" in p.name)


def test_shards_of_an_unknown_build_are_refused_not_adopted(tmp_path, quickdraw_dir):
    out = tmp_path / "out"
    quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=28), progress=False)
    (out / "dataset_info.json").unlink()  # 28 px shards, no record of which build wrote them
    shards = sorted(p.name for p in out.glob("*.tfrecord"))
    assert shards == ["test-00000-of-00002.tfrecord", "test-00001-of-00002.tfrecord",
                      "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    with pytest.raises(builder.BuildError, match="4 shard or staging file") as error:
        quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=32),
                              progress=False)
    assert "test-00000-of-00002.tfrecord" in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in out.glob("*.tfrecord")) == shards  # nothing of the user's deleted
    assert not (out / builder.STATE_FILE).exists()
    # A folder with other files (no shards) is still fine to build in.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    info = quickdraw_build.build(config_for(quickdraw_dir / "simplified", other), RasterConfig(image_size=32),
                                 progress=False)
    assert info["image"]["height"] == 32 and verify.verify(other)["classes"] == 2


KILL_DURING_SHARDS = """
import os, pathlib, signal, sys
import tensorflow as tf
from configuration_sketch import QuickDrawBuildConfig, RasterConfig
from data_prep import quickdraw_build

out = pathlib.Path(sys.argv[2])
real = tf.io.TFRecordWriter
written = [0]

class Writer:
    def __init__(self, path):
        self.path, self.inner = pathlib.Path(path), real(path)
    def write(self, record):
        self.inner.write(record)
        if self.path.parent == out:
            written[0] += 1
            if written[0] == 5:
                self.inner.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    def close(self):
        self.inner.close()
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.close()

tf.io.TFRecordWriter = Writer
config = QuickDrawBuildConfig(source=sys.argv[1], format="simplified", categories="cat,airplane",
                              train_per_class=8, test_per_class=3, out=str(out), shards=2, workers=1, seed=0)
quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
"""


def test_partial_shards_of_a_killed_run_are_removed_by_the_next(tmp_path, quickdraw_dir):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SHARDS, str(quickdraw_dir / "simplified"), str(out)],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = partial_files(out)
    assert any(name.startswith(".train-0000") for name in left), left  # kill -9 mid-shard leaves them
    info = quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=28),
                                 progress=False)
    assert partial_files(out) == []
    assert verify.verify(out)["splits"] == {s: info["splits"][s]["num_examples"] for s in ("train", "test")}


def full_disk_writer(fail_in: pathlib.Path, after: int):
    """A TFRecordWriter that raises TensorFlow's own full-disk error after `after` records in `fail_in`."""
    real = tf.io.TFRecordWriter
    count = [0]

    class Writer:
        def __init__(self, path):
            self.path, self.inner = pathlib.Path(path), real(path)

        def write(self, record):
            if self.path.parent == fail_in:
                count[0] += 1
                if count[0] > after:
                    raise tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left on device")
            self.inner.write(record)

        def close(self):
            self.inner.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    return Writer


@pytest.mark.parametrize("where", ["shards", "staging"])
def test_full_disk_is_one_line_naming_the_file_and_frees_partial_files(tmp_path, quickdraw_dir, monkeypatch, where):
    out = tmp_path / "out"
    fail_in = out if where == "shards" else out / builder.STAGING_DIR / "train"
    monkeypatch.setattr(tf.io, "TFRecordWriter", full_disk_writer(fail_in, after=4))
    with pytest.raises(builder.BuildError) as error:
        quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=28),
                              progress=False)
    message = str(error.value)
    assert "No space left on device" in message and "\n" not in message
    assert (".train-00000-of-00002.tfrecord.tmp-" if where == "shards" else ".unit-00000.tfrecord.tmp-") in message
    assert partial_files(out) == []
    monkeypatch.undo()  # space freed: the same build resumes and verifies
    info = quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=28),
                                 progress=False)
    assert verify.verify(out)["splits"] == {s: info["splits"][s]["num_examples"] for s in ("train", "test")}


def _children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_workers_die_with_a_killed_build(tmp_path, quickdraw_dir):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_prep.quickdraw", "build", "--source", str(quickdraw_dir / "simplified"),
               "--format", "simplified", "--categories", "all", "--train_per_class", "20", "--test_per_class", "5",
               "--image_size", "64", "--out", str(out), "--workers", "2"]
    parent = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        # Both workers running and at least one unit staged: they are past their start-up.
        while not list((out / builder.STAGING_DIR).glob("unit-*.json")) or len(_children(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the build ended or never got going"
            time.sleep(0.2)
        children = _children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        time.sleep(5)
        survivors = [pid for pid in children if _alive(pid)]
        assert survivors == [], f"worker processes {survivors} outlived the killed build"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in children:  # do not leave survivors running after a failure
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_full_disk_on_the_state_file_names_it_and_leaves_no_partial_file(tmp_path, quickdraw_dir, monkeypatch):
    from data_prep import atomic_files

    out = tmp_path / "out"

    def full_disk(fd):  # the text is in the temporary file's buffers when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_files.os, "fsync", full_disk)
    with pytest.raises(OSError) as error:
        quickdraw_build.build(config_for(quickdraw_dir / "simplified", out), RasterConfig(image_size=28),
                              progress=False)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(out / f".{builder.STATE_FILE}.tmp-{os.getpid()}")
    assert partial_files(out) == []
