"""Category names and category lists: the one rule and the one parser every builder and the downloader use.

A category (class) name becomes a file name (`<category>.ndjson`), a folder and a label, so it must be a
plain name: not empty, no '/', '\\', ':', NUL or other control character (newline, tab), no '..', no
leading '.', no leading or trailing spaces (the names of Google's Quick, Draw! files all pass).

A list of categories on the command line (`--categories`, `--unseen_classes`) is `N` (a count, which the
caller turns into a seeded choice), `name,name,...` (that order) or `@file.txt` (one name a line, that
order; blank lines and surrounding spaces dropped).
"""

from __future__ import annotations

import pathlib

NAME_RULE = ("a category must be a plain name (no path separators, ':', '..', leading dot, control characters "
             "such as newline or tab, or surrounding spaces)")


def is_safe_name(name: str) -> bool:
    """Whether `name` can be a category: see NAME_RULE."""
    return bool(name) and not (
        any(c in name for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or ".." in name
        or name.startswith(".")
        or name != name.strip()
    )


def parse_list(spec: str, flag: str) -> int | list[str]:
    """`N` -> the count N; `name,name` or `@file.txt` -> the names in their order (one a line; blank
    lines and lines starting with '#', such as a list's citation, are skipped).

    `flag` names the option in errors: a list file that is missing or not UTF-8 text is a ValueError.
    """
    spec = spec.strip()
    if spec.isdigit():
        return int(spec)
    if not spec.startswith("@"):
        return [name.strip() for name in spec.split(",") if name.strip()]
    path = pathlib.Path(spec[1:])
    if not path.is_file():
        raise ValueError(f"Invalid value for {flag}: list file {str(path)!r} not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Invalid value for {flag}: list file {str(path)!r} is not UTF-8 text.") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
