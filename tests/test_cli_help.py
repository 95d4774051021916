"""Every command and sub-command answers -h/-help/--help with its own flags and exit status 0."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

import configuration_sketch as cs
from tests.conftest import ROOT


def fields(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


# (command line after `python`, the flags its help must list: exactly these, or at least these for "train")
COMMANDS = [
    (["-m", "data_prep.sketchy", "--help"], fields(cs.SketchyBuildConfig)),
    (["-m", "data_prep.sketchy", "-h"], fields(cs.SketchyBuildConfig)),
    (["-m", "data_prep.sketchy", "build", "-h"], fields(cs.SketchyBuildConfig)),
    (["-m", "data_prep.image_folder", "--help"], fields(cs.ImageFolderBuildConfig)),
    (["-m", "data_prep.image_folder", "build", "-help"], fields(cs.ImageFolderBuildConfig)),
    (["-m", "data_prep.quickdraw", "build", "--help"], fields(cs.QuickDrawBuildConfig, cs.RasterConfig)),
    (["-m", "data_prep.quickdraw", "download", "-h"], fields(cs.QuickDrawDownloadConfig)),
    (["-m", "data_prep.quickdraw", "--help"], set()),  # the usage of both commands; no flags of its own
    (["-m", "data_prep.verify", "--help"], set()),
    (["-m", "data_prep.synthetic", "--help"], fields(cs.SyntheticConfig)),
    (["evaluate_similarity_lookup.py", "--help"], fields(cs.EvalConfig)),
    (["evaluate_similarity_lookup.py", "lookup", "-h"], fields(cs.EvalConfig)),
    (["train_sketch_net.py", "-help"],
     fields(cs.TrainConfig, cs.ModelConfig, cs.PipelineConfig, cs.AugmentConfig)),
    (["-m", "serving.batch", "--help"], fields(cs.BatchConfig)),
    (["-m", "webapp", "--help"], fields(cs.ServeConfig)),
]


@pytest.mark.parametrize("argv, expected", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_help_lists_the_commands_own_flags_and_exits_0(argv, expected):
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower() or "python" in done.stdout, done.stdout[:500]
    listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", done.stdout, re.MULTILINE))
    if argv[0] == "train_sketch_net.py":  # and the flags of every training task's configs
        assert expected <= listed, expected - listed
    else:
        assert listed == expected, (sorted(listed - expected), sorted(expected - listed))
    assert "Unknown command line flag" not in done.stdout + done.stderr


@pytest.mark.parametrize("argv, message", [
    (["build", "extra"], "data_prep.quickdraw build: unexpected arguments ['extra']"),
    (["build", "--bogus", "1"], "data_prep.quickdraw: Unknown command line flag 'bogus'"),
    (["download", "--categories", "12"], "error: download needs category names"),
])
def test_quickdraw_command_line_errors_are_one_line(argv, message):
    done = subprocess.run([sys.executable, "-m", "data_prep.quickdraw", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
