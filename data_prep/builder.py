"""Resumable, parallel building of a sharded data set from independent units of work.

A build is split into units (a Quick, Draw! category, a Sketchy category, ...). Each unit is
processed once, in a worker process, into one staging TFRecord file per split plus a small
JSON result (counts, skips, sources); a unit whose result exists is not redone. When every
unit is staged, each split's records are dealt round-robin across units into the final shards,
so every shard mixes all classes. Shards already complete are skipped, and
`dataset_info.json` is written last: its presence marks a finished build. Re-running the
same command after an interruption (kill -9 included) resumes where it stopped.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

from data_prep import tfrecords
from data_prep.atomic_files import write_json_atomic

STAGING_DIR = ".staging"
STATE_FILE = ".build_state.json"

# unit_fn(unit, staging_paths: {split: Path}) -> result dict with keys:
#   read (int), written {split: n}, per_class {class: {split: n}}, skipped {reason: n},
#   skip_examples {reason: message}, over_quota (int), sources [ {file, sha256, num_bytes, ...} ]
# and, optionally, ids {split: [record id in staged order]} (a unit of one class): a record whose id an
# earlier unit staged is left out of the shards and counted as a duplicate_key skip.
UnitFn = Callable[[dict, dict], dict]


class BuildError(RuntimeError):
    """A build that cannot proceed (a folder holding another build, a failed unit)."""


def fingerprint(args: dict[str, Any]) -> str:
    """A stable hash of the build arguments that decide the output (not worker counts)."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _unit_result_path(staging: pathlib.Path, index: int) -> pathlib.Path:
    return staging / f"unit-{index:05d}.json"


def _unit_staging_paths(staging: pathlib.Path, splits: list[str], index: int) -> dict[str, pathlib.Path]:
    return {split: staging / split / f"unit-{index:05d}.tfrecord" for split in splits}


def _worker_init(parent_pid: int) -> None:
    import tf_startup

    tf_startup.quiet()
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the build process dies, kill -9 included (Linux
    prctl PR_SET_PDEATHSIG): an orphaned worker would go on staging units, holding its memory."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request above
        os._exit(1)


def _run_unit(unit_fn: UnitFn, unit: dict, paths: dict[str, pathlib.Path]) -> dict:
    return unit_fn(unit, paths)


def _check_state(out_dir: pathlib.Path, fp: str) -> None:
    """Refuse to mix two different builds in one folder."""
    state_path = out_dir / STATE_FILE
    info_path = out_dir / tfrecords.INFO_FILE
    for path in (state_path, info_path):
        if path.is_file():
            found = json.loads(path.read_text()).get("build", {}).get("fingerprint")
            if found != fp:
                raise BuildError(
                    f"{str(out_dir)!r} holds a different build (fingerprint {found}, this one {fp}). "
                    "Use another --out folder or delete this one.")
    if not state_path.is_file() and not info_path.is_file():
        # A folder without build state may still hold shards or staged units of some other build
        # (one whose dataset_info.json was deleted): resuming would adopt them as this build's own.
        strays = sorted(p.name for p in out_dir.iterdir() if ".tfrecord" in p.name or p.name == STAGING_DIR)
        if strays:
            raise BuildError(
                f"{str(out_dir)!r} holds {len(strays)} shard or staging file(s) of an unknown build "
                f"({', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}) and no {STATE_FILE}. "
                "Use another --out folder or delete them.")
        write_json_atomic(state_path, {"build": {"fingerprint": fp}})


def _remove_partial_files(out_dir: pathlib.Path) -> None:
    """Delete the temporary files (`.<name>.tmp-<pid>`) an interrupted or failed run left behind."""
    for partial in [*out_dir.glob(".*.tmp-*"), *(out_dir / STAGING_DIR).rglob(".*.tmp-*")]:
        partial.unlink(missing_ok=True)


def _stage_units(units: list[dict], unit_fn: UnitFn, staging: pathlib.Path, splits: list[str],
                 workers: int, progress: bool) -> list[dict]:
    """Process every unit not yet staged; returns all unit results in unit order."""
    for split in splits:
        (staging / split).mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(units)) if not _unit_result_path(staging, i).is_file()]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="units", unit="unit",
               disable=not progress, file=sys.stderr)

    def finish(i: int, result: dict) -> None:
        write_json_atomic(_unit_result_path(staging, i), result)
        bar.update(1)

    if workers <= 1:
        for i in todo:
            finish(i, unit_fn(units[i], _unit_staging_paths(staging, splits, i)))
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                    initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_run_unit, unit_fn, units[i], _unit_staging_paths(staging, splits, i)): i
                       for i in todo}
            try:
                for future in concurrent.futures.as_completed(futures):
                    finish(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # do not stage the other units first
                raise
    bar.close()
    return [json.loads(_unit_result_path(staging, i).read_text()) for i in range(len(units))]


def _round_robin(files: list[str], drop: list[set[int]]):
    """Records of `files` taken one from each file in turn (an exhausted file drops out), leaving out
    the positions in `drop[i]` of file i."""
    def kept(path: str, left_out: set[int]):
        return (r for k, r in enumerate(tfrecords.read_records(path)) if k not in left_out)

    readers = [kept(f, d) for f, d in zip(files, drop)]
    while readers:
        for reader in list(readers):
            try:
                yield next(reader)
            except StopIteration:
                readers.remove(reader)


def duplicate_positions(results: list[dict], splits: list[str]) -> dict[tuple[int, str], list[int]]:
    """{(unit, split): staged positions} of the records whose id an earlier unit (in unit order, any
    split) already staged; deterministic, so a resumed build drops the same records."""
    seen: set[str] = set()
    drop: dict[tuple[int, str], list[int]] = {}
    for i, result in enumerate(results):
        ids = result.get("ids") or {}
        unit_ids = {split: ids.get(split, []) for split in splits}
        for split, keys in unit_ids.items():
            repeated = [k for k, key in enumerate(keys) if key in seen]
            if repeated:
                drop[(i, split)] = repeated
        for keys in unit_ids.values():
            seen.update(keys)
    return drop


def _count_duplicates(results: list[dict], drop: dict[tuple[int, str], list[int]], skipped: collections.Counter,
                      skip_examples: dict[str, str], per_class: dict[str, dict[str, int]]) -> None:
    """Move the dropped duplicates from the per-class counts to the duplicate_key skips."""
    for (i, split), positions in sorted(drop.items()):
        result = results[i]
        (cls,) = result["per_class"]
        per_class[cls][split] -= len(positions)
        skipped["duplicate_key"] += len(positions)
        key = result["ids"][split][positions[0]]
        where = ", ".join(s["file"] for s in result.get("sources", [])) or cls
        skip_examples.setdefault("duplicate_key", f"{where}: key_id {key} (and {len(positions) - 1} more) "
                                                  "already read from another source file")


def _write_split_shards(out_dir: pathlib.Path, staging: pathlib.Path, split: str, num_units: int,
                        total: int, num_shards: int, drop: dict[tuple[int, str], list[int]]) -> list[dict]:
    """Deal the staged records of `split` round-robin over units into shards; skip finished shards."""
    tf = tfrecords._tf()
    num_shards = max(1, min(num_shards, total))
    names = [tfrecords.shard_filename(split, i, num_shards) for i in range(num_shards)]
    missing = [i for i, name in enumerate(names) if not (out_dir / name).is_file()]
    if missing:
        files = {i: str(_unit_staging_paths(staging, [split], i)[split]) for i in range(num_units)}
        units = [i for i, f in files.items() if os.path.getsize(f) > 0]
        tmp = {i: out_dir / f".{names[i]}.tmp-{os.getpid()}" for i in missing}
        writers = {i: tf.io.TFRecordWriter(str(tmp[i])) for i in missing}
        dealt = _round_robin([files[i] for i in units], [set(drop.get((i, split), ())) for i in units])
        for k, record in enumerate(dealt):
            writer = writers.get(k % num_shards)
            if writer is not None:
                writer.write(record)
        for i in missing:
            writers[i].close()
            os.replace(tmp[i], out_dir / names[i])
    shards = []
    for name in names:
        path = out_dir / name
        shards.append({"file": name, "num_examples": tfrecords.count_records(path),
                       "num_bytes": path.stat().st_size, "sha256": tfrecords.sha256_file(path)})
    return shards


def run_build(out_dir: str | os.PathLike, *, units: list[dict], unit_fn: UnitFn, splits: list[str],
              num_shards: int, workers: int, build_args: dict[str, Any], info: dict[str, Any],
              progress: bool = True,
              summarize: Callable[[list[dict]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build (or resume building) a sharded data set; returns the dataset_info dict written.

    `info` carries what the caller knows (name, classes, features, renderer settings); this
    function adds splits, per-class counts, sources, skips and the build record.
    `summarize(unit_results)`, when given, returns extra dataset_info keys computed from the
    units' own result keys (per-domain counts, for instance).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(build_args)
    _check_state(out_dir, fp)
    info_path = out_dir / tfrecords.INFO_FILE
    if info_path.is_file():
        return json.loads(info_path.read_text())
    _remove_partial_files(out_dir)
    try:
        return _build(out_dir, fp, units=units, unit_fn=unit_fn, splits=splits, num_shards=num_shards,
                      workers=workers, build_args=build_args, info=info, progress=progress, summarize=summarize)
    except (OSError, tfrecords._tf().errors.OpError) as e:
        # A full disk, a read-only folder: free the space the partial files hold and say it in one line
        # (TensorFlow's message names the file: "<path>; No space left on device").
        _remove_partial_files(out_dir)
        message = (getattr(e, "message", None) or str(e) or type(e).__name__).splitlines()[0]
        raise BuildError(f"building in {str(out_dir)!r} stopped: {message}. Fix that (free disk space, ...) "
                         "and run the same command again to resume.") from None


def _build(out_dir: pathlib.Path, fp: str, *, units: list[dict], unit_fn: UnitFn, splits: list[str],
           num_shards: int, workers: int, build_args: dict[str, Any], info: dict[str, Any], progress: bool,
           summarize: Callable[[list[dict]], dict[str, Any]] | None) -> dict[str, Any]:
    info_path = out_dir / tfrecords.INFO_FILE
    started = time.time()
    staging = out_dir / STAGING_DIR
    results = _stage_units(units, unit_fn, staging, splits, workers, progress)

    skipped: collections.Counter = collections.Counter()
    skip_examples: dict[str, str] = {}
    per_class: dict[str, dict[str, int]] = {}
    sources: list[dict] = []
    read = over_quota = 0
    for result in results:
        read += result["read"]
        over_quota += result.get("over_quota", 0)
        skipped.update(result["skipped"])
        for reason, message in result.get("skip_examples", {}).items():
            skip_examples.setdefault(reason, message)
        for cls, counts in result["per_class"].items():
            merged = per_class.setdefault(cls, {s: 0 for s in splits})
            for split, n in counts.items():
                merged[split] += n
        sources.extend(result.get("sources", []))
    drop = duplicate_positions(results, splits)
    _count_duplicates(results, drop, skipped, skip_examples, per_class)
    if any(units[i].get("strict") for i, _ in drop):
        raise BuildError(f"--strict: {skip_examples['duplicate_key']}")

    split_info = {}
    for split in splits:
        total = sum(r["written"].get(split, 0) for r in results) - sum(
            len(positions) for (_, s), positions in drop.items() if s == split)
        shards = _write_split_shards(out_dir, staging, split, len(units), total, num_shards, drop)
        written = sum(s["num_examples"] for s in shards)
        if written != total:
            raise BuildError(f"split {split!r}: staged {total} records but the shards hold {written}; "
                             f"delete {str(out_dir)!r} and build again.")
        split_info[split] = {
            "num_examples": written,
            "shards": shards,
            "per_class": {cls: counts[split] for cls, counts in per_class.items()},
        }

    records_written = sum(s["num_examples"] for s in split_info.values())
    info = dict(info)
    info.update({
        "schema_version": tfrecords.SCHEMA_VERSION,
        "splits": split_info,
        "sources": sources,
        "records": {"read": read, "written": records_written, "skipped": sum(skipped.values()),
                    "over_quota": over_quota},
        "skipped": dict(sorted(skipped.items())),
        "skip_examples": dict(sorted(skip_examples.items())),
        "build": {"fingerprint": fp, "args": build_args,
                  "seconds": round(time.time() - started, 2),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    })
    if summarize is not None:
        info.update(summarize(results))
    if read != records_written + info["records"]["skipped"] + over_quota:
        raise BuildError(f"record accounting failed: read {read} != written {records_written} + skipped "
                         f"{info['records']['skipped']} + over quota {over_quota}")
    write_json_atomic(info_path, info)
    shutil.rmtree(staging, ignore_errors=True)
    (out_dir / STATE_FILE).unlink(missing_ok=True)
    return info
