"""The output folder of a patch run: where each file is, the run's inputs, step records, JSONL.

Every step keeps a record ``DIR/steps/STEP.json`` holding its key (its own settings and the
sha256 of everything it reads) and whether it finished. A rerun with the same key skips a
finished step and resumes an unfinished one; with another key it is an error that names
the differences and the files to remove to redo the step (and the steps after it).
"""

import json
import logging
import os
import shutil
from pathlib import Path

from evokd import files as steps
from evokd.errors import EvokdError
from evokd.files import read_json, write_json

logger = logging.getLogger(__name__)

STEPS = ("translate", "select", "synthesize", "analogy", "build", "train")
INPUTS = ("student", "teacher", "data", "pool", "mono")  # fixed by the first step
# What each step writes, relative to DIR (removed with the step to redo it).
OUTPUTS = {
    "translate": ["translations.jsonl", "translations.jsonl.partial", "translations.jsonl.parts"],
    "select": ["selected.jsonl"],
    "synthesize": ["synthesis.jsonl", "synthesis.jsonl.partial", "synthesis.jsonl.parts"],
    "analogy": [
        "analogy.jsonl",
        "analogy.jsonl.partial",
        "analogy.jsonl.parts",
        "analogy_words.json",
    ],
    "build": ["patch.jsonl", "data"],
    "train": ["checkpoints", "results", "results.json"],
}


# --- JSON Lines ------------------------------------------------------------------------------


def read_jsonl(path):
    """The rows of a JSON Lines file; a torn last line (a killed write) is cut off the file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping an unfinished last line (%d bytes)", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line]


def write_jsonl(path, rows):
    """Write ``rows`` to ``path`` atomically (complete or absent)."""
    tmp = Path(f"{path}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    steps.publish(tmp, path)


# --- the folder ------------------------------------------------------------------------------


class Workspace:
    """``DIR``: the inputs (``patch.json``), the files of every step and their records."""

    def __init__(self, out):
        self.out = Path(out)
        self.translations = self.out / "translations.jsonl"
        self.selected = self.out / "selected.jsonl"
        self.synthesis = self.out / "synthesis.jsonl"
        self.analogy = self.out / "analogy.jsonl"
        self.analogy_words = self.out / "analogy_words.json"
        self.patch = self.out / "patch.jsonl"
        self.data = self.out / "data"
        self.checkpoints = self.out / "checkpoints"
        self.results = self.out / "results.json"
        self.pool_dir = self.out / "pool"
        self.mono_dir = self.out / "mono"
        self.replies = self.out / "replies"  # an LLM teacher's replies (kept when a step is redone)
        self.report = self.out / "report.json"
        self._digests = {}

    def record_path(self, step):
        return self.out / "steps" / f"{step}.json"

    def record(self, step):
        path = self.record_path(step)
        return read_json(path) if path.is_file() else None

    def finished(self, step):
        record = self.record(step)
        return bool(record and record.get("finished"))

    def digest(self, path):
        """sha256 of a file, computed once per run (files are read only once complete)."""
        path = Path(path)
        if path not in self._digests:
            self._digests[path] = steps.file_digest(path)
        return self._digests[path]

    # --- inputs --------------------------------------------------------------------------

    def resolve_inputs(self, given):
        """The run's input paths: ``given`` (None = not given) merged with ``patch.json``.

        Inputs left out are read from ``patch.json``; changing one is an error.
        """
        path = self.out / "patch.json"
        known = read_json(path) if path.is_file() else {}
        inputs = {}
        for key in INPUTS:
            value = given.get(key)
            if value in (None, ""):
                value = None
            elif not str(value).startswith(("http://", "https://")):  # a server URL stays
                value = os.path.abspath(value)
            if key in known and value is not None and value != known[key]:
                raise EvokdError(
                    f"--{key} {given[key]}: {self.out} was started with --{key} {known[key]}; "
                    f"use another --out, or remove {self.out} to start over"
                )
            inputs[key] = known[key] if key in known else value
        missing = [f"--{k}" for k in ("student", "teacher", "data") if inputs[k] is None]
        if missing:
            raise EvokdError(
                f"{' '.join(missing)}: required ({self.out} holds no patch.json from an "
                "earlier step)"
            )
        return inputs

    def save_inputs(self, inputs):
        """Write ``patch.json`` on the first step (the inputs are then fixed)."""
        path = self.out / "patch.json"
        if not path.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(path, inputs)

    # --- step records --------------------------------------------------------------------

    def outputs(self, step):
        """The existing files of ``step`` and every later step (what redoing it removes)."""
        later = STEPS[STEPS.index(step) :]
        paths = [self.out / name for s in later for name in OUTPUTS[s]]
        paths += [self.record_path(s) for s in later]
        return [p for p in paths if p.exists()]

    def begin(self, step, key):
        """``"done"``, ``"resume"`` or ``"new"`` for ``step`` with ``key``; an error when the
        step was run with another key."""
        record = self.record(step)
        if record is not None and record["key"] != key:
            diffs = steps.differences(record["key"], key)
            remove = " ".join(str(p) for p in self.outputs(step))
            raise EvokdError(
                f"{self.out}: step {step} was run with other settings or inputs "
                f"({'; '.join(diffs)}); rerun with its settings, or remove {remove} to redo "
                "it and the steps after it"
            )
        if record is not None:
            return "done" if record["finished"] else "resume"
        for name in OUTPUTS[step]:  # left by a run whose record was removed
            path = self.out / name
            if path.exists():
                logger.warning("step %s: removing %s (no record of the step)", step, path)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.record_path(step).parent.mkdir(parents=True, exist_ok=True)
        write_json(self.record_path(step), {"step": step, "key": key, "finished": False})
        return "new"

    def finish(self, step, stats):
        record = self.record(step)
        record.update(finished=True, stats=stats)
        if step == "build":  # the training folder's checksums, checked before training
            record["data_sha256"] = steps.payload_digests(self.data)
        write_json(self.record_path(step), record)

    def check_data(self):
        """Check ``DIR/data`` against the checksums its build step recorded."""
        recorded = (self.record("build") or {}).get("data_sha256")
        if recorded is None:  # built before checksums were recorded
            logger.warning("%s: no checksums recorded; not verified", self.data)
            return
        hint = f"remove {self.record_path('build')} and rerun `evokd patch build` to rebuild it"
        steps.verify_payload("train", self.data, recorded, hint)

    def require(self, step, needed):
        """Fail unless the steps ``needed`` by ``step`` are finished."""
        for other in needed:
            if not self.finished(other):
                raise EvokdError(
                    f"step {step} needs step {other} first: run `evokd patch {other} --out "
                    f"{self.out}` (or `evokd patch` for every step)"
                )
