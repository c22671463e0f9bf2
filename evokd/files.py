"""Resumable steps: the machinery every builder that survives a kill shares.

A builder (the teacher cache, ``distill-data``, the translation steps of ``patch`` and
``mckd``) works in ``OUT.partial/``, records there the settings and the work plan it
started with, writes its parts atomically, and renames the folder to ``OUT`` only when it
is complete. A rerun resumes the parts that are missing after checking that the finished
ones belong to the same settings and plan; a rerun on finished output with the same
settings is a no-op, with other settings an error that names the difference.

The work plan is a function of the data alone: examples ordered by length with ties broken
by example id (never fairseq's ``ordered_indices()``, which shuffles ties with the global
numpy RNG), cut into parts. Every process and every resumed run cuts the same parts.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from evokd.errors import EvokdError


def write_json(path, value):
    """Write ``value`` as JSON to ``path`` atomically (complete or not at all)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_png(fig, path, dpi=120):
    """Save a matplotlib figure to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def file_digest(path, chunk=1 << 20):
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def array_digest(array):
    """sha256 of an integer array's values (int64, so the dtype does not matter)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.int64).tobytes()).hexdigest()


def differences(theirs, ours, where=""):
    """``key: A there, B now`` for every key whose value differs (nested dicts by path)."""
    diffs = []
    for key in sorted(set(theirs) | set(ours), key=str):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{where}{key}.")
        elif a != b:
            if str(key).endswith("sha256") and isinstance(a, str) and isinstance(b, str):
                a, b = a[:12], b[:12]
            diffs.append(f"{where}{key}: {a!r} there, {b!r} now")
    return diffs


def check_settings(where, recorded, wanted, hint):
    """Raise an error naming every difference between ``recorded`` and ``wanted``."""
    diffs = differences(recorded, wanted)
    if diffs:
        raise EvokdError(f"{where}: made with other settings ({'; '.join(diffs)}); {hint}")


def partial_path(out):
    """Where ``out`` is built until it is complete."""
    return Path(f"{out}.partial")


def publish(partial, out):
    """Rename the finished ``partial`` folder to ``out``: it appears complete or not at all."""
    os.replace(partial, out)


# --- the work plan --------------------------------------------------------------------------


def length_order(src_sizes, tgt_sizes=None):
    """Example ids sorted by (source length, target length, id): dense batches, and the same
    order in every process and every run (fairseq's ordered_indices() without the shuffle)."""
    src_sizes = np.asarray(src_sizes, dtype=np.int64)
    ids = np.arange(len(src_sizes), dtype=np.int64)
    if tgt_sizes is None:
        return ids[np.lexsort((ids, src_sizes))]
    tgt_sizes = np.asarray(tgt_sizes, dtype=np.int64)
    return ids[np.lexsort((ids, tgt_sizes, src_sizes))]


def cut(order, part_size):
    """``order`` cut into consecutive parts of ``part_size`` examples (the last shorter)."""
    if part_size < 1:
        raise EvokdError(f"--chunk-size {part_size}: expected N >= 1")
    return [order[i : i + part_size] for i in range(0, len(order), part_size)]


def describe_plan(parts, n_examples):
    """What a build records about its plan, to check finished parts against on resume."""
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return {
        "examples": int(n_examples),
        "parts": len(parts),
        "plan_sha256": array_digest(flat),
    }


def check_complete(where, ids, n_examples):
    """Every example id 0..n-1 exactly once in ``ids``, or an error naming what is wrong."""
    ids = np.asarray(ids, dtype=np.int64)
    seen = np.bincount(ids[(ids >= 0) & (ids < n_examples)], minlength=n_examples)
    missing = np.flatnonzero(seen == 0)
    twice = np.flatnonzero(seen > 1)
    outside = ids[(ids < 0) | (ids >= n_examples)]
    if len(ids) != n_examples or len(missing) or len(twice) or len(outside):
        problems = []
        if len(missing):
            problems.append(f"{len(missing)} examples missing (e.g. {missing[:3].tolist()})")
        if len(twice):
            problems.append(f"{len(twice)} more than once (e.g. {twice[:3].tolist()})")
        if len(outside):
            problems.append(f"{len(outside)} ids outside 0..{n_examples - 1}")
        if not problems:
            problems.append(f"{len(ids)} entries for {n_examples} examples")
        raise EvokdError(f"{where}: incomplete index ({'; '.join(problems)}); rebuild it")


def check_files_and_settings(where, recorded, wanted, hint):
    """:func:`check_settings` for records that name files: a key ``NAME`` with a partner
    ``NAME_sha256`` is a file's path and digest. A file counts as changed when its content
    did (not its path) and is named with both paths: ``NAME: A (sha256 ..) there, B (..) now``.
    """
    files = {k[: -len("_sha256")] for k in set(recorded) | set(wanted) if k.endswith("_sha256")}
    files = {k for k in files if k in recorded or k in wanted}
    diffs = []
    for name in sorted(files):
        a, b = recorded.get(f"{name}_sha256"), wanted.get(f"{name}_sha256")
        if a != b:
            there = f"{recorded.get(name)} (sha256 {str(a)[:12]})"
            diffs.append(f"{name}: {there} there, {wanted.get(name)} (sha256 {str(b)[:12]}) now")
    skip = files | {f"{k}_sha256" for k in files}
    rest = [{k: v for k, v in d.items() if k not in skip} for d in (recorded, wanted)]
    diffs += differences(*rest)
    if diffs:
        raise EvokdError(f"{where}: made with other settings ({'; '.join(diffs)}); {hint}")


def claim(out, record, settings, kind, hint):
    """Make ``out`` a folder of ``kind`` made with ``settings`` (recorded in ``out/record``),
    or check that an existing one was; a folder holding anything else is refused."""
    out, path = Path(out), Path(out) / record
    if path.is_file():
        check_settings(f"--out {out}", read_json(path), settings, hint)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvokdError(
            f"--out {out}: exists and is not {kind} (no {record}); give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


# --- plans of batches, and checks of what was built -----------------------------------------


def describe_batches(chunks, n_examples):
    """:func:`describe_plan` for a plan whose parts are lists of batches (lists of example
    ids): the digest covers the batches too, since they decide what a translation gives."""
    flat = [np.asarray([len(b), *b], dtype=np.int64) for chunk in chunks for b in chunk]
    flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return {"examples": int(n_examples), "parts": len(chunks), "plan_sha256": array_digest(flat)}


def check_same_ids(where, found, expected):
    """``found`` holds every id of ``expected`` exactly once and nothing else, or an error
    naming what is missing, doubled or foreign."""
    found, expected = list(found), list(expected)
    wanted, seen = set(expected), {}
    for i in found:
        seen[i] = seen.get(i, 0) + 1
    missing = sorted(wanted - set(seen))
    twice = sorted(i for i, n in seen.items() if n > 1)
    foreign = sorted(set(seen) - wanted)
    if missing or twice or foreign:
        problems = []
        if missing:
            problems.append(f"{len(missing)} examples missing (e.g. {missing[:3]})")
        if twice:
            problems.append(f"{len(twice)} more than once (e.g. {twice[:3]})")
        if foreign:
            problems.append(f"{len(foreign)} not in the plan (e.g. {foreign[:3]})")
        raise EvokdError(f"{where}: incomplete ({'; '.join(problems)}); rebuild it")


def check_count(where, found, expected, what="entries"):
    """An error unless ``found == expected`` (an index or dataset cut short, or grown)."""
    if found != expected:
        raise EvokdError(f"{where}: holds {found} {what} where {expected} are expected; rebuild it")
