"""The one chunked, resumable, multi-process builder: :class:`ChunkedBuild`.

Every evokd output that takes long to compute (a teacher cache, a distilled dataset, the
translations of a ``patch`` step) is built the same way.

The work plan is a function of the data alone. Examples are ordered by source length, ties
broken by example id (:func:`length_order`: stable, no RNG; never fairseq's
``ordered_indices()``, which shuffles ties with the global numpy RNG), cut into batches at
``max_tokens`` by the caller, and the batches grouped into chunks of at most ``chunk_size``
examples (:func:`plan_chunks`). Every process and every resumed run cuts the same chunks,
and the batches, thus the results, do not depend on the chunking. (``distill-data`` alone
keeps fairseq-generate's batches, so that its targets equal fairseq-generate's output; they
too are the same in every process and run: :mod:`evokd.distill.seqkd`.)

The build lives in ``OUT.partial/`` until it is complete::

    OUT.partial/building.json         the settings and the plan (chunk_size and digest)
    OUT.partial/chunks/chunkNNNNN/    a finished chunk: the caller's files and ids.npy
    OUT.partial/chunks/chunkNNNNN.tmp a chunk being written (a kill leaves it: redone)
    OUT.partial/NAME                  the merged output (NAME is OUT's name), then renamed

A resume first checks the record: other settings, another chunk size or another plan is
an error naming the folder and every difference, and so is a finished chunk that holds other
examples than the plan gives it. The chunks are computed by N processes (chunk ``c`` by
process ``c mod N``), each loading what it computes with once; with N > 1 each process uses
``os.cpu_count() // N`` threads (at least one), a single process torch's default. The merge
checks that the chunks hold every planned example exactly once, lets the caller write the
output to ``OUT.partial/NAME``, renames it to ``OUT`` (:func:`evokd.files.publish`) and
removes ``OUT.partial``. A kill at any point leaves the unfinished build (a rerun resumes
it) or ``OUT`` complete (a rerun removes what is left of ``OUT.partial``: :meth:`clean`).
"""

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from evokd import files
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

PLAN = "building.json"
CHUNKS = "chunks"
IDS = "ids.npy"
HINT = "rerun with its settings to finish it, or remove it to start over"


# --- the work plan --------------------------------------------------------------------------


def length_order(src_sizes):
    """Example ids sorted by (source length, id): dense batches, and the same order in every
    process and every run (fairseq's ordered_indices() without the shuffle)."""
    src_sizes = np.asarray(src_sizes, dtype=np.int64)
    ids = np.arange(len(src_sizes), dtype=np.int64)
    return ids[np.lexsort((ids, src_sizes))]


def cut(order, part_size):
    """``order`` cut into consecutive pieces of ``part_size`` examples (the last shorter)."""
    if part_size < 1:
        raise EvokdError(f"--chunk-size {part_size}: expected N >= 1")
    return [order[i : i + part_size] for i in range(0, len(order), part_size)]


def plan_chunks(batches, chunk_size):
    """Consecutive batches grouped into chunks of at most ``chunk_size`` examples (or one
    batch), so that the batches, and thus the results, do not depend on the chunking."""
    if chunk_size < 1:
        raise EvokdError(f"--chunk-size {chunk_size}: expected N >= 1")
    chunks, current, n = [], [], 0
    for batch in batches:
        if current and n + len(batch) > chunk_size:
            chunks.append(current)
            current, n = [], 0
        current.append([int(i) for i in batch])
        n += len(batch)
    return chunks + [current] if current else chunks


def describe_batches(chunks, n_examples):
    """What a build records about its plan of chunks (lists of batches of example ids), to
    check a resume against: the digest covers the batches, which decide what a translation
    gives."""
    flat = [np.asarray([len(b), *b], dtype=np.int64) for chunk in chunks for b in chunk]
    flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return {
        "examples": int(n_examples),
        "parts": len(chunks),
        "plan_sha256": files.array_digest(flat),
    }


# --- checks of what was built ---------------------------------------------------------------


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


def check_same_ids(where, found, expected):
    """``found`` holds every id of ``expected`` exactly once and nothing else, or an error
    naming what is missing, doubled or foreign."""
    found, expected = [int(i) for i in found], [int(i) for i in expected]
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


# --- the builder ----------------------------------------------------------------------------


def save_chunk(path, ids, payload, write):
    """One finished chunk at ``path``: ``write(folder, payload)`` fills a fresh folder, the
    ids it holds go beside, and the folder is renamed into place (complete or absent)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():  # left by a build killed while writing this chunk
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp, payload)
    np.save(tmp / IDS, np.asarray(ids, dtype=np.int64))
    files.publish(tmp, path)


def chunk_ids(path):
    """The example ids the finished chunk ``path`` holds."""
    return np.load(Path(path) / IDS)


def remove(path):
    """Remove the folder or file ``path`` if it is there."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _flat(record):
    return {**record.get("settings", {}), "plan": record.get("plan")}


def _process(rank, build, open_worker, args, processes, desc):
    import torch

    if processes > 1:  # the one thread policy: the cores shared between the processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    build.compute(open_worker(rank, *args), rank, processes, desc)


class ChunkedBuild:
    """A build of ``out`` from ``chunks`` (lists of batches of example ids; see the module
    doc), recorded with ``settings`` (a JSON-able dict; a key ``NAME_sha256`` with a partner
    ``NAME`` is a file checked by content) and ``chunk_size``. ``write(folder, payload)``
    writes one chunk's payload (a module-level function, so that processes can share it);
    ``what`` names the build in messages ("teacher cache", ...)."""

    def __init__(self, out, chunks, settings, chunk_size, write, what="build"):
        self.out = Path(out)
        self.partial = files.partial_path(self.out)
        self.chunks = [[[int(i) for i in batch] for batch in chunk] for chunk in chunks]
        self.ids = [i for chunk in self.chunks for batch in chunk for i in batch]
        plan = {"chunk_size": chunk_size, **describe_batches(self.chunks, len(self.ids))}
        self.record = files.json_copy({"settings": settings, "plan": plan})
        self.write = write
        self.what = what

    def chunk_path(self, c):
        return self.partial / CHUNKS / f"chunk{c:05d}"

    def start(self):
        """Create ``OUT.partial`` with the record, or check that the one there was started
        with the same settings and plan, and that its finished chunks fit the plan."""
        path = self.partial / PLAN
        if not self.partial.exists():
            (self.partial / CHUNKS).mkdir(parents=True)
            files.write_json(path, self.record)
            return
        if not path.is_file():
            raise EvokdError(
                f"{self.partial}: exists but is not an unfinished {self.what} (no {PLAN}); "
                "remove it to start over"
            )
        where = f"{self.partial}: an unfinished {self.what}"
        theirs = files.read_json(path)
        files.check_files_and_settings(where, _flat(theirs), _flat(self.record), HINT)
        (self.partial / CHUNKS).mkdir(exist_ok=True)
        self.check_finished()
        logger.info("resuming the unfinished %s in %s", self.what, self.partial)

    def check_finished(self):
        """Every finished chunk holds exactly the examples the plan gives it."""
        for c, chunk in enumerate(self.chunks):
            path = self.chunk_path(c)
            planned = sorted(i for batch in chunk for i in batch)
            if path.is_dir() and sorted(chunk_ids(path).tolist()) != planned:
                raise EvokdError(
                    f"{path}: holds other examples than the build plan gives it; remove "
                    f"{self.partial} to start over"
                )

    def todo(self, rank=0, processes=1):
        """The unfinished chunks of process ``rank`` of ``processes``."""
        return [
            c for c in range(rank, len(self.chunks), processes) if not self.chunk_path(c).is_dir()
        ]

    def compute(self, compute, rank=0, processes=1, desc="building"):
        """Compute and save the unfinished chunks of process ``rank``: ``compute(batches)``
        gives ``(ids, payload)``, the example ids it covers and what ``write`` saves."""
        from tqdm import tqdm

        todo = self.todo(rank, processes)
        total = sum(len(b) for c in todo for b in self.chunks[c])
        desc = f"{desc} {rank + 1}/{processes}" if processes > 1 else desc
        with tqdm(total=total, desc=desc, unit="sent", position=rank, dynamic_ncols=True) as bar:
            for c in todo:
                ids, payload = compute(self.chunks[c])
                save_chunk(self.chunk_path(c), ids, payload, self.write)
                bar.update(sum(len(b) for b in self.chunks[c]))

    def run(self, open_worker, args=(), processes=1, worker=None, desc="building"):
        """Compute every unfinished chunk: ``open_worker(rank, *args)`` (module-level) gives
        process ``rank``'s compute function (see :meth:`compute`); with one process
        ``worker``, if given, is used instead (already loaded for the checks)."""
        if processes < 1:
            raise EvokdError(f"--processes {processes}: expected N >= 1")
        if processes == 1:
            self.compute(worker or open_worker(0, *args), 0, 1, desc)
            return
        import torch.multiprocessing

        spawn_args = (self, open_worker, args, processes, desc)
        torch.multiprocessing.spawn(_process, args=spawn_args, nprocs=processes, join=True)

    def finish(self, merge):
        """Check that the chunks hold every planned example exactly once, write the output
        with ``merge(dest, chunk_folders)`` (chunk folders in plan order), publish it as
        ``OUT`` and remove ``OUT.partial``. Returns what ``merge`` returns."""
        missing = [self.chunk_path(c).name for c in range(len(self.chunks))]
        missing = [name for name in missing if not (self.partial / CHUNKS / name).is_dir()]
        if missing:
            raise EvokdError(
                f"{self.partial}: chunks {missing[:3]} were not written; rerun to resume"
            )
        folders = [self.chunk_path(c) for c in range(len(self.chunks))]
        found = np.concatenate([chunk_ids(f) for f in folders]) if folders else []
        check_same_ids(str(self.partial), found, self.ids)
        dest = self.partial / self.out.name
        remove(dest)  # a merge a kill cut short
        result = merge(dest, folders)
        files.publish(dest, self.out)  # the output appears complete, or not at all
        self.clean()
        return result

    def clean(self):
        """Remove what a kill right after the publishing left of ``OUT.partial``."""
        if self.out.exists():
            remove(self.partial)
