"""Evaluate a translation checkpoint: fairseq-generate, then tokenized BLEU, sacreBLEU and chrF.

Stock ``fairseq-generate --remove-bpe`` translates (on the GPU when there is one); its whole
output is kept in a log file. Three scores are computed from its ``H-`` lines:

- ``bleu``: tokenized BLEU as the EKD paper reports it (like multi-bleu.perl and fairseq's
  BLEU4): the lowercased, Moses-tokenized hypotheses against ``text/{subset}.tok.{tgt}`` of
  a folder made by ``evokd prepare``, ``sacrebleu.corpus_bleu(hyps, [refs], tokenize="none")``;
  without that file, against the references fairseq-generate prints (``T-`` lines);
- ``sacrebleu`` and ``chrf``: hypotheses detokenized by sacremoses (which also undoes the
  Moses escapes such as ``&apos;``) against the raw references ``text/{subset}.raw.{tgt}``,
  case-insensitive since the models write lowercase; skipped (None) without raw references.

Any raw parallel text can be scored too (:func:`evaluate` with ``src_file``/``ref_file``):
the source is encoded with the prepared folder's own tokenizer and BPE and binarized into a
temporary folder with the data's dictionaries, then translated the same way.

:func:`average_last_checkpoints` averages the weights of the newest epoch checkpoints like fairseq's
``scripts/average_checkpoints.py --num-epoch-checkpoints N``.
"""

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evokd.core.checkpoint import architecture, load_checkpoint
from evokd.core.inference import DECODING, choose_device
from evokd.core.runtime import USER_DIR
from evokd.data.folder import check_dictionaries as check_checkpoint_dictionaries
from evokd.data.folder import languages, subset_size, write_dataset
from evokd.errors import EvokdError, check_number
from evokd.evaluation.averaging import average_last_checkpoints, last_epoch_checkpoints

logger = logging.getLogger(__name__)

BUFFER_SUFFIXES = (".version", "._float_tensor")  # state-dict entries that are not parameters
_HYPOTHESIS = re.compile(r"^H-(\d+)\t[^\t]*\t(.*)$")
_TARGET = re.compile(r"^T-(\d+)\t(.*)$")
_TRANSLATED = re.compile(r"Translated ([\d,]+) sentences .* in ([\d.]+)s \(([\d.]+) sentences/s")


@dataclass
class Decoding:
    """fairseq-generate settings (flags of the same names)."""

    beam: int = DECODING["beam"]
    lenpen: float = DECODING["lenpen"]
    max_tokens: Optional[int] = None  # DECODING's unless batch_size is given
    batch_size: Optional[int] = None
    max_len_a: float = DECODING["max_len_a"]  # longest: max_len_a * source length + max_len_b
    max_len_b: int = DECODING["max_len_b"]
    cpu: bool = False  # also without CUDA

    def check(self):
        check_number(self.beam, "--beam", 1)
        if not (isinstance(self.lenpen, (int, float)) and math.isfinite(self.lenpen)):
            raise EvokdError(f"--lenpen {self.lenpen}: expected a finite number")
        check_number(self.max_tokens, "--max-tokens", 1)
        check_number(self.batch_size, "--batch-size", 1)
        check_number(self.max_len_a, "--max-len-a", 0, kind=float)
        check_number(self.max_len_b, "--max-len-b", 1)
        if self.max_tokens is not None and self.batch_size is not None:
            raise EvokdError("--max-tokens and --batch-size: give one or the other")

    def fairseq_args(self):
        args = ["--beam", str(self.beam), "--lenpen", str(self.lenpen)]
        args += ["--max-len-a", str(self.max_len_a), "--max-len-b", str(self.max_len_b)]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        else:
            args += ["--max-tokens", str(self.max_tokens or DECODING["max_tokens"])]
        if choose_device(self.cpu).type == "cpu":
            args.append("--cpu")
        return args


# --- checkpoints -----------------------------------------------------------------------------


def count_parameters(model_state):
    """Parameters of a model state dict: tied tensors once, buffers (``version``) not at all.

    Equals ``sum(p.numel() for p in model.parameters())`` for fairseq's transformers, the
    "num. shared model params" that fairseq-train logs.
    """
    import torch

    seen, total = set(), 0
    for key, tensor in model_state.items():
        if key.endswith(BUFFER_SUFFIXES) or not torch.is_tensor(tensor):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if ident not in seen:
            seen.add(ident)
            total += tensor.numel()
    return total


# --- data ------------------------------------------------------------------------------------


def check_dictionaries(state, data, src, tgt, path="CHECKPOINT", flag="CHECKPOINT"):
    """The checkpoint must have been trained with ``data``'s dictionaries (by symbols, not
    only sizes): :func:`evokd.data.folder.check_dictionaries`."""
    check_checkpoint_dictionaries(state, path, data, src, tgt, flag)


def _text_file(data, subset, lang, kind):
    """A text file of a folder made by ``evokd prepare``, or None."""
    from evokd.data import text_path

    try:
        path = text_path(data, subset, lang, kind)
    except ValueError:  # no such kind of file for this split
        return None
    return path if path.is_file() else None


def _read_refs(path, n):
    from evokd.data.textio import read_lines

    lines = list(read_lines(path))
    if len(lines) != n:
        raise EvokdError(f"{path}: {len(lines)} lines, but the binarized split has {n}")
    return lines


def _write_lines(path, lines):
    from evokd.data.textio import write_lines

    write_lines(path, lines)
    return str(path)


def _check_parallel(src_file, ref_file):
    from evokd.data.textio import check_file, count_lines

    for path, flag in ((src_file, "--src-file"), (ref_file, "--ref-file")):
        check_file(path, f"{flag}: raw text, one segment per line, UTF-8")
    n_src, n_ref = count_lines(src_file), count_lines(ref_file)
    if n_src != n_ref:
        raise EvokdError(
            f"--src-file {src_file} has {n_src} lines but --ref-file {ref_file} has {n_ref}; "
            "they must be aligned line by line"
        )
    return n_src


def _binarize_source(lines, data, src, tgt, dest):
    """A data-bin folder ``dest`` holding ``lines`` (BPE'd) as the source side of ``test``."""
    import shutil

    from fairseq.data import Dictionary

    for lang in (src, tgt):
        shutil.copyfile(Path(data) / f"dict.{lang}.txt", Path(dest) / f"dict.{lang}.txt")
    dictionary = Dictionary.load(str(Path(data) / f"dict.{src}.txt"))
    # encoded as fairseq-preprocess --srcdict does
    items = (dictionary.encode_line(line, add_if_not_exist=False) for line in lines)
    write_dataset(Path(dest) / f"test.{src}-{tgt}.{src}", items, len(dictionary))


# --- translation and scores ------------------------------------------------------------------


def generate(checkpoint, data, subset, src, tgt, decoding, log_path):
    """Run fairseq-generate, its output into ``log_path``.

    Returns ``(hypotheses, references, timing)``: the best hypothesis and the ``T-``
    reference of each sentence id, BPE removed, as dicts; ``seconds`` (fairseq's decoding
    time, model loading excluded) and ``sentences_per_second`` when it reported them, and
    ``wall_seconds`` of the whole run.
    """
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(data), "--path", str(checkpoint)]
    cmd += ["--user-dir", USER_DIR, "--gen-subset", subset, "--source-lang", src]
    cmd += ["--target-lang", tgt, "--remove-bpe", "--num-workers", "0", "--no-progress-bar"]
    # ve-fairseq drops the last batch when its size is not a multiple of this (8 by default)
    cmd += ["--required-batch-size-multiple", "1"]
    cmd += decoding.fairseq_args()
    logger.info(f"translating {data} {subset} with fairseq-generate; output in {log_path}")
    # Unbuffered, and no loader workers: nothing from stderr lands inside an H- line.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("# " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    hyps, refs, timing = {}, {}, {"wall_seconds": round(time.perf_counter() - start, 2)}
    with open(log_path, encoding="utf-8", errors="replace") as log:
        lines = log.read().split("\n")
    if code != 0:
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise EvokdError(f"fairseq-generate failed (exit {code}): {last.strip()} (see {log_path})")
    for line in lines:
        if m := _HYPOTHESIS.match(line):
            hyps.setdefault(int(m.group(1)), m.group(2))  # the best of --nbest
        elif m := _TARGET.match(line):
            refs[int(m.group(1))] = m.group(2)
        elif m := _TRANSLATED.search(line):
            timing.update(seconds=float(m.group(2)), sentences_per_second=float(m.group(3)))
    return hyps, refs, timing


def _in_order(by_id, n, what, log_path):
    """``by_id[0..n-1]`` as a list, or an error naming the missing ids."""
    missing = [i for i in range(n) if i not in by_id]
    if missing or len(by_id) != n:
        raise EvokdError(
            f"fairseq-generate gave {len(by_id)} {what} for {n} sentences (missing ids "
            f"{', '.join(map(str, missing[:10])) or 'none'}); see {log_path}"
        )
    return [by_id[i] for i in range(n)]


def detokenize(lines, lang):
    """Moses-detokenize (and unescape ``&apos;`` etc.) tokenized lines of language ``lang``."""
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split(), return_str=True) for line in lines]


def score(hyps_tok, refs_tok, hyps_detok=None, refs_raw=None):
    """Tokenized BLEU, and sacreBLEU and chrF when raw references are given; with signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    scores = {}
    metrics = [("bleu", BLEU(tokenize="none", force=True), hyps_tok, refs_tok)]
    if refs_raw is not None:
        metrics.append(("sacrebleu", BLEU(lowercase=True), hyps_detok, refs_raw))
        metrics.append(("chrf", CHRF(lowercase=True), hyps_detok, refs_raw))
    for name, metric, hyps, refs in metrics:
        scores[name] = metric.corpus_score(hyps, [refs]).score
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


# --- the whole evaluation --------------------------------------------------------------------


def _check_arguments(checkpoint, data, subset, decoding, average_last, src_file, ref_file):
    decoding.check()
    check_number(average_last, "--average-last", 2)
    if (src_file is None) != (ref_file is None):
        raise EvokdError("--src-file and --ref-file: give both or neither")
    if src_file is not None and subset is not None:
        raise EvokdError("--subset: not used with --src-file/--ref-file; give one or the other")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected a fairseq data-bin folder)")
    for path, flag in ((checkpoint, "CHECKPOINT"), (data, "--data")):
        if os.pathsep in str(path):  # fairseq splits --path and DATA at os.pathsep
            raise EvokdError(f"{flag} {path}: fairseq cannot read a path holding {os.pathsep!r}")


def _subset_references(data, subset, tgt, n):
    """(tokenized references or None, raw references or None, the tokenized file or None)."""
    tok_file = _text_file(data, subset, tgt, "tok")
    raw_file = _text_file(data, subset, tgt, "raw")
    refs_tok = _read_refs(tok_file, n) if tok_file else None
    refs_raw = _read_refs(raw_file, n) if raw_file else None
    return refs_tok, refs_raw, tok_file


def _encode_raw_text(data, src, tgt, src_file, ref_file):
    """(BPE'd source lines, tokenized references, raw references) of raw parallel text."""
    from evokd.data import load_encoder, read_metadata
    from evokd.data.textio import one_line, read_lines

    try:
        metadata = read_metadata(data)
    except EvokdError as exc:
        raise EvokdError(f"--src-file needs the tokenizer and BPE of --data: {exc}") from exc
    if (metadata["src"], metadata["tgt"]) != (src, tgt):
        raise EvokdError(
            f"--data {data}: prepared for {metadata['src']}-{metadata['tgt']}, but the "
            f"checkpoint translates {src}-{tgt}"
        )
    source = load_encoder(data, src).encode_lines(one_line(x) for x in read_lines(src_file))
    refs_raw = list(read_lines(ref_file))
    tokenizer = load_encoder(data, tgt)
    return source, [tokenizer.tokenize(one_line(x)) for x in refs_raw], refs_raw


def _output_stem(out, out_dir, checkpoint, label):
    """Where the output files go: ``{stem}.hyp.en`` and so on."""
    if out is not None:
        out = Path(out)
        stem = out.with_suffix("") if out.suffix == ".json" else out
    else:
        stem = Path(out_dir or checkpoint.parent) / f"{checkpoint.stem}.{label}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem


def evaluate_checkpoint(
    checkpoint,
    data,
    subset=None,
    *,
    beam=DECODING["beam"],
    lenpen=DECODING["lenpen"],
    max_tokens=None,
    batch_size=None,
    max_len_a=DECODING["max_len_a"],
    max_len_b=DECODING["max_len_b"],
    cpu=False,
    average_last=None,
    out=None,
    out_dir=None,
    src_file=None,
    ref_file=None,
):
    """Translate and score; returns the result dict (written as JSON to ``out`` if given).

    ``subset``: the binarized split of ``data`` to translate (default test); or
    ``src_file`` and ``ref_file``: raw parallel text, encoded like ``data`` (then a folder
    made by evokd prepare). ``beam`` ... ``cpu``: see :class:`Decoding`. ``average_last``:
    evaluate the average of the N newest epoch checkpoints next to ``checkpoint`` instead
    (see :func:`average_last_checkpoints`). The hypotheses and the fairseq-generate log go
    next to ``out``, named after it; else into ``out_dir`` (default: the checkpoint's
    folder) as ``{checkpoint name}.{subset}.*``.

    Keys: checkpoint, data, subset (None with src_file), src_file, ref_file, beam, lenpen,
    n_sentences, bleu (tokenized), sacrebleu, chrf (None without raw references) and their
    ``*_signature``, parameters, architecture, seconds (decoding, as fairseq-generate
    measures it), sentences_per_second, wall_seconds (translation run, model loading
    included), hypotheses (detokenized), hypotheses_tok, references (tokenized), log,
    averaged (the averaged checkpoints or None), notes.
    """
    decoding = Decoding(beam, lenpen, max_tokens, batch_size, max_len_a, max_len_b, cpu)
    _check_arguments(checkpoint, data, subset, decoding, average_last, src_file, ref_file)
    subset, data = (None if src_file else subset or "test"), Path(data)
    n = _check_parallel(src_file, ref_file) if src_file else None

    # Everything that can be wrong with the input is found before translating.
    inputs = None
    if average_last:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        inputs = last_epoch_checkpoints(folder, average_last)
        path, flag = inputs[0], "--average-last"
    else:
        path, flag = checkpoint, "CHECKPOINT"
    state = load_checkpoint(str(path), flag)
    src, tgt = languages(state, data)
    check_dictionaries(state, data, src, tgt, path, flag)
    if src_file:
        source, refs_tok, refs_raw = _encode_raw_text(data, src, tgt, src_file, ref_file)
        tok_file = None
    else:
        n = subset_size(data, subset, src, tgt)
        refs_tok, refs_raw, tok_file = _subset_references(data, subset, tgt, n)

    checkpoint = average_last_checkpoints(folder, average_last) if inputs else Path(checkpoint)
    stem = _output_stem(out, out_dir, checkpoint, Path(src_file).name if src_file else subset)
    log_path = Path(f"{stem}.generate.log")
    if src_file:
        with tempfile.TemporaryDirectory(prefix="evokd-eval-") as tmp:
            _binarize_source(source, data, src, tgt, tmp)
            hyps, refs, timing = generate(checkpoint, tmp, "test", src, tgt, decoding, log_path)
    else:
        hyps, refs, timing = generate(checkpoint, data, subset, src, tgt, decoding, log_path)
    hyps_tok = _in_order(hyps, n, "hypotheses", log_path)

    notes = []
    if refs_tok is None:
        if not refs:
            raise EvokdError(
                f"--data {data}: the {subset} split has no target side and there is no "
                f"text/{subset}.tok.{tgt}: no references to score against"
            )
        notes.append(
            f"no text/{subset}.tok.{tgt} in {data}: tokenized BLEU against the "
            "references that fairseq-generate printed"
        )
        refs_tok = _in_order(refs, n, "references", log_path)
    if refs_raw is None:
        notes.append(f"no text/{subset}.raw.{tgt} in {data}: sacreBLEU and chrF skipped")
    hyps_detok = detokenize(hyps_tok, tgt)
    scores = score(hyps_tok, refs_tok, hyps_detok, refs_raw)
    seconds = timing.get("seconds", timing["wall_seconds"])
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "subset": subset,
        "src_file": src_file and str(src_file),
        "ref_file": ref_file and str(ref_file),
        "beam": decoding.beam,
        "lenpen": decoding.lenpen,
        "n_sentences": n,
    }
    for name in ("bleu", "sacrebleu", "chrf"):
        result[name] = scores.get(name)
        result[f"{name}_signature"] = scores.get(f"{name}_signature")
    result.update(
        parameters=count_parameters(state["model"]),
        architecture=architecture(state),
        seconds=seconds,
        sentences_per_second=timing.get("sentences_per_second", round(n / max(seconds, 0.01), 2)),
        wall_seconds=timing["wall_seconds"],
        hypotheses=_write_lines(f"{stem}.hyp.{tgt}", hyps_detok),
        hypotheses_tok=_write_lines(f"{stem}.hyp.tok.{tgt}", hyps_tok),
        references=str(tok_file) if tok_file else _write_lines(f"{stem}.ref.tok.{tgt}", refs_tok),
        log=str(log_path),
        averaged=[str(p) for p in inputs] if inputs else None,
        notes=notes,
    )
    if out is not None:
        _write_lines(out, [json.dumps(result, indent=2, ensure_ascii=False)])
    return result
