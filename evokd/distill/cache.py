"""Building a teacher cache: ``evokd cache-teacher`` (the format and its reader:
:mod:`evokd.teachers.cache`).

The teacher runs once over a subset, teacher-forced on the references, in eval mode. The
cache is built by :class:`evokd.core.build.ChunkedBuild` in ``DIR.partial/`` in chunks that
survive a kill, and renamed to ``DIR`` only when complete, so a cache that looks complete
is. The plan is that module's one ordering (examples by source length, ties by id), cut into
batches at ``max_tokens``, the batches grouped into chunks; the items of the cache follow
the plan, and ``order.npy`` maps every example to its item. Each process loads the teacher
once. A cache built before this ordering holds its items in another order; it reads the same
through ``order.npy`` and stays valid.
"""

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from evokd import files
from evokd.core.build import ChunkedBuild, length_order, plan_chunks
from evokd.data.folder import data_digest
from evokd.errors import EvokdError
from evokd.teachers.cache import FORMAT, META, PARTS, bytes_per_token, dtypes, verify
from evokd.teachers.live import TeacherOutput

logger = logging.getLogger(__name__)


def fingerprint(teacher_path, data, subset, src, tgt, k):
    return {
        "teacher_sha256": files.file_digest(teacher_path),
        "data_sha256": data_digest(data, subset, src, tgt),
        "subset": subset,
        "topk": k,
    }


def plan(dataset, max_tokens, chunk_size):
    """The chunks: examples by source length (ties by id), cut into batches at
    ``max_tokens``, grouped into chunks of at most ``chunk_size`` examples."""
    batches = dataset.batch_by_size(length_order(dataset.src_sizes), max_tokens=max_tokens)
    return plan_chunks(batches, chunk_size)


def load_teacher(teacher_path, data, subset, device=None):
    """A translation task on ``data`` with ``subset`` loaded, and the frozen teacher on
    ``device``, from the checkpoint read once (its dictionaries checked against the data)."""
    from evokd.core.checkpoint import load_checkpoint, state_languages
    from evokd.core.inference import load_frozen_model
    from evokd.core.runtime import translation_task

    state = load_checkpoint(str(teacher_path), "--teacher")
    src, tgt = state_languages(state)
    task = translation_task(data, [subset], src, tgt)
    model = load_frozen_model(teacher_path, task, "--teacher", device, state=state)
    return task, model


@torch.no_grad()
def compute_chunk(task, model, subset, k, device, batches):
    """Teacher top-K over ``batches``: the example ids, and the items :func:`write_chunk`
    saves, (ids T x K, lprobs T x K, target lprobs T) per example."""
    from evokd.core.inference import move_to_device

    dataset, pad = task.dataset(subset), task.target_dictionary.pad()
    ids, items = [], []
    for batch in batches:
        sample = move_to_device(dataset.collater([dataset[int(i)] for i in batch]), device)
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)  # B x T x V
        out = TeacherOutput(lprobs=lprobs.float())
        top_lprobs, top_index = out.topk(k)
        target = sample["target"]
        target_lprobs = -out.target_nll(target)
        lengths = target.ne(pad).sum(1).tolist()
        for row, example in enumerate(sample["id"].tolist()):
            n = lengths[row]
            ids.append(example)
            items.append(
                (top_index[row, :n].cpu(), top_lprobs[row, :n].cpu(), target_lprobs[row, :n].cpu())
            )
    return ids, (items, len(task.target_dictionary))


def write_chunk(folder, payload):
    """One chunk's items, in the cache's own files (merged as they are)."""
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    items, vocab_size = payload
    types = dtypes(vocab_size)
    builders = {
        p: MMapIndexedDatasetBuilder(str(folder / f"{p}.bin"), dtype=types[p]) for p in PARTS
    }
    for ids, lp, tlp in items:
        builders["topk_index"].add_item(ids.reshape(-1))
        builders["topk_lprobs"].add_item(lp.half().reshape(-1).view(torch.int16))
        builders["target_lprobs"].add_item(tlp.half().view(torch.int16))
    for part, builder in builders.items():
        builder.finalize(str(folder / f"{part}.idx"))


def write_cache(dest, folders, meta):
    """The cache ``dest``: the chunks' items concatenated in plan order, ``order.npy`` and
    ``cache.json`` (``meta`` with the size in bytes and the sha256 of every other file).
    Returns the metadata."""
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    dest.mkdir(parents=True)
    types = dtypes(meta["vocab_size"])
    builders = {p: MMapIndexedDatasetBuilder(str(dest / f"{p}.bin"), dtype=types[p]) for p in PARTS}
    order_ids = []
    for folder in folders:
        for part, builder in builders.items():
            builder.merge_file_(str(folder / part))
        order_ids.append(np.load(folder / "ids.npy"))
    for part, builder in builders.items():
        builder.finalize(str(dest / f"{part}.idx"))
    ids = np.concatenate(order_ids) if order_ids else np.zeros(0, dtype=np.int64)
    order = np.full(meta["examples"], -1, dtype=np.int64)
    order[ids] = np.arange(len(ids))
    np.save(dest / "order.npy", order)
    size = sum((dest / f"{p}.{e}").stat().st_size for p in PARTS for e in ("bin", "idx"))
    meta = dict(meta, bytes=size, **{files.PAYLOAD: files.payload_digests(dest)})
    files.write_json(dest / META, meta)
    return meta


def open_worker(rank, teacher_path, data, subset, k, cpu):
    """Process ``rank``'s compute function: the teacher loaded once, on its device."""
    from evokd.core.inference import choose_device

    device = choose_device(cpu, rank)
    task, model = load_teacher(teacher_path, data, subset, device)
    return functools.partial(compute_chunk, task, model, subset, k, device)


def _finished(build, fp):
    """The metadata of a finished cache built with ``fp``, verified (:func:`verify`); another
    one is an error, and so is a damaged one."""
    out = build.out
    if not (out / META).is_file():
        raise EvokdError(f"--out {out}: exists and is not a teacher cache; give a new folder")
    meta = files.read_json(out / META)
    files.check_settings(
        f"--out {out}",
        meta.get("fingerprint", {}),
        fp,
        "remove it to rebuild, or give another --out",
    )
    build.clean()  # a kill right after the rename can leave DIR.partial
    return dict(verify(out, f"--out {out}"), done=True)


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
    """Run the teacher once over ``subset`` and write the cache to ``out`` (see the module
    doc and :mod:`evokd.teachers.cache`).

    Resumes an unfinished build of the same teacher, data, K and plan in ``out.partial``; on
    a finished cache of the same teacher, data and K it returns that cache's metadata (with
    ``done``) without work. Returns the cache's metadata.
    """
    from evokd.core.checkpoint import check_exists
    from evokd.core.inference import choose_device

    out = Path(out)
    check_exists(teacher_path, "--teacher")
    if k < 1:
        raise EvokdError(f"--topk {k}: expected K >= 1")
    if processes < 1:
        raise EvokdError(f"--processes {processes}: expected N >= 1")
    if chunk_size < 1:
        raise EvokdError(f"--chunk-size {chunk_size}: expected N >= 1")
    device = choose_device(cpu)
    task, model = load_teacher(teacher_path, data, subset, device)  # checks data, dictionaries
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    vocab = len(task.target_dictionary)
    if k > vocab:
        raise EvokdError(f"--topk {k}: larger than the target vocabulary ({vocab})")
    fp = fingerprint(teacher_path, data, subset, src, tgt, k)
    dataset = task.dataset(subset)
    build = ChunkedBuild(out, plan(dataset, max_tokens, chunk_size), {"fingerprint": fp},
                         chunk_size, write_chunk, "teacher cache")  # fmt: skip
    if out.exists():
        return _finished(build, fp)
    build.start()
    args = (teacher_path, data, subset, k, cpu)
    worker = None
    if processes == 1:
        worker = functools.partial(compute_chunk, task, model, subset, k, device)
    del model  # with several processes, each loads its own
    build.run(open_worker, args, processes, worker=worker, desc="teacher cache")
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "teacher": str(teacher_path),
        "data": str(data),
        "examples": len(dataset),
        "target_tokens": int(sum(dataset.tgt_sizes)),
        "vocab_size": vocab,
        "bytes_per_token": bytes_per_token(k, vocab),
    }
    return build.finish(lambda dest, folders: write_cache(dest, folders, meta))
