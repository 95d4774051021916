"""One category-name rule and one category-list parser, shared by the readers, builders and downloader."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_prep import categories, download, quickdraw, quickdraw_build, sketchy
from data_prep.quickdraw_cli import download_names
from data_prep.skips import BadRecord
from tests.conftest import ROOT

# name -> whether it may be a category, decided by hand from the rule (Google's names all pass).
NAMES = {
    "cat": True, "The Eiffel Tower": True, "t-shirt": True, "car_(sedan)": True, "a.b": True,
    "": False, " cat": False, "cat ": False, "a/b": False, "a\\b": False, "a:b": False, "a..b": False,
    ".hidden": False, "..": False, ".": False, "do\ng": False, "tab\there": False, "nul\x00": False,
    "del\x7f": False,
}


def accepted(call, *args) -> bool:
    try:
        call(*args)
    except (BadRecord, ValueError):
        return False
    return True


@pytest.mark.parametrize("name, safe", NAMES.items(), ids=[repr(n) for n in NAMES])
def test_every_caller_applies_the_same_name_rule(name, safe):
    assert categories.is_safe_name(name) is safe
    if "/" not in name:  # the reader takes a path: its last part is the file name
        assert accepted(quickdraw.category_name, name + ".ndjson") is safe
    assert accepted(download.local_name, name, "simplified") is safe
    if name == name.strip() and "," not in name:  # a listed name is stripped of surrounding spaces
        assert accepted(quickdraw_build.select_categories, [name], name, 0) is safe


def test_sketchy_applies_the_rule_to_the_spelling_key():
    """Sketchy folds spaces, newlines, hyphens and case first: ' cat' and 'do\\ng' become 'cat' and 'do_g'."""
    assert categories.is_safe_name(sketchy.match_key(" cat"))
    assert categories.is_safe_name(sketchy.match_key("do\ng"))
    assert not categories.is_safe_name(sketchy.match_key("ow\\l"))
    assert not categories.is_safe_name(sketchy.match_key("a:b"))


@pytest.mark.parametrize("form", ["file", "commas"])
def test_every_category_list_is_parsed_alike(tmp_path, form):
    names = ["cat", "dog", "The Eiffel Tower"]
    listing = tmp_path / "list.txt"
    listing.write_text("cat\n\n  dog \nThe Eiffel Tower\n", encoding="utf-8")
    spec = f"@{listing}" if form == "file" else " cat, dog,,The Eiffel Tower "
    assert categories.parse_list(spec, "--categories") == names
    assert quickdraw_build.select_categories(names + ["zebra"], spec, seed=0) == names
    assert download_names(spec) == names
    assert sketchy.select_unseen(spec, names + ["zebra"], seed=0) == sorted(names)
    assert categories.parse_list(" 12 ", "--categories") == 12


def test_a_bad_list_file_is_the_same_error_everywhere(tmp_path):
    missing = f"@{tmp_path / 'missing.txt'}"
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    for spec, message in ((missing, "missing.txt' not found"), (f"@{latin}", "latin1.txt' is not UTF-8 text")):
        for call in (lambda: quickdraw_build.select_categories(["cat"], spec, 0), lambda: download_names(spec),
                     lambda: sketchy.select_unseen(spec, ["cat", "dog"], 0)):
            with pytest.raises(ValueError, match=message):
                call()


def test_the_reader_imports_nothing_of_the_build():
    code = ("import sys, data_prep.quickdraw; "
            "print(sorted(m for m in sys.modules if m.startswith(('data_prep.quickdraw_', 'data_prep.builder'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
