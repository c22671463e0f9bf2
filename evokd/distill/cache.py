"""A teacher cache: the teacher's top-K predictions for every target token, computed once.

Under teacher forcing on the reference, an eval-mode teacher's output for a training pair
never changes, so word-level KD need not run the teacher at every update. ``evokd
cache-teacher`` runs it once over a subset and stores, per target token, the ids and
log-probabilities (fp16) of its K most likely tokens and the log-probability of the
reference token, in fairseq's memory-mapped indexed-dataset format::

    DIR/cache.json                  K, sizes and the fingerprint (teacher, data, K)
    DIR/topk_index.{bin,idx}        item j: T_j x K token ids
    DIR/topk_lprobs.{bin,idx}       item j: T_j x K log-probabilities (fp16 bit patterns)
    DIR/target_lprobs.{bin,idx}     item j: T_j log-probabilities of the reference tokens
    DIR/order.npy                   example id -> item j

Bytes per target token: 4K + 2 with a vocabulary under 65,536 (2-byte ids), else 6K + 2.
The cache is built in ``DIR.partial/`` in chunks that survive a kill (a rerun skips the
finished ones) and renamed to ``DIR`` only when complete, so a cache that looks complete is.
The chunks come from a plan made from the data alone (examples by length, ties by id:
:func:`evokd.files.length_order`), recorded in ``DIR.partial/building.json``; every process
and every resumed run cuts the same chunks, and a resume checks that each finished chunk
holds the examples the plan gives it. Opening a cache counts its entries: a cache whose
index misses an example, or holds one twice, is refused.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from evokd import files as steps
from evokd.core import build
from evokd.errors import EvokdError
from evokd.files import file_digest
from evokd.teachers.live import TeacherOutput

logger = logging.getLogger(__name__)

FORMAT = "evokd-teacher-cache/1"
META = "cache.json"
PARTS = ("topk_index", "topk_lprobs", "target_lprobs")


def data_fingerprint(data, subset, src, tgt):
    """sha256 over the dictionaries and the binarized subset (both sides)."""
    from fairseq import utils

    from evokd.data.folder import language_pair, subset_files

    root = Path(utils.split_paths(data)[0])
    digest = hashlib.sha256()
    names = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    names += subset_files(subset, language_pair(root, subset, src, tgt), (src, tgt), ("idx", "bin"))
    for name in names:
        path = root / name
        if not path.is_file():
            raise EvokdError(f"--data {data}: {path} missing (expected fairseq binarized data)")
        digest.update(name.encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def fingerprint(teacher_path, data, subset, src, tgt, k):
    return {
        "teacher_sha256": file_digest(teacher_path),
        "data_sha256": data_fingerprint(data, subset, src, tgt),
        "subset": subset,
        "topk": k,
    }


def id_dtype(vocab_size):
    return np.uint16 if vocab_size < 65536 else np.int32


def bytes_per_token(k, vocab_size):
    return k * (np.dtype(id_dtype(vocab_size)).itemsize + 2) + 2


# --- reading --------------------------------------------------------------------------------


class TeacherCache:
    """Read access to a finished cache; the output of one batch as a TeacherOutput."""

    def __init__(self, path, pad=1):
        from fairseq.data.indexed_dataset import MMapIndexedDataset

        self.path = Path(path)
        self.pad = pad
        meta_path = self.path / META
        if not meta_path.is_file():
            partial = Path(f"{self.path}.partial")
            hint = (
                f" ({partial} is an unfinished build: rerun evokd cache-teacher)"
                if partial.exists()
                else ""
            )
            raise EvokdError(
                f"--teacher-cache {path}: not a finished teacher cache (no {META}){hint}"
            )
        with open(meta_path, encoding="utf-8") as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise EvokdError(f"--teacher-cache {path}: unknown format {self.meta.get('format')!r}")
        self.k = int(self.meta["fingerprint"]["topk"])
        self.parts = {name: MMapIndexedDataset(str(self.path / name)) for name in PARTS}
        self.order = np.load(self.path / "order.npy")
        where = f"--teacher-cache {path}"
        n = int(self.meta.get("examples", len(self.order)))
        build.check_complete(where, self.order, n)  # example -> item: a permutation of 0..n-1
        for name, part in self.parts.items():
            if len(part) != n:
                raise EvokdError(f"{where}: {name} holds {len(part)} items for {n} examples")

    def check(self, teacher_path, data, subset, src, tgt, topk):
        """Fail before training unless the cache fits this teacher, data and --kd-topk."""
        where = f"--teacher-cache {self.path}"
        theirs = self.meta["fingerprint"]
        if theirs["subset"] != subset:
            raise EvokdError(
                f"{where}: holds the {theirs['subset']!r} subset, training uses {subset!r}"
            )
        if theirs["data_sha256"] != data_fingerprint(data, subset, src, tgt):
            raise EvokdError(
                f"{where}: built for other data than {data} ({subset}): rebuild it with "
                "evokd cache-teacher on this data"
            )
        if teacher_path and theirs["teacher_sha256"] != file_digest(teacher_path):
            raise EvokdError(
                f"{where}: built from another teacher than --teacher-path {teacher_path} "
                f"(the cache's: {self.meta.get('teacher')})"
            )
        if topk == 0 or topk > self.k:
            raise EvokdError(
                f"{where}: holds the teacher's top {self.k} tokens, but --kd-topk is {topk}: "
                f"use --kd-topk K with 1 <= K <= {self.k}, or rebuild the cache with a larger "
                "--topk"
            )

    def __call__(self, sample, student):
        ref = next(student.parameters())
        target = sample["target"]  # B x T, right-padded
        bsz, tlen = target.shape
        index = torch.zeros(bsz, tlen, self.k, dtype=torch.long)
        lprobs = torch.zeros(bsz, tlen, self.k, dtype=torch.float16)
        target_lprobs = torch.zeros(bsz, tlen, dtype=torch.float16)
        lengths = target.ne(self.pad).sum(1).tolist()
        for row, example in enumerate(sample["id"].tolist()):
            item = int(self.order[example])
            ids = self.parts["topk_index"][item].view(-1, self.k)
            n = ids.size(0)
            if n != lengths[row]:
                raise EvokdError(
                    f"--teacher-cache {self.path}: example {example} has {n} cached positions "
                    f"but {lengths[row]} target tokens: the cache does not fit this data"
                )
            index[row, :n] = ids
            lprobs[row, :n] = _half(self.parts["topk_lprobs"][item]).view(-1, self.k)
            target_lprobs[row, :n] = _half(self.parts["target_lprobs"][item])
        return TeacherOutput(
            topk_lprobs=lprobs.to(ref.device),
            topk_index=index.to(ref.device),
            target_lprobs=target_lprobs.to(ref.device),
        )

    def placeholder(self, sample, student):
        """A uniform top-K output shaped like ``sample``'s target (for a batch whose loss
        does not count), without reading the cache."""
        ref = next(student.parameters())
        bsz, tlen = sample["target"].shape
        value = -float(np.log(self.k))
        index = torch.arange(self.k, device=ref.device).expand(bsz, tlen, self.k)
        lprobs = torch.full((bsz, tlen, self.k), value, device=ref.device)
        return TeacherOutput(
            topk_lprobs=lprobs,
            topk_index=index,
            target_lprobs=torch.full((bsz, tlen), value, device=ref.device),
        )


def _half(int_tensor):
    """fp16 values stored as int16 bit patterns (read back by fairseq as int64)."""
    return int_tensor.to(torch.int16).view(torch.float16)


# --- writing --------------------------------------------------------------------------------

DTYPES = {"topk_lprobs": np.int16, "target_lprobs": np.int16}
PLAN = "building.json"


def _dtypes(vocab_size):
    return {"topk_index": id_dtype(vocab_size), **DTYPES}


def write_chunk(folder, name, items, vocab_size):
    """Write one chunk: ``items`` is a list of (example id, ids T x K, lprobs T x K, target T)."""
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    dtypes = _dtypes(vocab_size)
    tmp = folder / f"{name}.tmp"
    if tmp.exists():  # left by a build killed while writing this chunk
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    builders = {p: MMapIndexedDatasetBuilder(str(tmp / f"{p}.bin"), dtype=dtypes[p]) for p in PARTS}
    for _, ids, lp, tlp in items:
        builders["topk_index"].add_item(ids.reshape(-1))
        builders["topk_lprobs"].add_item(lp.half().reshape(-1).view(torch.int16))
        builders["target_lprobs"].add_item(tlp.half().view(torch.int16))
    for part, builder in builders.items():
        builder.finalize(str(tmp / f"{part}.idx"))
    np.save(tmp / "ids.npy", np.array([i for i, *_ in items], dtype=np.int64))
    steps.publish(tmp, folder / name)  # a chunk exists complete or not at all


def merge_chunks(folder, chunk_names, out, meta, vocab_size):
    """Concatenate the chunks into the final files and rename ``folder`` to ``out``.

    The chunks are removed only after the rename, so a kill at any point leaves either the
    unfinished build with every chunk (a rerun merges again) or the finished cache.
    """
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    dtypes = _dtypes(vocab_size)
    builders = {
        p: MMapIndexedDatasetBuilder(str(folder / f"{p}.bin"), dtype=dtypes[p]) for p in PARTS
    }
    order_ids = []
    for name in chunk_names:
        for part, builder in builders.items():
            builder.merge_file_(str(folder / name / part))
        order_ids.append(np.load(folder / name / "ids.npy"))
    for part, builder in builders.items():
        builder.finalize(str(folder / f"{part}.idx"))
    ids = np.concatenate(order_ids) if order_ids else np.zeros(0, dtype=np.int64)
    build.check_complete(str(folder), ids, meta["examples"])
    order = np.full(meta["examples"], -1, dtype=np.int64)
    order[ids] = np.arange(len(ids))
    np.save(folder / "order.npy", order)
    meta = dict(
        meta, bytes=sum((folder / f"{p}.{e}").stat().st_size for p in PARTS for e in ("bin", "idx"))
    )
    steps.write_json(folder / META, meta)
    steps.publish(folder, out)  # the cache appears complete, or not at all
    _remove_build_files(Path(out))
    return meta


def _remove_build_files(out):
    """The chunks and the plan, once the cache is complete (also after a kill right here)."""
    for path in out.iterdir():
        if path.is_dir() and path.name.startswith("chunk"):
            shutil.rmtree(path)
    (out / PLAN).unlink(missing_ok=True)


# --- building -------------------------------------------------------------------------------


def _setup(data, subset, teacher_path):
    """A plain translation task on ``data`` with ``subset`` loaded, and the frozen teacher."""
    from evokd.core.inference import checkpoint_languages
    from evokd.core.runtime import translation_task
    from evokd.teachers.live import LiveTeacher

    src, tgt = checkpoint_languages(teacher_path, "--teacher")
    task = translation_task(data, [subset], src, tgt)
    return task, LiveTeacher(teacher_path, task)


def plan_chunks(dataset, chunk_size):
    """Example ids ordered by length (ties by id), cut into chunks: the same in every process
    and every run, from the data alone."""
    return build.cut(build.length_order(dataset.src_sizes), chunk_size)


def _chunk_name(c):
    return f"chunk{c:05d}"


def compute_chunk(task, teacher, dataset, ids, k, max_tokens, device, bar=None):
    """Teacher top-K over the examples ``ids``: a list of (id, ids, lprobs, target lprobs)."""
    from evokd.core.inference import move_to_device

    items = []
    batches = dataset.batch_by_size(np.asarray(ids, dtype=np.int64), max_tokens=max_tokens)
    for batch in batches:
        sample = move_to_device(dataset.collater([dataset[int(i)] for i in batch]), device)
        out = teacher(sample, teacher.model)  # B x T x V at temperature 1
        top_lprobs, top_index = out.topk(k)
        target = sample["target"]
        target_lprobs = -out.target_nll(target)
        lengths = target.ne(task.target_dictionary.pad()).sum(1).tolist()
        for row, example in enumerate(sample["id"].tolist()):
            n = lengths[row]
            items.append(
                (
                    example,
                    top_index[row, :n].cpu(),
                    top_lprobs[row, :n].cpu(),
                    target_lprobs[row, :n].cpu(),
                )
            )
        if bar is not None:
            bar.update(len(batch))
    return items


def _check_finished_chunks(folder, chunks):
    """Every finished chunk must hold exactly the examples the plan gives it."""
    for c, ids in enumerate(chunks):
        path = folder / _chunk_name(c) / "ids.npy"
        if path.is_file() and not np.array_equal(np.sort(np.load(path)), np.sort(ids)):
            raise EvokdError(
                f"{folder}: {_chunk_name(c)} holds other examples than the build plan gives it; "
                f"remove {folder} to start over"
            )


def _worker(rank, args):
    """Compute the chunks ``c`` with ``c % processes == rank`` that are not finished yet."""
    from tqdm import tqdm

    from evokd.core.inference import choose_device

    teacher_path, data, subset, k, max_tokens, processes, chunk_size, folder, cpu = args
    device = choose_device(cpu, rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // processes))
    task, teacher = _setup(data, subset, teacher_path)
    teacher.model.to(device)
    dataset = task.dataset(subset)
    vocab = len(task.target_dictionary)
    chunks = plan_chunks(dataset, chunk_size)
    todo = [c for c in range(rank, len(chunks), processes)]
    todo = [c for c in todo if not (folder / _chunk_name(c)).is_dir()]
    total = sum(len(chunks[c]) for c in todo)
    desc = f"teacher cache {rank + 1}/{processes}" if processes > 1 else "teacher cache"
    with tqdm(total=total, desc=desc, unit="pairs", position=rank, dynamic_ncols=True) as bar:
        for c in todo:
            items = compute_chunk(task, teacher, dataset, chunks[c], k, max_tokens, device, bar)
            write_chunk(folder, _chunk_name(c), items, vocab)


def _finished(out, fp):
    """The metadata of a finished cache at ``out`` built with ``fp``; another one is an error."""
    meta_path = out / META
    if not meta_path.is_file():
        raise EvokdError(f"--out {out}: exists and is not a teacher cache; give a new folder")
    meta = steps.read_json(meta_path)
    steps.check_settings(
        f"--out {out}",
        meta.get("fingerprint", {}),
        fp,
        "remove it to rebuild, or give another --out",
    )
    _remove_build_files(out)  # a kill after the rename can leave them
    return dict(meta, done=True)


def build_cache(
    teacher_path,
    data,
    out,
    subset="train",
    k=8,
    max_tokens=8000,
    processes=1,
    chunk_size=2048,
    cpu=False,
):
    """Run the teacher once over ``subset`` and write the cache to ``out`` (see module doc).

    Resumes an unfinished build of the same teacher, data, K and plan in ``out.partial``; on
    a finished cache of the same teacher, data and K it returns that cache's metadata (with
    ``done``) without work. Returns the cache's metadata.
    """
    from evokd.core.checkpoint import check_exists

    out = Path(out)
    partial = steps.partial_path(out)
    check_exists(teacher_path, "--teacher")
    if k < 1:
        raise EvokdError(f"--topk {k}: expected K >= 1")
    if processes < 1:
        raise EvokdError(f"--processes {processes}: expected N >= 1")
    if chunk_size < 1:
        raise EvokdError(f"--chunk-size {chunk_size}: expected N >= 1")
    task, teacher = _setup(data, subset, teacher_path)  # checks data and dictionaries
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    vocab = len(task.target_dictionary)
    if k > vocab:
        raise EvokdError(f"--topk {k}: larger than the target vocabulary ({vocab})")
    fp = fingerprint(teacher_path, data, subset, src, tgt, k)
    if out.exists():
        return _finished(out, fp)
    dataset = task.dataset(subset)
    chunks = plan_chunks(dataset, chunk_size)
    building = {"fingerprint": fp, "plan": {"chunk_size": chunk_size}}
    building["plan"].update(build.describe_plan(chunks, len(dataset)))
    plan_file = partial / PLAN
    if partial.exists():
        if not plan_file.is_file():
            raise EvokdError(f"{partial}: exists but is not an unfinished cache (no {PLAN})")
        steps.check_settings(
            str(partial),
            steps.read_json(plan_file),
            building,
            "rerun with its settings to finish it, or remove it to start over",
        )
        _check_finished_chunks(partial, chunks)
        logger.info("resuming the unfinished cache in %s", partial)
    else:
        partial.mkdir(parents=True)
        steps.write_json(plan_file, building)
    args = (teacher_path, data, subset, k, max_tokens, processes, chunk_size, partial, cpu)
    del teacher  # each process loads its own
    if processes == 1:
        _worker(0, args)
    else:
        torch.multiprocessing.spawn(_worker, args=(args,), nprocs=processes, join=True)
    names = [_chunk_name(c) for c in range(len(chunks))]
    missing = [n for n in names if not (partial / n).is_dir()]
    if missing:
        raise EvokdError(f"{partial}: chunks {missing[:3]} were not written; rerun to resume")
    _check_finished_chunks(partial, chunks)
    tokens = int(sum(dataset.tgt_sizes))
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "teacher": str(teacher_path),
        "data": str(data),
        "examples": len(dataset),
        "target_tokens": tokens,
        "vocab_size": vocab,
        "bytes_per_token": bytes_per_token(k, vocab),
    }
    return merge_chunks(partial, names, out, meta, vocab)
