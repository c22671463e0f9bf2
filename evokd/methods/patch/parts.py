"""A translating step's JSON Lines built in planned parts that survive a kill.

The steps that translate (``translate``, ``synthesize``, ``analogy``) plan their work from
the data alone: the sentences to translate in id order, sorted by source length (stable),
cut into batches at ``max_tokens`` (:meth:`evokd.core.inference.Translator.plan_batches`), the
batches grouped into parts of about ``chunk_size`` sentences
(:func:`evokd.distill.seqkd.plan_chunks`). The batches decide the translations, and do not
depend on the grouping or on what a killed run finished. Each part's rows go to
``NAME.jsonl.parts/partNNNNN.jsonl``, written atomically; the plan (its digest and
``chunk_size``) is recorded in ``NAME.jsonl.parts/building.json``. A resume refuses another
plan, and a finished part that does not hold the sentences the plan gives it. When every
part is there, the rows, each sentence exactly once, are written to ``NAME.jsonl`` in id
order (atomically) and the parts removed.
"""

import logging
import shutil
from pathlib import Path

from evokd import files as steps
from evokd.core.build import check_same_ids, describe_batches
from evokd.errors import EvokdError

from .workspace import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

PLAN = "building.json"


def parts_dir(path):
    """Where the parts of ``path`` are built."""
    return Path(f"{path}.parts")


def part_path(folder, c):
    return folder / f"part{c:05d}.jsonl"


def plan_parts(translator, ids, max_tokens, chunk_size):
    """The parts of the sentences ``ids``: lists of batches (see the module doc)."""
    from evokd.core.build import plan_chunks

    batches = translator.plan_batches(max_tokens, ids=ids, too_long="skip")
    return plan_chunks([list(map(int, b)) for b in batches], chunk_size)


def _planned(parts):
    return [i for batches in parts for batch in batches for i in batch]


def _check_part(path, batches, folder):
    ids = sorted(row["id"] for row in read_jsonl(path))
    if ids != sorted(i for batch in batches for i in batch):
        raise EvokdError(
            f"{path}: holds other sentences than the build plan gives it; remove {folder} "
            "to start over"
        )


def write_part(path, rows):
    """One part's rows, atomically (complete or absent)."""
    write_jsonl(path, rows)


def merge_parts(folder, parts, path):
    """Every part's rows, each planned sentence exactly once, to ``path`` in id order."""
    rows = [row for c in range(len(parts)) for row in read_jsonl(part_path(folder, c))]
    check_same_ids(str(folder), [row["id"] for row in rows], _planned(parts))
    rows.sort(key=lambda row: row["id"])
    write_jsonl(path, rows)  # complete, or not there
    _remove_parts(folder)
    return rows


def _remove_parts(folder):
    shutil.rmtree(folder)


def build_jsonl(path, parts, chunk_size, compute, desc):
    """``path``: the rows ``compute(batches)`` gives for every part of ``parts`` (see the
    module doc); resumes the parts a killed run left. Returns the rows, in id order."""
    from tqdm import tqdm

    path, folder = Path(path), parts_dir(path)
    planned = _planned(parts)
    plan = {"chunk_size": chunk_size, **describe_batches(parts, len(planned))}
    if path.is_file() and not folder.exists():  # merged by a run killed right after
        rows = read_jsonl(path)
        if sorted(row["id"] for row in rows) == sorted(planned):
            return rows
        logger.warning("%s: not the output of this plan: rebuilt", path)
    hint = "rerun with its settings to finish it, or remove it to start over"
    if folder.exists():
        if not (folder / PLAN).is_file():
            raise EvokdError(f"{folder}: exists but holds no {PLAN}; remove it to start over")
        recorded = steps.read_json(folder / PLAN)
        steps.check_settings(f"{folder}: an unfinished build", recorded, plan, hint)
        for c, batches in enumerate(parts):
            if part_path(folder, c).is_file():
                _check_part(part_path(folder, c), batches, folder)
    else:
        folder.mkdir(parents=True)
        steps.write_json(folder / PLAN, plan)
    todo = [c for c in range(len(parts)) if not part_path(folder, c).is_file()]
    if len(todo) < len(parts):
        logger.info("%s: %d of %d parts done earlier", desc, len(parts) - len(todo), len(parts))
    total = sum(len(b) for c in todo for b in parts[c])
    with tqdm(total=total, desc=desc, unit="sent", dynamic_ncols=True) as bar:
        for c in todo:
            write_part(part_path(folder, c), compute(parts[c]))
            bar.update(sum(len(b) for b in parts[c]))
    return merge_parts(folder, parts, path)
