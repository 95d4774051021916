"""Keep library start-up noise off the user's terminal: TensorFlow's C++ log lines, Beam's
notices and its worker processes' logs go to a log file; our own lines still reach the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def stderr_to_log(enabled: bool = True, prefix: str = "sketch-"):
    """Point file descriptor 2 (inherited by worker processes) at a temporary log file and yield
    (a stream to the real terminal, the log path). Disabled: yield (sys.stderr, None)."""
    if not enabled:
        yield sys.stderr, None
        return
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    log_fd, log_path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.dup2(log_fd, 2)
    os.close(log_fd)
    terminal = os.fdopen(terminal_fd, "w", buffering=1)
    saved = sys.stderr
    sys.stderr = terminal
    try:
        yield terminal, log_path
    finally:
        terminal.flush()
        sys.stderr = saved
        os.dup2(terminal_fd, 2)
        terminal.close()
