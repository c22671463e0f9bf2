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
                                            a rerun is checked on), counts, lengths, and the
                                            sha256 of every other file (``payload_sha256``)

With ``keep_references`` the subset holds its n real pairs followed by n distilled ones
(pair n + i is the teacher's translation of pair i): interpolation by data. They form one
subset rather than a ``{subset}1`` shard: fairseq-train concatenates shards only when given
``--upsample-primary 1`` (its default, -1, fails), and one subset is what every tool reads.
The translations are computed by :class:`evokd.core.build.ChunkedBuild` in ``OUT.partial/``
in chunks that survive a kill; ``OUT`` appears only when complete. The plan keeps
fairseq-generate's batches, so that the targets equal its output (the hypotheses of a batch
depend on its longest source): its order, whose ties ``ordered_indices()`` shuffles with
numpy's RNG under the fixed seed :data:`evokd.core.inference.ORDER_SEED` (the same in every
process and every run, whatever the global RNG), cut at ``max_tokens``, the batches grouped
into chunks. The dataset is written in id order. A rerun on a finished ``OUT`` made with the
same settings verifies it and does nothing; with other settings it is an error naming them.
:func:`open_distilled` (what the rerun, ``evokd mckd`` and ``evokd verify`` open a distilled
folder with) checks every file against its recorded sha256 and counts the pairs.

With ``loop_fallback`` N, a target that repeats a sequence of one, two or three tokens N
times in a row (a beam search caught in a loop: "of the middle of the middle of the
middle") is replaced by the pair's reference target; ``distill.json`` counts them
(``replaced_by_reference``). The source side stays as it was.

With ``engine="ctranslate2"`` the chunks of the same plan are translated by the teacher
converted to CTranslate2 (:mod:`evokd.distill.ct2`) instead; the fingerprint then holds the
engine, the quantization and the CTranslate2 version, and ``distill.json`` the converted
model (``ct2_model``: its folder, sha256 and conversion time, None when it was reused).
"""

import functools
import itertools
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from evokd import files
from evokd.core.build import ChunkedBuild, check_count, plan_chunks
from evokd.core.decoding import DECODING
from evokd.core.inference import Translator, choose_device, translate
from evokd.data.folder import data_digest, language_pair, write_subset
from evokd.distill.ct2 import check_engine, converted_model, ct2_device, open_decoder
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

FORMAT = "evokd-distill-data/1"
META = "distill.json"
FILES = ("teacher", "data")  # recorded by path, checked by content (``*_sha256``)
REBUILD = "remove it and rebuild it with evokd distill-data"

__all__ = ["distill_data", "open_distilled"]


def plan(translator, max_tokens, chunk_size):
    """The chunks of the whole subset: fairseq-generate's batches at ``max_tokens`` (see
    the module doc), grouped into chunks of at most ``chunk_size`` examples."""
    return plan_chunks(translator.plan_batches(max_tokens), chunk_size)


def compute_chunk(translator, batches):
    """Translate ``batches``: the example ids, and the payload :func:`write_chunk` saves."""
    start = time.perf_counter()
    items = [(h.id, h.tokens.int().numpy(), h.score) for h in translate(translator, batches)]
    return [i for i, _, _ in items], (items, time.perf_counter() - start)


def write_chunk(folder, payload):
    """One chunk's translations: ``payload`` is ([(id, tokens + EOS, score)], seconds)."""
    items, seconds = payload
    np.savez(
        folder / "hypotheses.npz",
        lengths=np.array([len(t) for _, t, _ in items], dtype=np.int64),
        tokens=np.concatenate([t for _, t, _ in items]).astype(np.int32),
        scores=np.array([s for _, _, s in items], dtype=np.float32),
        seconds=np.float64(seconds),
    )


def read_chunks(folders, n_examples):
    """Hypotheses in dataset order (each ends with EOS), and the seconds spent on them."""
    hypos, seconds = [None] * n_examples, 0.0
    for folder in folders:
        ids = np.load(folder / "ids.npy")
        with np.load(folder / "hypotheses.npz") as z:
            seconds += float(z["seconds"])
            pieces = np.split(z["tokens"], np.cumsum(z["lengths"])[:-1])
        for example, tokens in zip(ids.tolist(), pieces):
            hypos[example] = tokens
    return hypos, seconds


def open_translator(rank, teacher_path, data, subset, decoding, cpu):
    """Process ``rank``'s compute function: the teacher loaded once, on its device."""
    translator = Translator(teacher_path, data, subset, decoding, choose_device(cpu, rank))
    return functools.partial(compute_chunk, translator)


def _recorded(record):
    """What a build is checked on: the fingerprint and the files by path and content."""
    return {**record["fingerprint"], **{k: record[k] for k in FILES}}


def open_distilled(folder, flag="--data"):
    """The record (``distill.json``) of a finished distilled dataset, after checking every
    file against the sha256 recorded when it was built and counting its pairs: a damaged
    file, or a subset holding more or fewer sentences than recorded, is refused."""
    from evokd.data.folder import load_side

    folder = Path(folder)
    if not (folder / META).is_file():
        partial = files.partial_path(folder)
        hint = f" ({partial} is unfinished: rerun evokd distill-data)" if partial.exists() else ""
        raise EvokdError(f"{flag} {folder}: not a finished distilled dataset (no {META}){hint}")
    info = files.read_json(folder / META)
    lines = folder / "text" / f"{info['subset']}.distilled.{info['target_lang']}"
    if lines.is_file():  # a text file cut short is named as such, before its digest
        with open(lines, encoding="utf-8") as f:
            check_count(f"{flag} {lines}", sum(1 for _ in f), info["examples"], "lines")
    if files.PAYLOAD in info:
        files.verify_payload(f"{flag} {folder}", folder, info[files.PAYLOAD], REBUILD)
    else:
        logger.warning("%s %s: built without checksums, its files are not verified", flag, folder)
    for lang in (info["source_lang"], info["target_lang"]):
        side = load_side(folder, info["subset"], info["pair"], lang)
        where = f"{flag} {folder}: {info['subset']}.{info['pair']}.{lang}"
        check_count(where, len(side), info["training_pairs"], "sentences")
    return info


def _finished(build, record, keep_references):
    """The record of the finished dataset ``out`` if made with these settings, else an error."""
    out = build.out
    if not (out / META).is_file():
        raise EvokdError(
            f"--out {out}: exists and is not a distilled dataset (no {META}); give a new folder"
        )
    info = files.read_json(out / META)
    recorded = {**info.get("fingerprint", {}), **{k: info.get(k) for k in FILES}}
    recorded.setdefault("keep_references", info.get("keep_references"))
    recorded.setdefault("engine", "fairseq")  # built before there was a choice
    wanted = {**_recorded(record), "keep_references": keep_references}
    files.check_files_and_settings(
        f"--out {out}", recorded, wanted, "remove it to rebuild, or give another --out"
    )
    build.clean()  # a kill right after the rename can leave OUT.partial
    return dict(open_distilled(out, "--out"), done=True)


def _twice(dataset):
    for _ in range(2):
        yield from (dataset[i] for i in range(len(dataset)))


def write_distilled(dest, data, hypos, info):
    """The dataset ``dest``: ``data``'s files around the distilled targets ``hypos``."""
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
    dest.mkdir(parents=True)
    write_subset(data, dest, subset, pair, columns)
    if (data / "text").is_dir():
        shutil.copytree(data / "text", dest / "text", dirs_exist_ok=True)
    (dest / "text").mkdir(exist_ok=True)
    lines = [tgt_dict.string(torch.from_numpy(tokens)) + "\n" for tokens in hypos]
    with open(dest / "text" / f"{subset}.distilled.{tgt}", "w", encoding="utf-8") as f:
        f.writelines(lines)
    info[files.PAYLOAD] = files.payload_digests(dest, skip=(META,))
    files.write_json(dest / META, info)


def check_out(data, out):
    """Refuse an output folder that is the input ``data`` or inside it."""
    data, out = Path(data).resolve(), Path(out).resolve()
    if out == data or data in out.parents:
        raise EvokdError(
            f"--out {out}: {'is' if out == data else 'is inside'} the input --data {data}; the "
            "distilled data is a new folder beside its input: give another --out"
        )


def _check_arguments(teacher_path, data, beam, max_tokens, processes, chunk_size, lens, out,
                     loop_fallback):  # fmt: skip
    from evokd.core.checkpoint import check_exists

    check_exists(teacher_path, "--teacher")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    check_out(data, out)
    for flag, value in (("beam", beam), ("max-tokens", max_tokens), ("processes", processes)):
        if value < 1:
            raise EvokdError(f"--{flag} {value}: expected a positive integer")
    if chunk_size < 1:
        raise EvokdError(f"--chunk-size {chunk_size}: expected N >= 1")
    if lens[0] < 0 or lens[1] < 1:
        raise EvokdError(f"--max-len-a {lens[0]} --max-len-b {lens[1]}: expected A >= 0 and B >= 1")
    if not isinstance(loop_fallback, int) or loop_fallback < 0 or loop_fallback == 1:
        raise EvokdError(f"--loop-fallback {loop_fallback}: expected 0 (off) or N >= 2")


def loops(tokens, times, longest=3):
    """Whether ``tokens`` hold a sequence of 1 to ``longest`` tokens ``times`` times in a row."""
    tokens = list(tokens)
    for n in range(1, longest + 1):
        for i in range(len(tokens) - times * n + 1):
            if all(tokens[i + k * n : i + (k + 1) * n] == tokens[i : i + n] for k in range(times)):
                return True
    return False


def _fall_back(references, hypos, times):
    """``hypos`` with each looping one replaced by its reference target (from the binarized
    file prefix ``references``); how many were."""
    from fairseq.data import data_utils

    refs = data_utils.load_indexed_dataset(str(references), None)
    replaced = [i for i, h in enumerate(hypos) if loops(h[:-1], times)]
    for i in replaced:
        hypos[i] = refs[i].numpy().astype(hypos[i].dtype)
    return hypos, len(replaced)


def _info(record, translator, pair, keep_references, hypos, seconds, processes):
    """The content of ``distill.json``, without the wall time."""
    fingerprint, data = record["fingerprint"], record["data"]
    src, tgt = translator.task.cfg.source_lang, translator.task.cfg.target_lang
    ref_lengths = _sizes(data, fingerprint["subset"], pair, tgt) - 1  # without EOS
    hyp_lengths = np.array([len(h) - 1 for h in hypos])
    n = len(ref_lengths)
    decoding = {k: fingerprint[k] for k in ("beam", "lenpen", "max_len_a", "max_len_b")}
    return {
        "format": FORMAT,
        "method": "sequence-level knowledge distillation (Kim and Rush, 2016)",
        "fingerprint": dict(fingerprint, keep_references=keep_references),
        "teacher": record["teacher"],
        "teacher_sha256": fingerprint["teacher_sha256"],
        "data": data,
        "data_sha256": fingerprint["data_sha256"],
        "subset": fingerprint["subset"],
        "source_lang": src,
        "target_lang": tgt,
        "pair": pair,
        "decoding": dict(decoding, max_tokens=fingerprint["max_tokens"]),
        "keep_references": keep_references,
        "examples": n,
        "training_pairs": 2 * n if keep_references else n,
        "reference_tokens": int(ref_lengths.sum()),
        "hypothesis_tokens": int(hyp_lengths.sum()),
        "reference_avg_length": round(float(ref_lengths.mean()), 3) if n else 0.0,
        "hypothesis_avg_length": round(float(hyp_lengths.mean()), 3) if n else 0.0,
        "empty_hypotheses": int((hyp_lengths == 0).sum()),
        "device": translator.device.type,
        "processes": processes,
        "translate_seconds": round(seconds, 1),
    }


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
    loop_fallback=0,
    cpu=False,
    processes=1,
    chunk_size=2048,
    engine="fairseq",
    ct2_quantization="float32",
    ct2_cache=None,
):
    """Translate ``subset`` of ``data`` with the teacher and write the new dataset to ``out``.

    See the module doc for the layout. Resumes an unfinished run with the same teacher,
    data, settings and plan from ``out.partial``; on a finished ``out`` made with the same
    teacher, data and settings returns its record (with ``done``) without work. Returns the
    content of ``out/distill.json``.

    ``engine``: ``fairseq`` (its beam search in-process) or ``ctranslate2`` (the checkpoint
    converted once to a CTranslate2 model with weights in ``ct2_quantization``, kept in
    ``ct2_cache`` or :func:`evokd.distill.ct2.cache_root`, and decoded with the same
    batches and settings: :mod:`evokd.distill.ct2`). The engine is part of the settings:
    a build made with the other one is not reused. (``evokd distill-data`` and the chains
    choose :func:`evokd.distill.ct2.default_engine` when none is named.)
    """
    start = time.perf_counter()
    data, out = str(data), Path(out)
    lens = (max_len_a, max_len_b)
    _check_arguments(
        teacher_path, data, beam, max_tokens, processes, chunk_size, lens, out, loop_fallback
    )
    ctranslate2 = check_engine(engine, ct2_quantization)
    decoding = {"beam": beam, "lenpen": lenpen, "max_len_a": max_len_a, "max_len_b": max_len_b}
    # Checks the teacher, the data, the dictionaries and the sizes before any long work.
    translator = Translator(teacher_path, data, subset, decoding, choose_device(cpu))
    src, tgt = translator.task.cfg.source_lang, translator.task.cfg.target_lang
    pair = language_pair(data, subset, src, tgt, flag="--data", shards=False)
    fingerprint = {
        "teacher_sha256": files.file_digest(teacher_path),
        "data_sha256": data_digest(data, subset, *pair.split("-")),
        "subset": subset,
        **decoding,
        "max_tokens": max_tokens,
        "engine": engine,
    }
    if ctranslate2 is not None:
        fingerprint.update(ct2_quantization=ct2_quantization, ctranslate2=ctranslate2.__version__)
    if loop_fallback:  # only when set: folders made before the option stay valid
        fingerprint["loop_fallback"] = loop_fallback
    record = {"teacher": str(teacher_path), "data": data, "fingerprint": fingerprint}
    settings = _recorded(record)
    chunks = plan(translator, max_tokens, chunk_size)
    build = ChunkedBuild(out, chunks, settings, chunk_size, write_chunk, "distillation")
    if out.exists():
        return _finished(build, record, keep_references)
    build.start()
    if ctranslate2 is None:
        args, opener = (teacher_path, data, subset, decoding, cpu), open_translator
        worker, engine_info = functools.partial(compute_chunk, translator), {}
    else:
        model, convert_seconds = _ct2_model(teacher_path, fingerprint, data, pair, ct2_cache)
        args = (model["folder"], data, subset, pair, decoding, translator.generator.max_len, cpu)
        opener, worker = open_decoder, open_decoder(0, *args) if processes == 1 else None
        engine_info = {"device": ct2_device(cpu)[0], "ct2_model": model}
        model["convert_seconds"] = convert_seconds
        del translator.model, translator.generator  # the plan is made: free the fairseq model
    build.run(opener, args, processes, worker=worker, desc="distilling")

    def merge(dest, folders):
        hypos, seconds = read_chunks(folders, len(translator.dataset))
        replaced = 0
        if loop_fallback:
            references = Path(data) / f"{subset}.{pair}.{tgt}"
            hypos, replaced = _fall_back(references, hypos, loop_fallback)
        info = _info(record, translator, pair, keep_references, hypos, seconds, processes)
        info.update(engine_info)
        if loop_fallback:
            info.update(loop_fallback=loop_fallback, replaced_by_reference=replaced)
        info["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_distilled(dest, data, hypos, info)
        return info

    info = build.finish(merge)
    logger.info(
        "%s: %d pairs of %s distilled, average length %.2f -> %.2f tokens",
        out, info["examples"], subset, info["reference_avg_length"], info["hypothesis_avg_length"],
    )  # fmt: skip
    return info


def _ct2_model(teacher_path, fingerprint, data, pair, cache):
    """The teacher's CTranslate2 model as distill.json records it, and the seconds its
    conversion took (None when it was in the cache)."""
    folder, record, seconds = converted_model(
        teacher_path, fingerprint["teacher_sha256"], data, *pair.split("-"),
        fingerprint["ct2_quantization"], cache,
    )  # fmt: skip
    keys = ("quantization", "ctranslate2", "model_sha256", "dictionaries_sha256")
    model = {"folder": str(folder), **{k: record[k] for k in keys}}
    return model, None if seconds is None else round(seconds, 1)


def _sizes(data, subset, pair, lang):
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(Path(data) / f"{subset}.{pair}.{lang}"), None)
    return np.array(dataset.sizes, dtype=np.int64)  # a copy: the mmap closes with the dataset
