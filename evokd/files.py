"""Files written so that they appear complete or not at all, their digests, and the check
that an output was made with the settings asked for.

The one module that replaces files (``os.replace``): :func:`write_json`, :func:`write_png`,
:func:`publish` (rename a finished ``OUT.partial`` into place). :func:`check_settings` and
:func:`check_files_and_settings` refuse an output made with other settings and name every
difference; :func:`claim` makes a folder an output of one kind; :func:`check_name` keeps a name
that becomes a folder a name. The chunked, resumable
builder that uses them is :mod:`evokd.core.build`.
"""

import hashlib
import json
import os
import re
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


def json_copy(value):
    """``value`` as it reads back from JSON (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


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


PAYLOAD = "payload_sha256"
REBUILD = "remove it and rebuild it"


def payload_digests(folder, skip=()):
    """sha256 of every file under ``folder`` but ``skip`` (names relative to it, in ``/``
    form): what a step records about its output when it builds it."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {name: file_digest(folder / name) for name in names if name not in set(skip)}


def verify_payload(where, folder, recorded, hint=REBUILD):
    """Check the files under ``folder`` against ``recorded`` (:func:`payload_digests` made
    when they were built): a file missing or changed is an error naming it and ``hint``."""
    folder = Path(folder)
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            raise EvokdError(f"{where}: {path} is missing; the output is damaged: {hint}")
        if file_digest(path) != digest:
            raise EvokdError(
                f"{where}: {path} is damaged (its sha256 differs from the one recorded when it "
                f"was built); {hint}"
            )


NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a name that becomes a folder
NAME_RULE = (
    "letters, digits, '_', '-' and '.' only, not starting with '-', and not '.' or '..' "
    "(it names a folder)"
)


def check_name(what, name):
    """``name`` (of a plan, a stage or a run) as a folder name that stays a name: never a
    path, nor a path component such as ``..``, nor a flag. Raises an error giving the rule."""
    name = str(name)
    if not NAME.match(name) or name in (".", "..") or name.startswith("-"):
        raise EvokdError(f"{what} {name!r}: a name may use {NAME_RULE}")
    return name
