"""Evaluate a translation checkpoint: fairseq-generate, then tokenized BLEU, sacreBLEU and chrF.

Stock ``fairseq-generate --remove-bpe`` translates (on the GPU when there is one;
:mod:`evokd.core.generate`); its whole output is kept in a log file. The scores are
:mod:`evokd.core.metrics`' of its ``H-`` lines:

- ``bleu``: tokenized BLEU, the hypotheses against ``text/{subset}.tok.{tgt}`` of a folder
  made by ``evokd prepare``; without that file, against the references fairseq-generate
  prints (``T-`` lines);
- ``sacrebleu`` and ``chrf``: hypotheses detokenized by sacremoses against the raw
  references ``text/{subset}.raw.{tgt}``; skipped (None) without raw references.

Any raw parallel text can be scored too (:func:`evaluate_checkpoint` with
``src_file``/``ref_file``): the source is encoded with the prepared folder's own tokenizer
and BPE and binarized into a temporary folder with the data's dictionaries, then translated
the same way. ``average_last`` evaluates the average of the newest epoch checkpoints
(:func:`evokd.evaluation.averaging.average_last_checkpoints`).
"""

import json
import logging
import os
import tempfile
from pathlib import Path

from evokd.core.checkpoint import (
    architecture,
    check_dictionaries,
    count_parameters,
    languages,
    load_checkpoint,
)
from evokd.core.decoding import DECODING, Decoding
from evokd.core.generate import generate, score_output
from evokd.data.folder import subset_size, write_dataset
from evokd.data.layout import existing_text
from evokd.errors import EvokdError, check_number
from evokd.evaluation.averaging import average_last_checkpoints, last_epoch_checkpoints

logger = logging.getLogger(__name__)


# --- data ------------------------------------------------------------------------------------


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
    tok_file = existing_text(data, subset, tgt, "tok")
    raw_file = existing_text(data, subset, tgt, "raw")
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


def folder_checkpoint(folder):
    """A folder given as CHECKPOINT (a stage's): its ``checkpoint_best.pt``, or an error that
    says which file to give."""
    best = Path(folder) / "checkpoint_best.pt"
    if best.is_file():
        logger.info("CHECKPOINT %s: a folder; evaluating its %s", folder, best.name)
        return best
    found = sorted(Path(folder).glob("*.pt"), key=lambda p: p.name)
    if not found:
        raise EvokdError(f"CHECKPOINT {folder}: a folder holding no checkpoint (*.pt)")
    last = Path(folder) / "checkpoint_last.pt"
    raise EvokdError(
        f"CHECKPOINT {folder}: a folder without checkpoint_best.pt: give one of its "
        f"checkpoints, e.g. {last if last.is_file() else found[-1]} "
        f"(there: {', '.join(p.name for p in found)})"
    )


class _Inputs:
    """The checkpoint (or the newest epoch checkpoints to average), its languages and the
    text to translate and score against, all checked before anything is translated."""

    def __init__(self, checkpoint, data, subset, average_last, src_file, ref_file):
        self.given, self.data, self.subset = Path(checkpoint), data, subset
        self.average_last, self.src_file, self.averaged = average_last, src_file, None
        self.n = _check_parallel(src_file, ref_file) if src_file else None
        path, flag = checkpoint, "CHECKPOINT"
        if average_last:
            self.folder = self.given if self.given.is_dir() else self.given.parent
            self.averaged = last_epoch_checkpoints(self.folder, average_last)
            path, flag = self.averaged[0], "--average-last"
        self.state = load_checkpoint(str(path), flag)
        self.src, self.tgt = languages(self.state, data)
        check_dictionaries(self.state, path, data, self.src, self.tgt, flag)
        self.source, self.tok_file = None, None
        if src_file:
            self.source, self.refs_tok, self.refs_raw = _encode_raw_text(
                data, self.src, self.tgt, src_file, ref_file
            )
        else:
            self.n = subset_size(data, subset, self.src, self.tgt)
            self.refs_tok, self.refs_raw, self.tok_file = _subset_references(
                data, subset, self.tgt, self.n
            )

    def checkpoint(self):
        """The checkpoint to translate with: the given one, or the average made now."""
        if self.averaged:
            return average_last_checkpoints(self.folder, self.average_last)
        return self.given

    def translate(self, checkpoint, decoding, log_path):
        """fairseq-generate over the subset, or over the encoded source file."""
        args = decoding.fairseq_args()
        if self.source is None:
            return generate(checkpoint, self.data, self.subset, self.src, self.tgt, args, log_path)
        with tempfile.TemporaryDirectory(prefix="evokd-eval-") as tmp:
            _binarize_source(self.source, self.data, self.src, self.tgt, tmp)
            return generate(checkpoint, tmp, "test", self.src, self.tgt, args, log_path)


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
    if not average_last and Path(checkpoint).is_dir():
        checkpoint = folder_checkpoint(checkpoint)
    _check_arguments(checkpoint, data, subset, decoding, average_last, src_file, ref_file)
    subset, data = (None if src_file else subset or "test"), Path(data)
    # Everything that can be wrong with the input is found before translating.
    inputs = _Inputs(checkpoint, data, subset, average_last, src_file, ref_file)
    checkpoint = inputs.checkpoint()
    stem = _output_stem(out, out_dir, checkpoint, Path(src_file).name if src_file else subset)
    log_path = Path(f"{stem}.generate.log")
    generated = inputs.translate(checkpoint, decoding, log_path)
    tgt, n, refs_tok, refs_raw, notes = inputs.tgt, inputs.n, inputs.refs_tok, inputs.refs_raw, []
    if refs_tok is None:
        if not generated.targets:
            raise EvokdError(
                f"--data {data}: the {subset} split has no target side and there is no "
                f"text/{subset}.tok.{tgt}: no references to score against"
            )
        notes.append(
            f"no text/{subset}.tok.{tgt} in {data}: tokenized BLEU against the "
            "references that fairseq-generate printed"
        )
    if refs_raw is None:
        notes.append(f"no text/{subset}.raw.{tgt} in {data}: sacreBLEU and chrF skipped")
    hyps_tok, hyps_detok, refs_tok, scores = score_output(
        generated, n, tgt, refs_tok, refs_raw, log_path
    )
    seconds = generated.seconds if generated.seconds is not None else generated.wall_seconds
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
    tok_file = inputs.tok_file
    result.update(
        parameters=count_parameters(inputs.state["model"]),
        architecture=architecture(inputs.state),
        seconds=seconds,
        sentences_per_second=generated.sentences_per_second or round(n / max(seconds, 0.01), 2),
        wall_seconds=generated.wall_seconds,
        hypotheses=_write_lines(f"{stem}.hyp.{tgt}", hyps_detok),
        hypotheses_tok=_write_lines(f"{stem}.hyp.tok.{tgt}", hyps_tok),
        references=str(tok_file) if tok_file else _write_lines(f"{stem}.ref.tok.{tgt}", refs_tok),
        log=str(log_path),
        averaged=[str(p) for p in inputs.averaged] if inputs.averaged else None,
        notes=notes,
    )
    if out is not None:
        _write_lines(out, [json.dumps(result, indent=2, ensure_ascii=False)])
    return result
