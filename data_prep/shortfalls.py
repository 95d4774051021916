"""Classes that a build leaves short or empty, reported and (when empty) refused.

Each builder says how many examples it wants of every class in every split: Quick, Draw! its
per-class quota (`--train_per_class`, `--test_per_class`), the image-folder and Sketchy builds 1
for each split a class belongs in (train, test when `--test_fraction` > 0, test_unseen for an
unseen class) and 0 elsewhere. A class holding fewer is a shortfall, listed in
`dataset_info.json` (`shortfalls`) and the summary line; a class with no example in a split it
should have stops the build unless `--allow_empty_classes` is given.
"""

from __future__ import annotations

from typing import Any, Callable

from data_prep.builder import BuildError

SHOWN = 5  # shortfalls named in the summary line; dataset_info.json lists all


def find(per_class: dict[str, dict[str, int]], wanted: dict[str, dict[str, int]],
         classes: list[str], splits: list[str]) -> list[dict[str, Any]]:
    """[{class, split, examples, wanted}] for every class and split holding fewer than wanted,
    in label order, then split order. A class absent from `per_class` holds 0 everywhere."""
    short = []
    for cls in classes:
        for split in splits:
            want = wanted.get(cls, {}).get(split, 0)
            have = per_class.get(cls, {}).get(split, 0)
            if have < want:
                short.append({"class": cls, "split": split, "examples": have, "wanted": want})
    return short


def check_empty(short: list[dict[str, Any]], allow_empty: bool) -> None:
    """BuildError naming every class with 0 examples in a split it should have, unless allowed."""
    empty = [s for s in short if s["examples"] == 0]
    if empty and not allow_empty:
        named = ", ".join(f"{s['class']!r} in {s['split']}" for s in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise BuildError(f"{len(empty)} class/split pair(s) have 0 examples: {named}{more} (an empty or "
                         "unreadable source, too few files for the split, or every file skipped). Fix the "
                         "source, or pass --allow_empty_classes to build anyway and run the same command again.")


def summary(short: list[dict[str, Any]]) -> str:
    """'short: cat train 25/1000, dog test 0/100' (the first SHOWN, then a count), or ''."""
    if not short:
        return ""
    shown = ", ".join(f"{s['class']} {s['split']} {s['examples']}/{s['wanted']}" for s in short[:SHOWN])
    more = f" and {len(short) - SHOWN} more (dataset_info.json: shortfalls)" if len(short) > SHOWN else ""
    return f"short: {shown}{more}"


def summarizer(wanted: dict[str, dict[str, int]], classes: list[str], splits: list[str], allow_empty: bool,
               extra: Callable[[list[dict]], dict[str, Any]] | None = None) -> Callable[[list[dict]], dict]:
    """A `summarize` for builder.run_build: adds `shortfalls` (and `extra(results)`), refusing empty
    classes unless allowed. It runs after the shards are written and before dataset_info.json, so a
    refused build is not finished: re-running with --allow_empty_classes completes it at once."""

    def summarize(results: list[dict]) -> dict[str, Any]:
        per_class: dict[str, dict[str, int]] = {}
        for result in results:
            for cls, counts in result["per_class"].items():
                merged = per_class.setdefault(cls, {})
                for split, n in counts.items():
                    merged[split] = merged.get(split, 0) + n
        short = find(per_class, wanted, classes, splits)
        check_empty(short, allow_empty)
        return {**(extra(results) if extra else {}), "shortfalls": short}

    return summarize
