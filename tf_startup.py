"""Keep TensorFlow's C++ start-up lines off the user's terminal.

TF_CPP_MIN_LOG_LEVEL no longer reaches every line: on CPUs where oneDNN is on by default
(AVX-512 machines) TensorFlow 2.21 logs "oneDNN custom operations are on" through absl before
absl's log is initialised, after absl's own "All log messages before absl::InitializeLog()"
warning, twice per process. Each entry point calls `quiet()` first; TensorFlow is still
imported only when something needs it, and any other line it writes while loading reaches stderr.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

START_UP_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
)


def is_start_up_noise(line: str) -> bool:
    """Whether a line of stderr is one of TensorFlow's known start-up notices (INFO level)."""
    return any(pattern.match(line) for pattern in START_UP_NOISE)


@contextlib.contextmanager
def start_up_lines_filtered():
    """Capture file descriptor 2 for the block, then replay every line but the start-up notices."""
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(terminal_fd, 2)
            os.close(terminal_fd)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_start_up_noise(line)))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of the `tensorflow` package inside start_up_lines_filtered()."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with start_up_lines_filtered():
                self.loader.exec_module(module)
        finally:
            module.__loader__ = module.__spec__.loader = self.loader


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, the first time anything imports it, and hands it to _QuietLoader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet(min_log_level: str = "2") -> None:
    """Set TF_CPP_MIN_LOG_LEVEL (unless the user did) and, unless the user asked for INFO lines
    (level 0) or TensorFlow is already loaded, filter the start-up notices from its first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", min_log_level)
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() in ("", "0") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
