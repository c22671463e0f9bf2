"""Sequence-level KD data (Kim and Rush, 2016): the teacher's beam-search output as targets.

``evokd distill-data`` translates the source side of one binarized subset with the teacher
(fairseq's own beam search through :mod:`evokd.inference`, batched exactly like
``fairseq-generate --required-batch-size-multiple 1``; a sentence too long for the teacher
is an error) and writes a new binarized folder that stock ``fairseq-train`` reads::

    OUT/dict.*.txt, preprocess.log, ...     copied from DATA unchanged
    OUT/{valid,test,...}.{src}-{tgt}.*      copied unchanged: validation and test stay real
    OUT/{subset}.{src}-{tgt}.{src}.*        the source side, copied unchanged
    OUT/{subset}.{src}-{tgt}.{tgt}.*        the teacher's best hypothesis (tokens + EOS)
    OUT/text/...                            DATA/text (from `evokd prepare`), if there is one
    OUT/text/{subset}.distilled.{tgt}       the hypotheses as BPE'd text, in dataset order
    OUT/distill.json                        teacher, data, decoding settings, counts, lengths

With ``keep_references`` the subset holds its n real pairs followed by n distilled ones
(pair n + i is the teacher's translation of pair i): interpolation by data. They form one
subset rather than a ``{subset}1`` shard: fairseq-train concatenates shards only when given
``--upsample-primary 1`` (its default, -1, fails), and one subset is what every tool reads.
The translations are computed in ``OUT.partial/`` in chunks that survive a kill (a rerun
with the same settings skips finished chunks); ``OUT`` appears only when complete.
"""

import itertools
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from evokd import steps
from evokd.data.folder import language_pair, write_dataset, write_subset
from evokd.errors import EvokdError
from evokd.inference import DECODING, Translator, choose_device, translate
from evokd.teacher_cache import data_fingerprint

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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            ids=np.array([i for i, _, _ in items], dtype=np.int64),
            lengths=np.array([len(t) for _, t, _ in items], dtype=np.int64),
            tokens=np.concatenate([t for _, t, _ in items]).astype(np.int32),
            scores=np.array([s for _, _, s in items], dtype=np.float32),
            seconds=np.float64(seconds),
        )
    os.replace(tmp, path)


def read_chunks(folder, n_chunks, n_examples):
    """Hypotheses in dataset order (each ends with EOS), and the seconds spent on them."""
    hypos, seconds = [None] * n_examples, 0.0
    for c in range(n_chunks):
        with np.load(_chunk_path(folder, c)) as z:
            seconds += float(z["seconds"])
            pieces = np.split(z["tokens"], np.cumsum(z["lengths"])[:-1])
            for example, tokens in zip(z["ids"].tolist(), pieces):
                hypos[example] = tokens
    missing = [i for i, h in enumerate(hypos) if h is None]
    if missing:
        raise EvokdError(f"{folder}: no translation for examples {missing[:5]}; rerun to resume")
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


def _check_plan(partial, building):
    """Resume ``partial`` only if it was started with the same teacher, data and settings."""
    path = partial / PLAN
    if not path.is_file():
        raise EvokdError(f"{partial}: exists but is not an unfinished distillation (no {PLAN})")
    theirs = steps.read_json(path)
    steps.check_files_and_settings(
        f"{partial}: an unfinished distillation",
        {**theirs["fingerprint"], **{k: theirs[k] for k in FILES}},
        {**building["fingerprint"], **{k: building[k] for k in FILES}},
        "rerun with its settings to finish it, or remove it to start over",
    )
    logger.info("resuming the unfinished distillation in %s", partial)


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
    shutil.rmtree(partial / CHUNKS)
    (partial / PLAN).unlink()
    steps.publish(partial, out)  # the dataset appears complete, or not at all


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
    data and settings from ``out.partial``. Returns the content of ``out/distill.json``.
    """
    from evokd.checkpoint import check_exists

    start = time.perf_counter()
    data, out = str(data), Path(out)
    partial = steps.partial_path(out)
    check_exists(teacher_path, "--teacher")
    if out.exists():
        raise EvokdError(f"--out {out}: exists; remove it to rebuild (nothing was changed)")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    for flag, value in (("beam", beam), ("max-tokens", max_tokens), ("processes", processes)):
        if value < 1:
            raise EvokdError(f"--{flag} {value}: expected a positive integer")
    if chunk_size < 1 or max_len_a < 0 or max_len_b < 1:
        raise EvokdError("expected chunk_size >= 1, --max-len-a >= 0 and --max-len-b >= 1")
    decoding = {"beam": beam, "lenpen": lenpen, "max_len_a": max_len_a, "max_len_b": max_len_b}
    settings = {"max_tokens": max_tokens, "chunk_size": chunk_size}
    device = choose_device(cpu)
    # Checks the teacher, the data, the dictionaries and the sizes before any long work.
    translator = Translator(teacher_path, data, subset, decoding, device)
    src, tgt = translator.task.cfg.source_lang, translator.task.cfg.target_lang
    pair = language_pair(data, subset, src, tgt, flag="--data", shards=False)
    n_chunks = len(plan_chunks(translator.plan_batches(max_tokens), chunk_size))
    fingerprint = {
        "teacher_sha256": steps.file_digest(teacher_path),
        "data_sha256": data_fingerprint(data, subset, *pair.split("-")),
        "subset": subset,
        **decoding,
        **settings,
    }
    building = {"teacher": str(teacher_path), "data": data, "fingerprint": fingerprint}
    folder = partial / CHUNKS
    if partial.exists():
        _check_plan(partial, building)
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
    hypos, seconds = read_chunks(folder, n_chunks, n)
    hyp_lengths = np.array([len(h) - 1 for h in hypos])
    info = {
        "format": FORMAT,
        "method": "sequence-level knowledge distillation (Kim and Rush, 2016)",
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
