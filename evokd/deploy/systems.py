"""The rows of ``evokd bench-translate``: each system translated, timed and scored at one beam.

fairseq without fixed lengths runs as stock fairseq-generate (:mod:`evokd.core.generate`:
its own decoding timer, model loading and data reading excluded) and is scored like
``evokd evaluate`` scores (:mod:`evokd.core.metrics`); CTranslate2 translates the same
source tokens in one ``translate_batch`` call and is scored against the references that
fairseq's BLEU used. With fixed lengths fairseq runs in-process over the planned batches
and nothing is scored.
"""

import logging
import re
from pathlib import Path

from evokd.core.decoding import Decoding
from evokd.core.devices import torch_threads
from evokd.core.generate import generate, score_output
from evokd.core.metrics import detokenize, score
from evokd.data.layout import existing_text
from evokd.deploy import engines

logger = logging.getLogger(__name__)


def slug(name):
    """``name`` as a file name: runs of other characters than letters and digits as ``_``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def row(system, engine, model, beam, hyps, seconds, latency):
    """A row; ``model`` is (name, checkpoint or folder, parameters, quantization)."""
    name, checkpoint, parameters, quantization = model
    tokens = sum(len(h) for h in hyps)
    return {
        "system": system,
        "model": name,
        "engine": engine,
        "checkpoint": str(checkpoint),
        "quantization": quantization,
        "compute_type": quantization,
        "parameters": parameters,
        "beam": beam,
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(hyps) / seconds, 2),
        "target_tokens": tokens,
        "target_tokens_per_second": round(tokens / seconds, 1),
        "latency_median_ms": latency[0] if latency else None,
        "latency_p90_ms": latency[1] if latency else None,
        "bleu": None,
        "sacrebleu": None,
        "chrf": None,
        "shortlist": False,
    }


def fairseq_rows(run, models, beam, work, suffix, profile_dir):
    """The teacher and the students in fairseq at one beam size; ``run``: a
    :class:`evokd.deploy.workload.Workload`."""
    rows = []
    for name, path, params in models:
        system = f"{name} (fairseq)"
        logger.info(f"bench-translate: {system}, beam {beam}, {run.threads} threads")
        stem = work / f"{slug(name)}{suffix}"
        translator, latency = None, None
        if run.lengths is not None or run.latency_ids:
            flag = "--teacher" if name == "teacher" else "--student"
            translator = engines.fairseq_translator(
                path, run.data, run.subset, beam, run.device, flag
            )
        with torch_threads(run.threads):
            if translator is not None:
                latency = run.latency(run.fairseq_call(translator))
            if run.lengths is not None:
                profile = Path(profile_dir) / f"{stem.name}.txt" if profile_dir else None
                hyps, seconds = run.batched(run.fairseq_call(translator), run.batches, profile)
                model = (name, path, params, "float32")
                rows.append({**row(system, "fairseq", model, beam, hyps, seconds, latency),
                             "hypotheses_ids": hyps})  # fmt: skip
                continue
        rows.append(generate_row(run, system, (name, path, params), beam, stem, latency))
    return rows


def generate_row(run, system, model, beam, stem, latency):
    """A fairseq row from fairseq-generate, scored; its files named ``{stem}.*``."""
    name, path, params = model
    decoding = Decoding(beam=beam, batch_size=run.batch_size, max_len_a=0.0,
                        max_len_b=run.max_len, cpu=run.device == "cpu")  # fmt: skip
    log = Path(f"{stem}.generate.log")
    out = generate(path, run.data, run.subset, run.src, run.tgt, decoding.fairseq_args(), log,
                   threads=run.threads)  # fmt: skip
    n, tgt = len(run.source), run.tgt
    refs_tok = _read(existing_text(run.data, run.subset, tgt, "tok"))
    refs_raw = _read(existing_text(run.data, run.subset, tgt, "raw"))
    hyps_tok, hyps_detok, refs_tok, scores = score_output(out, n, tgt, refs_tok, refs_raw, log)
    sentences_per_second = out.sentences_per_second or round(n / max(out.wall_seconds, 0.01), 2)
    seconds = n / sentences_per_second  # fairseq prints seconds to 0.1 s only
    result = row(system, "fairseq", (name, path, params, "float32"), beam, [], seconds, latency)
    decoded = out.seconds if out.seconds is not None else out.wall_seconds
    result.update(seconds=decoded, sentences_per_second=sentences_per_second)
    result["target_tokens"] = result["target_tokens_per_second"] = None
    if out.tokens is not None:  # fairseq counts the end of sentence of every hypothesis
        result["target_tokens"] = out.tokens - out.sentences
        result["target_tokens_per_second"] = round((out.tokens - out.sentences) / seconds, 1)
    for key in ("bleu", "sacrebleu", "chrf"):
        result[key], result[f"{key}_signature"] = scores.get(key), scores.get(f"{key}_signature")
    result["hypotheses"] = _write(f"{stem}.hyp.{tgt}", hyps_detok)
    _write(f"{stem}.hyp.tok.{tgt}", hyps_tok)
    result["_hypotheses_tok"], result["_references"] = hyps_tok, (refs_tok, refs_raw)
    return result


def ct2_rows(run, beam, work, suffix, ct2, fairseq_rows):
    """Every CTranslate2 system at one beam size, scored like the fairseq rows."""
    from evokd.data import remove_bpe
    from evokd.deploy.export import model_size

    rows = []
    by_model = {r["model"]: r for r in fairseq_rows}
    for system, (name, folder, params, q, lex) in ct2:
        logger.info(f"bench-translate: {system}, beam {beam} on {run.device}")
        translator = engines.load_ct2(folder, run.threads, run.device)
        call = run.ct2_call(translator, beam, use_vmap=lex)
        latency = run.latency(call)
        if run.lengths is not None:
            hyps, seconds = run.batched(call, run.batches)
        else:
            hyps, seconds = engines.translate_ct2(translator, run.source, beam=beam,
                                                  batch_size=run.batch_size, max_len=run.max_len,
                                                  use_vmap=lex)  # fmt: skip
        new = row(system, "ctranslate2", (name, folder, params, q), beam, hyps, seconds, latency)
        new.update(compute_type=translator.compute_type, model_bytes=model_size(folder))
        new["shortlist"] = lex
        if run.lengths is not None:
            new["hypotheses_tokens"] = hyps
        else:
            lines = [remove_bpe(" ".join(h)) for h in hyps]
            path = work / f"{folder.name}{'-shortlist' if lex else ''}{suffix}.hyp.{run.tgt}"
            new.update(score_ct2(lines, by_model[name], run.tgt, path))
        rows.append(new)
    return rows


def score_ct2(lines, reference, tgt, path):
    """Scores of CTranslate2 hypotheses (tokenized, BPE removed) against the references of
    the same model's fairseq row ``reference``, and their agreement with its hypotheses;
    the detokenized hypotheses written to ``path``."""
    refs_tok, refs_raw = reference["_references"]
    detok = detokenize(lines, tgt)
    scores = score(lines, refs_tok, detok, refs_raw)
    same = sum(a == b for a, b in zip(lines, reference["_hypotheses_tok"])) / len(lines)
    found = {
        "bleu": scores["bleu"],
        "sacrebleu": scores.get("sacrebleu"),
        "chrf": scores.get("chrf"),
        "same_as_fairseq": same,
        "hypotheses": _write(path, detok),
    }
    if reference["model"] != "teacher":
        found["same_as_fairseq_student"] = same
    return found


def _read(path):
    from evokd.data.textio import read_lines

    return None if path is None else list(read_lines(path))


def _write(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)
