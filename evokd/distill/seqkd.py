"""Sequence-level KD data (Kim and Rush, 2016): the teacher's beam-search output as targets.

``evokd distill-data`` translates the source side of one binarized subset with the teacher
(fairseq's own beam search through :mod:`evokd.core.inference`, batched exactly like
``fairseq-generate --required-batch-size-multiple 1``; a sentence too long for the teacher
is an error) and writes a new binarized folder that stock ``fairseq-train`` reads::

    OUT/dict.*.txt, preprocess.log, ...     copied from DATA unchanged
    OUT/{valid,test,...}.{src}-{tgt}.*      copied unchanged: validation and test stay real
    OUT/{subset}.{src}-{tgt}.{src}.*        the source side, copied unchanged
    OUT/{subset}.{src}-{tgt}.{tgt}.*        the teacher's best hypothesis (tokens + EOS)
    OUT/text/...                            DATA/text (from `evokd prepare`), if there is one
    OUT/text/{subset}.distilled.{tgt}       the hypotheses as BPE'd text, in dataset order
    OUT/distill.json                        teacher, data, decoding settings (the fingerprint
                                            a rerun is checked on), counts, lengths

With ``keep_references`` the subset holds its n real pairs followed by n distilled ones
(pair n + i is the teacher's translation of pair i): interpolation by data. They form one
subset rather than a ``{subset}1`` shard: fairseq-train concatenates shards only when given
``--upsample-primary 1`` (its default, -1, fails), and one subset is what every tool reads.
The translations are computed in ``OUT.partial/`` in chunks that survive a kill (a rerun
with the same settings skips finished chunks); ``OUT`` appears only when complete. The
chunks come from a plan made from the data alone: fairseq-generate's order, whose ties
``ordered_indices()`` shuffles with numpy's RNG under the fixed seed
:data:`evokd.core.inference.ORDER_SEED` (the same permutation in every process and every run),
cut into batches, the batches grouped into chunks. The plan's digest is recorded in
``OUT.partial/building.json``; a resume refuses another plan, and a finished chunk that
does not hold the examples the plan gives it. Every example must be translated exactly
once before ``OUT`` is written. A rerun on a finished ``OUT`` made with the same settings
does nothing; with other settings it is an error naming them.
"""

import itertools
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from evokd import files as steps
from evokd.core.inference import DECODING, Translator, choose_device, translate
from evokd.data.folder import language_pair, write_dataset, write_subset
from evokd.distill.cache import data_fingerprint
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

FORMAT = "evokd-distill-data/1"
META = "distill.json"
PLAN = "building.json"
CHUNKS = "chunks"
FILES = ("teacher", "data")  # recorded by path, checked by content (``*_sha256``)

__all__ = ["distill_data", "write_dataset"]


def plan_chunks(batches, chunk_size):
    """Consecutive batches grouped into chunks of at most ``chunk_size`` sentences (or one
    batch), so that the batches, and thus the translations, do not depend on the chunking."""
    chunks, current, n = [], [], 0
    for batch in batches:
        if current and n + len(batch) > chunk_size:
            chunks.append(current)
            current, n = [], 0
        current.append(batch)
        n += len(batch)
    return chunks + [current] if current else chunks


def compute_chunk(translator, batches, bar=None):
    """Translate ``batches``: a list of (example id, best hypothesis tokens + EOS, score)."""
    return [(h.id, h.tokens.int().numpy(), h.score) for h in translate(translator, batches, bar)]


def _chunk_path(folder, c):
    return folder / f"chunk{c:05d}.npz"


def write_chunk(path, items, seconds):
    """One chunk's translations, written atomically (complete or absent)."""
    tmp = path.with_name(path.name + ".tmp")  # left by a kill while writing: overwritten
    with open(tmp, "wb") as f:
        np.savez(
            f,
            ids=np.array([i for i, _, _ in items], dtype=np.int64),
            lengths=np.array([len(t) for _, t, _ in items], dtype=np.int64),
            tokens=np.concatenate([t for _, t, _ in items]).astype(np.int32),
            scores=np.array([s for _, _, s in items], dtype=np.float32),
            seconds=np.float64(seconds),
        )
    steps.publish(tmp, path)


def chunk_ids(path):
    """The example ids a finished chunk holds."""
    with np.load(path) as z:
        return z["ids"]


def check_finished_chunks(folder, chunks):
    """Every finished chunk must hold exactly the examples the plan gives it."""
    for c, batches in enumerate(chunks):
        path = _chunk_path(folder, c)
        planned = np.sort(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)
        if path.is_file() and not np.array_equal(np.sort(chunk_ids(path)), planned):
            raise EvokdError(
                f"{path}: holds other examples than the build plan gives it; remove "
                f"{folder.parent} to start over"
            )


def read_chunks(folder, n_chunks, n_examples):
    """Hypotheses in dataset order (each ends with EOS), and the seconds spent on them.

    Every example 0..n-1 must be translated exactly once (counted), or it is an error."""
    missing = [c for c in range(n_chunks) if not _chunk_path(folder, c).is_file()]
    if missing:
        raise EvokdError(f"{folder}: chunks {missing[:5]} were not written; rerun to resume")
    hypos, seconds, ids = [None] * n_examples, 0.0, []
    for c in range(n_chunks):
        with np.load(_chunk_path(folder, c)) as z:
            seconds += float(z["seconds"])
            pieces = np.split(z["tokens"], np.cumsum(z["lengths"])[:-1])
            ids.append(z["ids"])
            for example, tokens in zip(z["ids"].tolist(), pieces):
                if 0 <= example < n_examples:
                    hypos[example] = tokens
    ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    steps.check_complete(str(folder), ids, n_examples)
    return hypos, seconds


def _worker(rank, args):
    """Translate the chunks ``c`` with ``c % processes == rank`` that are not finished yet."""
    teacher_path, data, subset, decoding, settings, processes, folder, cpu = args
    device = choose_device(cpu, rank)
    if device.type == "cpu" and processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    translator = Translator(teacher_path, data, subset, decoding, device)
    _translate(translator, settings, folder, rank, processes)


def _translate(translator, settings, folder, rank=0, processes=1):
    from tqdm import tqdm

    chunks = plan_chunks(translator.plan_batches(settings["max_tokens"]), settings["chunk_size"])
    todo = [c for c in range(rank, len(chunks), processes)]
    todo = [c for c in todo if not _chunk_path(folder, c).is_file()]
    total = sum(len(b) for c in todo for b in chunks[c])
    desc = f"distilling {rank + 1}/{processes}" if processes > 1 else "distilling"
    with tqdm(total=total, desc=desc, unit="sent", position=rank, dynamic_ncols=True) as bar:
        for c in todo:
            start = time.perf_counter()
            items = compute_chunk(translator, chunks[c], bar)
            write_chunk(_chunk_path(folder, c), items, time.perf_counter() - start)


def _recorded(record):
    """What a build is checked on: the fingerprint and the files by path and content."""
    return {**record["fingerprint"], **{k: record[k] for k in FILES}}


def _check_plan(partial, building, chunks):
    """Resume ``partial`` only if it was started with the same teacher, data, settings and
    plan, and its finished chunks hold what the plan gives them."""
    path = partial / PLAN
    if not path.is_file():
        raise EvokdError(f"{partial}: exists but is not an unfinished distillation (no {PLAN})")
    theirs = steps.read_json(path)
    hint = "rerun with its settings to finish it, or remove it to start over"
    where = f"{partial}: an unfinished distillation"
    steps.check_files_and_settings(where, _recorded(theirs), _recorded(building), hint)
    steps.check_settings(where, {"plan": theirs.get("plan")}, {"plan": building["plan"]}, hint)
    check_finished_chunks(partial / CHUNKS, chunks)
    logger.info("resuming the unfinished distillation in %s", partial)


def _remove_build_files(out):
    """The chunks and the plan, once the dataset is complete (also after a kill right here)."""
    if (out / CHUNKS).is_dir():
        shutil.rmtree(out / CHUNKS)
    (out / PLAN).unlink(missing_ok=True)


def open_distilled(folder, flag="--data"):
    """The record (``distill.json``) of a finished distilled dataset, after counting its
    pairs: a folder whose subset holds more or fewer sentences than recorded is refused."""
    from evokd.data.folder import load_side

    folder = Path(folder)
    if not (folder / META).is_file():
        partial = steps.partial_path(folder)
        hint = f" ({partial} is unfinished: rerun evokd distill-data)" if partial.exists() else ""
        raise EvokdError(f"{flag} {folder}: not a finished distilled dataset (no {META}){hint}")
    info = steps.read_json(folder / META)
    for lang in (info["source_lang"], info["target_lang"]):
        side = load_side(folder, info["subset"], info["pair"], lang)
        where = f"{flag} {folder}: {info['subset']}.{info['pair']}.{lang}"
        steps.check_count(where, len(side), info["training_pairs"], "sentences")
    lines = folder / "text" / f"{info['subset']}.distilled.{info['target_lang']}"
    if lines.is_file():
        with open(lines, encoding="utf-8") as f:
            steps.check_count(f"{flag} {lines}", sum(1 for _ in f), info["examples"], "lines")
    return info


def _finished(out, building, keep_references):
    """The record of the finished dataset ``out`` if made with these settings, else an error."""
    if not (out / META).is_file():
        raise EvokdError(
            f"--out {out}: exists and is not a distilled dataset (no {META}); give a new folder"
        )
    info = steps.read_json(out / META)
    recorded = {**info.get("fingerprint", {}), **{k: info.get(k) for k in FILES}}
    recorded.setdefault("keep_references", info.get("keep_references"))
    wanted = {**_recorded(building), "keep_references": keep_references}
    steps.check_files_and_settings(
        f"--out {out}", recorded, wanted, "remove it to rebuild, or give another --out"
    )
    _remove_build_files(out)  # a kill right after the rename can leave them
    return dict(open_distilled(out, "--out"), done=True)


def _twice(dataset):
    for _ in range(2):
        yield from (dataset[i] for i in range(len(dataset)))


def _finish(partial, out, data, hypos, info):
    """Write the dataset into ``partial`` around the distilled targets, then rename it."""
    from fairseq.data import Dictionary, data_utils

    data, subset, src, tgt = Path(data), info["subset"], info["source_lang"], info["target_lang"]
    pair, prefix = info["pair"], f"{subset}.{info['pair']}"
    tgt_dict = Dictionary.load(str(data / f"dict.{tgt}.txt"))
    columns = {tgt: hypos}
    if info["keep_references"]:  # one subset: the real pairs, then the same sources again
        sources = data_utils.load_indexed_dataset(str(data / f"{prefix}.{src}"), None)
        refs = data_utils.load_indexed_dataset(str(data / f"{prefix}.{tgt}"), None)
        columns = {
            src: _twice(sources),
            tgt: itertools.chain((refs[i] for i in range(len(refs))), hypos),
        }
    write_subset(data, partial, subset, pair, columns)
    if (data / "text").is_dir():
        shutil.copytree(data / "text", partial / "text", dirs_exist_ok=True)
    (partial / "text").mkdir(exist_ok=True)
    lines = [tgt_dict.string(torch.from_numpy(tokens)) + "\n" for tokens in hypos]
    with open(partial / "text" / f"{subset}.distilled.{tgt}", "w", encoding="utf-8") as f:
        f.writelines(lines)
    steps.write_json(partial / META, info)
    steps.publish(partial, out)  # the dataset appears complete, or not at all
    _remove_build_files(out)


def distill_data(
    teacher_path,
    data,
    out,
    subset="train",
    beam=DECODING["beam"],
    lenpen=DECODING["lenpen"],
    max_len_a=DECODING["max_len_a"],
    max_len_b=DECODING["max_len_b"],
    max_tokens=DECODING["max_tokens"],
    keep_references=False,
    cpu=False,
    processes=1,
    chunk_size=2048,
):
    """Translate ``subset`` of ``data`` with the teacher and write the new dataset to ``out``.

    See the module doc for the layout. Resumes an unfinished run with the same teacher,
    data, settings and plan from ``out.partial``; on a finished ``out`` made with the same
    teacher, data and settings returns its record (with ``done``) without work. Returns the
    content of ``out/distill.json``.
    """
    from evokd.core.checkpoint import check_exists

    start = time.perf_counter()
    data, out = str(data), Path(out)
    partial = steps.partial_path(out)
    check_exists(teacher_path, "--teacher")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    for flag, value in (("beam", beam), ("max-tokens", max_tokens), ("processes", processes)):
        if value < 1:
            raise EvokdError(f"--{flag} {value}: expected a positive integer")
    if chunk_size < 1:
        raise EvokdError(f"--chunk-size {chunk_size}: expected N >= 1")
    if max_len_a < 0 or max_len_b < 1:
        raise EvokdError(
            f"--max-len-a {max_len_a} --max-len-b {max_len_b}: expected A >= 0 and B >= 1"
        )
    decoding = {"beam": beam, "lenpen": lenpen, "max_len_a": max_len_a, "max_len_b": max_len_b}
    settings = {"max_tokens": max_tokens, "chunk_size": chunk_size}
    device = choose_device(cpu)
    # Checks the teacher, the data, the dictionaries and the sizes before any long work.
    translator = Translator(teacher_path, data, subset, decoding, device)
    src, tgt = translator.task.cfg.source_lang, translator.task.cfg.target_lang
    pair = language_pair(data, subset, src, tgt, flag="--data", shards=False)
    chunks = plan_chunks(translator.plan_batches(max_tokens), chunk_size)
    n_chunks = len(chunks)
    fingerprint = {
        "teacher_sha256": steps.file_digest(teacher_path),
        "data_sha256": data_fingerprint(data, subset, *pair.split("-")),
        "subset": subset,
        **decoding,
        "max_tokens": max_tokens,
    }
    building = {"teacher": str(teacher_path), "data": data, "fingerprint": fingerprint}
    building["plan"] = {"chunk_size": chunk_size}
    building["plan"].update(steps.describe_batches(chunks, len(translator.dataset)))
    if out.exists():
        return _finished(out, building, keep_references)
    folder = partial / CHUNKS
    if partial.exists():
        _check_plan(partial, building, chunks)
    else:
        partial.mkdir(parents=True)
        steps.write_json(partial / PLAN, building)
    folder.mkdir(exist_ok=True)
    if processes == 1:
        _translate(translator, settings, folder)
    else:
        del translator  # each process loads its own
        args = (teacher_path, data, subset, decoding, settings, processes, folder, cpu)
        torch.multiprocessing.spawn(_worker, args=(args,), nprocs=processes, join=True)

    ref_lengths = _sizes(data, subset, pair, tgt) - 1  # without EOS
    n = len(ref_lengths)
    check_finished_chunks(folder, chunks)
    hypos, seconds = read_chunks(folder, n_chunks, n)
    hyp_lengths = np.array([len(h) - 1 for h in hypos])
    info = {
        "format": FORMAT,
        "method": "sequence-level knowledge distillation (Kim and Rush, 2016)",
        "fingerprint": dict(fingerprint, keep_references=keep_references),
        "teacher": str(teacher_path),
        "teacher_sha256": fingerprint["teacher_sha256"],
        "data": data,
        "data_sha256": fingerprint["data_sha256"],
        "subset": subset,
        "source_lang": src,
        "target_lang": tgt,
        "pair": pair,
        "decoding": dict(decoding, max_tokens=max_tokens),
        "keep_references": keep_references,
        "examples": n,
        "training_pairs": 2 * n if keep_references else n,
        "reference_tokens": int(ref_lengths.sum()),
        "hypothesis_tokens": int(hyp_lengths.sum()),
        "reference_avg_length": round(float(ref_lengths.mean()), 3) if n else 0.0,
        "hypothesis_avg_length": round(float(hyp_lengths.mean()), 3) if n else 0.0,
        "empty_hypotheses": int((hyp_lengths == 0).sum()),
        "device": device.type,
        "processes": processes,
        "translate_seconds": round(seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    _finish(partial, out, data, hypos, info)
    logger.info(
        "%s: %d pairs of %s distilled, average length %.2f -> %.2f tokens",
        out, n, subset, info["reference_avg_length"], info["hypothesis_avg_length"],
    )  # fmt: skip
    return info


def _sizes(data, subset, pair, lang):
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(Path(data) / f"{subset}.{pair}.{lang}"), None)
    return np.array(dataset.sizes, dtype=np.int64)  # a copy: the mmap closes with the dataset
