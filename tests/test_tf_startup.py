"""tf_startup: TensorFlow's start-up notices stay off stderr, every other line still reaches it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import tf_startup

ROOT = pathlib.Path(__file__).resolve().parents[1]
ABSL_WARNING = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN_NOTICE = ("I0000 00:00:1796641705.858543     519 port.cc:153] oneDNN custom operations are on. You may see "
                 "slightly different numerical results due to floating-point round-off errors.\n")


def test_only_the_two_known_notices_count_as_noise():
    assert tf_startup.is_start_up_noise(ABSL_WARNING)
    assert tf_startup.is_start_up_noise(ONEDNN_NOTICE)
    assert not tf_startup.is_start_up_noise("W0000 00:00:1.0  5 port.cc:153] oneDNN custom operations are off\n")
    assert not tf_startup.is_start_up_noise("E0000 00:00:1796641705.858543  519 cuda_dnn.cc:8] Unable to load cuDNN\n")
    assert not tf_startup.is_start_up_noise("error: something the user must see\n")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**environment, "PYTHONPATH": str(ROOT), **env})


def test_the_filter_drops_the_notices_written_to_file_descriptor_2_and_replays_the_rest():
    code = ("import os, sys, tf_startup\n"
            "with tf_startup.start_up_lines_filtered():\n"
            f"    os.write(2, {ABSL_WARNING!r}.encode())\n"
            "    os.write(2, b'kept from C\\n')\n"
            f"    os.write(2, {ONEDNN_NOTICE!r}.encode())\n"
            "    print('kept from Python', file=sys.stderr)\n"
            "print('after', file=sys.stderr)\n")
    result = run_python(code)
    assert result.returncode == 0 and result.stderr == "kept from C\nkept from Python\nafter\n", result.stderr


def test_importing_tensorflow_after_quiet_writes_nothing_to_stderr_and_loads_the_real_package():
    code = ("import sys, tf_startup\n"
            "tf_startup.quiet()\n"
            "import keras, tensorflow as tf\n"
            "assert tf.constant(2).numpy() == 2 and type(tf.__loader__).__name__ != '_QuietLoader'\n"
            "print('ok', file=sys.stderr)\n")
    result = run_python(code)
    assert result.returncode == 0 and result.stderr == "ok\n", result.stderr


def test_a_user_who_asks_for_info_lines_gets_the_import_unfiltered():
    code = "import sys, tf_startup\ntf_startup.quiet()\nprint(any(type(f).__name__ == '_QuietFinder' for f in sys.meta_path))\n"
    assert run_python(code, TF_CPP_MIN_LOG_LEVEL="0").stdout == "False\n"
    assert run_python(code).stdout == "True\n"
