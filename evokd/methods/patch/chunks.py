"""A translating step's JSON Lines, built by the chunked builder so that they survive a kill.

The steps that translate (``translate``, ``synthesize``, ``analogy``) plan their work from
the data alone: the sentences to translate by source length, ties by id (the one ordering of
:mod:`evokd.core.build`), cut into batches at ``max_tokens``
(:meth:`evokd.core.inference.Translator.plan_batches`; a sentence too long is left out with
a warning), the batches grouped into chunks of about ``chunk_size`` sentences. The batches
decide the translations, and do not depend on the grouping or on what a killed run finished.
:class:`evokd.core.build.ChunkedBuild` builds ``NAME.jsonl`` in ``NAME.jsonl.partial/``
(each chunk's rows in ``chunks/chunkNNNNN/rows.jsonl``); when every chunk is there, the
rows, each sentence exactly once, are written in id order and renamed to ``NAME.jsonl``.
"""

import logging
from pathlib import Path

from evokd.core.build import ChunkedBuild, plan_chunks

from .workspace import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

ROWS = "rows.jsonl"


def plan(translator, ids, max_tokens, chunk_size):
    """The chunks of the sentences ``ids``: lists of batches (see the module doc)."""
    batches = translator.plan_batches(max_tokens, ids=ids, too_long="skip")
    return plan_chunks(batches, chunk_size)


def write_rows(folder, rows):
    """One chunk's rows."""
    write_jsonl(folder / ROWS, rows)


def merge_rows(dest, folders):
    """Every chunk's rows to ``dest``, in id order. Returns the rows."""
    rows = sorted((row for f in folders for row in read_jsonl(f / ROWS)), key=lambda r: r["id"])
    write_jsonl(dest, rows)
    return rows


def _with_ids(compute, batches):
    rows = compute(batches)
    return [row["id"] for row in rows], rows


def build_jsonl(path, chunks, chunk_size, compute, desc):
    """``path``: the rows ``compute(batches)`` gives for every chunk of ``chunks`` (see the
    module doc); resumes the chunks a killed run left. Returns the rows, in id order."""
    path = Path(path)
    build = ChunkedBuild(path, chunks, {}, chunk_size, write_rows, "build")
    if path.is_file():  # published by a run killed before its step was recorded finished
        build.clean()
        rows = read_jsonl(path)
        if sorted(row["id"] for row in rows) == sorted(build.ids):
            return rows
        logger.warning("%s: not the output of this plan: rebuilt", path)
        path.unlink()
    build.start()
    build.compute(lambda batches: _with_ids(compute, batches), desc=desc)
    return build.finish(merge_rows)
