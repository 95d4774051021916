"""Counted skips: every bad record is either an error (strict mode) or counted with its reason."""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import pathlib
import stat


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is a short stable key such as 'malformed_json'."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StrictModeError(RuntimeError):
    """Raised in strict mode at the first bad record, naming where it was."""


@dataclasses.dataclass
class SkipCounter:
    """Counts skipped records by reason; in strict mode the first skip raises instead."""

    strict: bool = False
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Record one skipped record. `where` names the file and line (or index)."""
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise StrictModeError(message)
        self.counts[reason] += 1
        self.examples.setdefault(reason, message)

    def merge(self, other: "SkipCounter") -> None:
        self.counts.update(other.counts)
        for reason, message in other.examples.items():
            self.examples.setdefault(reason, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        """One line: 'skipped 3 records: empty_drawing=2, malformed_json=1'."""
        if not self.counts:
            return "skipped 0 records"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"skipped {self.total} records: {parts}"


def path_problem(path: pathlib.Path) -> tuple[str, str] | None:
    """(reason, detail) when `path` is not a regular file, else None: 'broken_link' (a symbolic-link
    loop, or a link to nothing), 'not_a_file' (a folder, pipe, socket or device), 'unreadable_file'
    (another OS error, such as permission denied on the folder)."""
    try:
        status = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "broken_link", "a symbolic link loop"
        if path.is_symlink():
            return "broken_link", f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "unreadable_file", e.strerror or type(e).__name__
    if stat.S_ISDIR(status.st_mode):
        return "not_a_file", "a folder"
    if not stat.S_ISREG(status.st_mode):
        return "not_a_file", "not a regular file (a pipe, socket or device)"
    return None
