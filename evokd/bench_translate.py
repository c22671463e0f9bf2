"""Translation speed and quality of a teacher, its student, and the student in CTranslate2.

One run, one test set, the same decoding settings for every system:

- the teacher and the student in fairseq: :func:`evokd.evaluate.evaluate_checkpoint`
  (fairseq-generate); speed is fairseq's own decoding timer (``Translated N sentences in
  X s``: model loading and data reading excluded);
- the student exported to CTranslate2 (:func:`evokd.export.export_ct2`) in ``float32`` and
  ``int8``: ``Translator.translate_batch`` on the same source tokens (the binarized subset
  decoded with the source dictionary, so both engines see the same tokens, ``<unk>``
  included), timed around that call only (model loading excluded).

What is kept equal, and how:

- threads: fairseq-generate runs with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to
  ``threads`` (torch sizes its intra-op pool from them); CTranslate2 with
  ``intra_threads=threads, inter_threads=1``;
- beam and length: fairseq ``--beam B --lenpen 1 --max-len-a 0 --max-len-b L`` (at most L
  tokens before the end of sentence), CTranslate2 ``beam_size=B, length_penalty=1,
  max_decoding_length=L, min_decoding_length=1`` (fairseq's ``--min-len 1``);
- batches: fairseq ``--batch-size N`` and CTranslate2 ``max_batch_size=N,
  batch_type="examples"``; both sort the whole set by source length before batching;
- device: the GPU for both when torch and CTranslate2 both see one (and not ``cpu``),
  else the CPU for both.

Scores are those of :mod:`evokd.evaluate`: tokenized BLEU against the same reference file
as fairseq's evaluation, sacreBLEU and chrF on detokenized text against the raw references.
Each system is timed once, without warm-up; on a shared machine expect noise.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import EvokdError

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "int8")  # the CTranslate2 variants of the student
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def thread_environment(threads):
    """Set the thread-count variables that fairseq-generate's torch reads, then restore."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def source_tokens(data, subset, src, tgt):
    """The source side of a binarized subset as token lists (BPE'd, no end of sentence)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(Path(data) / f"dict.{src}.txt"))
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = Path(data) / f"{subset}.{pair}.{src}"
        if Path(f"{prefix}.idx").is_file():
            dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
            break
    else:
        raise EvokdError(f"--subset {subset}: {data} has no {subset}.{src}-{tgt}.{src}.idx")
    eos = dictionary.eos()
    return [[dictionary[i] for i in dataset[k].tolist() if i != eos] for k in range(len(dataset))]


def translate_ct2(model_dir, source, *, beam, batch_size, max_len, threads, device="cpu"):
    """Translate token lists with a CTranslate2 model; returns (lines, seconds, compute type).

    The lines have the BPE removed (like fairseq's ``--remove-bpe``); seconds cover
    ``translate_batch`` only.
    """
    import ctranslate2

    from .data import remove_bpe

    translator = ctranslate2.Translator(
        str(model_dir), device=device, inter_threads=1, intra_threads=threads
    )
    start = time.perf_counter()
    results = translator.translate_batch(
        source,
        beam_size=beam,
        length_penalty=1.0,
        max_batch_size=batch_size,
        batch_type="examples",
        max_decoding_length=max_len,
        min_decoding_length=1,
    )
    seconds = time.perf_counter() - start
    lines = [remove_bpe(" ".join(r.hypotheses[0])) for r in results]
    return lines, seconds, translator.compute_type


def _check_inputs(teacher, student, data, subset):
    """Both checkpoints load and fit the data; returns (src, tgt, number of sentences)."""
    from .checkpoint import load_checkpoint
    from .evaluate import check_dictionaries, languages, subset_size

    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected a fairseq data-bin folder)")
    pairs = {}
    for path, flag in ((teacher, "--teacher"), (student, "--student")):
        state = load_checkpoint(str(path), flag)
        pairs[flag] = languages(state, data)
        check_dictionaries(state, data, *pairs[flag])
    if pairs["--teacher"] != pairs["--student"]:
        raise EvokdError(
            f"--teacher translates {'-'.join(pairs['--teacher'])} but --student "
            f"{'-'.join(pairs['--student'])}"
        )
    src, tgt = pairs["--student"]
    return src, tgt, subset_size(data, subset, src, tgt)


def _device(cpu):
    import ctranslate2
    import torch

    cuda = torch.cuda.is_available() and ctranslate2.get_cuda_device_count() > 0
    return "cuda" if cuda and not cpu else "cpu"


def _fairseq_row(system, result):
    row = {"system": system, "engine": "fairseq", "checkpoint": result["checkpoint"]}
    row["quantization"] = row["compute_type"] = "float32"
    row["parameters"] = result["parameters"]
    for key in ("seconds", "sentences_per_second", "bleu", "sacrebleu", "chrf"):
        row[key] = result[key]
    row["hypotheses"] = result["hypotheses"]
    return row


def _read_lines(path):
    from .data.textio import read_lines

    return list(read_lines(path))


def run_bench_translate(
    teacher,
    student,
    data,
    subset="test",
    *,
    beam=5,
    batch_size=64,
    max_len=200,
    threads=None,
    cpu=False,
    work_dir=None,
):
    """Translate ``subset`` of ``data`` with the four systems; returns ``{"meta", "rows"}``.

    Rows (teacher in fairseq, student in fairseq, student in CTranslate2 float32 and int8)
    hold: system, engine, checkpoint (or model folder), quantization, compute_type,
    parameters, seconds, sentences_per_second, speedup (over the teacher in fairseq), bleu,
    sacrebleu, chrf, bleu_lost (the fairseq student's BLEU minus this one's),
    same_as_fairseq_student (share of identical hypotheses), model_bytes (CTranslate2) and
    hypotheses (a file in ``work_dir``; None when no ``work_dir`` is kept). ``work_dir``
    keeps the fairseq logs, hypotheses and the CTranslate2 models; default: a temporary
    folder, removed afterwards.
    """
    from .errors import check_number
    from .evaluate import evaluate_checkpoint
    from .export import export_ct2, require_ctranslate2

    ctranslate2 = require_ctranslate2()
    for value, flag in ((beam, "--beam"), (batch_size, "--batch-size"), (max_len, "--max-len")):
        check_number(value, flag, 1)
    threads = available_cores() if threads is None else threads
    check_number(threads, "--threads", 1)
    src, tgt, n = _check_inputs(teacher, student, data, subset)
    device = _device(cpu)
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="evokd-bench-translate-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        models = {}
        for quantization in QUANTIZATIONS:  # converted before anything is timed
            models[quantization] = work / f"student-ct2-{quantization}"
            export_ct2(student, models[quantization], data, quantization, force=True)
        decoding = dict(beam=beam, batch_size=batch_size, max_len_a=0.0, max_len_b=max_len)
        results = {}
        with thread_environment(threads):
            for system, path in (("teacher", teacher), ("student", student)):
                logger.info(f"bench-translate: {system} in fairseq, {threads} threads")
                out = work / f"{system}.json"
                results[system] = evaluate_checkpoint(
                    path, data, subset, cpu=device == "cpu", out=out, **decoding
                )
        rows = [_fairseq_row(f"{name} (fairseq)", r) for name, r in results.items()]
        source = source_tokens(data, subset, src, tgt)
        for quantization, model in models.items():
            logger.info(f"bench-translate: student in CTranslate2 {quantization} on {device}")
            hyps, seconds, compute_type = translate_ct2(
                model,
                source,
                beam=beam,
                batch_size=batch_size,
                max_len=max_len,
                threads=threads,
                device=device,
            )
            rows.append(_ct2_row(quantization, model, hyps, seconds, compute_type, results, tgt))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    base, reference = rows[0], rows[1]
    for row in rows:
        row["speedup"] = row["sentences_per_second"] / base["sentences_per_second"]
        row["bleu_lost"] = reference["bleu"] - row["bleu"]
        if not keep:
            row["hypotheses"] = None
            if row["engine"] == "ctranslate2":
                row["checkpoint"] = None
    meta = {
        "data": str(data),
        "subset": subset,
        "n_sentences": n,
        "languages": f"{src}-{tgt}",
        "beam": beam,
        "lenpen": 1.0,
        "batch_size": batch_size,
        "max_len": max_len,
        "threads": threads,
        "device": device,
        "cores": available_cores(),
        "ctranslate2": ctranslate2.__version__,
        "timing": "decoding only, one run each, no warm-up: fairseq-generate's own timer; "
        "CTranslate2: wall time of translate_batch",
        "work_dir": str(work) if keep else None,
    }
    for name in ("bleu", "sacrebleu", "chrf"):
        meta[f"{name}_signature"] = results["student"][f"{name}_signature"]
    return {"meta": meta, "rows": rows}


def _ct2_row(quantization, model, hyps, seconds, compute_type, results, tgt):
    """A CTranslate2 row, scored like :func:`evokd.evaluate.evaluate_checkpoint` scores."""
    from .evaluate import detokenize, score
    from .export import model_size

    student = results["student"]
    fairseq_hyps = _read_lines(student["hypotheses_tok"])
    refs_tok = _read_lines(student["references"])  # the file fairseq's BLEU used
    raw = _raw_references(student["data"], student["subset"], tgt)
    hyps_detok = detokenize(hyps, tgt)
    scores = score(hyps, refs_tok, hyps_detok, _read_lines(raw) if raw else None)
    path = model.with_name(f"{model.name}.hyp.{tgt}")
    path.write_text("".join(line + "\n" for line in hyps_detok), encoding="utf-8")
    return {
        "system": f"student (CTranslate2 {quantization})",
        "engine": "ctranslate2",
        "checkpoint": str(model),
        "quantization": quantization,
        "compute_type": compute_type,
        "parameters": student["parameters"],
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(hyps) / seconds, 2),
        "bleu": scores["bleu"],
        "sacrebleu": scores.get("sacrebleu"),
        "chrf": scores.get("chrf"),
        "same_as_fairseq_student": sum(a == b for a, b in zip(hyps, fairseq_hyps)) / len(hyps),
        "model_bytes": model_size(model),
        "hypotheses": str(path),
    }


def _raw_references(data, subset, tgt):
    from .data import text_path

    try:
        path = text_path(data, subset, tgt, "raw")
    except ValueError:
        return None
    return path if path.is_file() else None


def _number(value, digits=2):
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # no -0.00


def table(result):
    """The rows as a markdown table, with the settings underneath."""
    lines = [
        "| system | sentences/s | speed-up | BLEU | sacreBLEU | chrF | BLEU lost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['system']} | {r['sentences_per_second']:.1f} | {r['speedup']:.1f}x | "
            f"{_number(r['bleu'])} | {_number(r['sacrebleu'])} | {_number(r['chrf'])} | "
            f"{_number(r['bleu_lost'])} |"
        )
    m = result["meta"]
    lines.append(
        f"\n{m['data']} {m['subset']}, {m['n_sentences']} sentences, beam {m['beam']}, "
        f"batches of {m['batch_size']} sentences, at most {m['max_len']} tokens, "
        f"{m['threads']} threads on {m['device']} ({m['cores']} cores). Speed-up: over the "
        "teacher in fairseq; BLEU lost: against the student in fairseq."
    )
    return "\n".join(lines)
