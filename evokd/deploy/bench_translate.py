"""Translation speed and quality of a teacher and its students, in fairseq and CTranslate2.

One run, one test set, the same settings for every system, for each beam size asked for
(beam 5 and greedy by default). The systems: the teacher and every student in fairseq;
every student exported to CTranslate2 (:func:`evokd.deploy.export.export_ct2`, ``float32`` and
``int8`` by default); the teacher in CTranslate2 when asked (the pure model speed-up,
the same engine on both sides). For each system and beam:

- throughput, batched: sentences and target tokens (output BPE pieces, end of sentence
  excluded) per second;
- latency, one sentence per call (a user typing): median and 90th percentile
  milliseconds over the first ``latency_sentences`` sentences of the subset, each its own
  call of :func:`evokd.deploy.engines.translate_fairseq` (in-process,
  :mod:`evokd.core.inference`) or :func:`evokd.deploy.engines.translate_ct2`, after one
  untimed call;
- shortlist: with a lexical shortlist (:mod:`evokd.deploy.shortlist`) every CTranslate2
  model is exported with it, and translates with it (``use_vmap=True``), without it, or
  both, one row each (``shortlist``: whether the row's output was restricted);
- quality: tokenized BLEU, sacreBLEU and chrF (:mod:`evokd.core.metrics`, as ``evokd
  evaluate`` scores), and BLEU lost against the first student in fairseq at the same beam.

Two modes:

- by default, decoding stops at the end of sentence (or after ``max_len`` tokens). The
  fairseq throughput is fairseq-generate's (:mod:`evokd.core.generate`, its own decoding
  timer: model loading and data reading excluded); CTranslate2's is
  ``Translator.translate_batch`` on the same source tokens (the binarized subset decoded
  with the source dictionary, ``<unk>`` included), timed around that call;
- ``fixed_length``: a cost measurement, with no BLEU. Every output is exactly as long as
  its reference (in target BPE pieces; at least one): the sentences are grouped by
  reference length into batches of at most ``batch_size``, and each batch is decoded
  with fairseq's ``min_len = max_len_b = L`` (``max_len_a = 0``) and CTranslate2's
  ``min_decoding_length = max_decoding_length = L``, the same batches in both engines.
  Untrained models then do the same work as trained ones would, so that models that do
  not exist yet (the paper's sizes) can be compared. fairseq runs in-process here
  through :mod:`evokd.core.inference` (fairseq's own generator and ``task.inference_step``),
  timed around each batch's call.

What is kept equal, and how:

- threads: ``threads`` for every system (fairseq-generate: ``OMP_NUM_THREADS`` and
  ``MKL_NUM_THREADS`` of its process; in-process fairseq: ``torch.set_num_threads``; CTranslate2:
  ``intra_threads=threads, inter_threads=1``);
- beam and length: fairseq ``--beam B --lenpen 1 --max-len-a 0 --max-len-b L --min-len 1``
  and CTranslate2 ``beam_size=B, length_penalty=1, max_decoding_length=L,
  min_decoding_length=1``; beam 1 is greedy search in both;
- batches: fairseq ``--batch-size N`` and CTranslate2 ``max_batch_size=N,
  batch_type="examples"``; both sort the whole set by source length before batching
  (fixed lengths: the same planned batches);
- device: the GPU for both when torch and CTranslate2 both see one (and not ``cpu``),
  else the CPU for both.

Each system is timed once; on a shared machine expect noise, and compare ratios within
one run. ``profile_dir``: fairseq's in-process batched runs (fixed lengths) under
cProfile, the functions that take the most time written there as text, one file per
system and beam.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

from evokd.core.checkpoint import (
    check_dictionaries,
    count_parameters,
    languages,
    load_checkpoint,
    model_config,
)
from evokd.data.folder import subset_size
from evokd.deploy import systems, timing
from evokd.deploy.engines import available_cores, choose_device
from evokd.deploy.export import QUANTIZATIONS
from evokd.deploy.workload import Workload
from evokd.errors import EvokdError, check_number

logger = logging.getLogger(__name__)

STUDENT_CT2 = ("float32", "int8")  # the CTranslate2 variants of the students by default
LATENCY_SENTENCES = 100
COST_LABEL = "cost measurement: every output forced to its reference's length, no BLEU"


def _shape(state):
    cfg = model_config(state)
    return f"{cfg.encoder_layers}+{cfg.decoder_layers} ({cfg.encoder_embed_dim})"


def _check_inputs(teacher, students, data, subset):
    """Every checkpoint loads and fits the data; returns (src, tgt, n, models).

    ``models``: (role name, checkpoint, parameters), the teacher first.
    """
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected a fairseq data-bin folder)")
    if not students:
        raise EvokdError("--student: give at least one student checkpoint")
    loaded = []
    for path, flag in [(teacher, "--teacher")] + [(s, "--student") for s in students]:
        state = load_checkpoint(str(path), flag)
        pair = languages(state, data)
        check_dictionaries(state, path, data, *pair, flag)
        loaded.append((flag, path, pair, _shape(state), count_parameters(state["model"])))
    for _, path, pair, _, _ in loaded[1:]:
        if pair != loaded[0][2]:
            raise EvokdError(
                f"--teacher translates {'-'.join(loaded[0][2])} but --student {path} "
                f"{'-'.join(pair)}"
            )
    names = ["teacher"] if len(students) > 1 else ["teacher", "student"]
    if len(students) > 1:
        for k, (_, _, _, shape, _) in enumerate(loaded[1:]):
            name = f"student {shape}"
            names.append(name if name not in names else f"{name} #{k + 1}")
    src, tgt = loaded[0][2]
    models = [(name, path, params) for name, (_, path, _, _, params) in zip(names, loaded)]
    return src, tgt, subset_size(data, subset, src, tgt), models


def _check_settings(beams, batch_size, max_len, latency_sentences, repeat, quantizations,
                    fixed_length, profile_dir, threads):  # fmt: skip
    """Fail naming the first flag out of range; returns (beams, threads)."""
    beams = [beams] if isinstance(beams, int) else list(beams)
    if not beams:
        raise EvokdError("--beam: give at least one beam size")
    for value in beams:
        check_number(value, "--beam", 1)
    for value, flag in ((batch_size, "--batch-size"), (max_len, "--max-len")):
        check_number(value, flag, 1)
    check_number(latency_sentences, "--latency-sentences", 0)
    check_number(repeat, "--repeat", 1)
    for q, flag in quantizations:
        if q not in QUANTIZATIONS:
            raise EvokdError(f"{flag} {q}: expected one of {', '.join(QUANTIZATIONS)}")
    if profile_dir is not None and not fixed_length:
        raise EvokdError(
            "--profile: only with --fixed-length (without it fairseq runs as fairseq-generate)"
        )
    threads = available_cores() if threads is None else threads
    check_number(threads, "--threads", 1)
    return beams, threads


def _export(models, student_ct2, teacher_ct2, data, work, shortlist, use_shortlist):
    """Every CTranslate2 system, converted: (system, (name, folder, parameters, quantization,
    whether it translates with the shortlist))."""
    from evokd.deploy.export import export_ct2
    from evokd.deploy.shortlist import check_model

    exports = [(f"{m[0]} (CTranslate2 {q}", m, q) for m in models[1:] for q in student_ct2]
    exports += [(f"teacher (CTranslate2 {q}", models[0], q) for q in teacher_ct2]
    uses = {"on": (True,), "off": (False,), "both": (False, True)}[use_shortlist]
    ct2 = []
    for system, (name, path, params), q in exports:
        folder = work / f"{systems.slug(name)}-ct2-{q}"
        export_ct2(path, folder, data, q, force=True, shortlist=shortlist)
        has_one = check_model(folder)
        for lex in uses if has_one else (False,):
            label = f"{system}{', shortlist' if lex else ''})"
            ct2.append((label, (name, folder, params, q, lex)))
    return ct2


def _measure(run, models, ct2, beams, work, repeat, profile_dir, keep):
    """The rows of every beam: each system measured ``repeat`` times, in rounds (each
    system once per round, so that a change of load hits all of them alike)."""
    rows = []
    for beam in beams:
        ctx = dict(run=run, beam=beam, work=work, suffix="" if len(beams) == 1 else f".beam{beam}")
        rounds = []
        for k in range(repeat):
            profile = profile_dir if k == 0 else None
            beam_rows = systems.fairseq_rows(models=models, profile_dir=profile, **ctx)
            rounds.append(beam_rows + systems.ct2_rows(ct2=ct2, fairseq_rows=beam_rows, **ctx))
        rows += timing.compare(timing.fastest(rounds), keep)
    return rows


def _meta(run, n, beams, repeat, fixed_length, work, keep, version):
    timer = "evokd.core.inference in-process" if fixed_length else "fairseq-generate's timer"
    return {
        "data": str(run.data),
        "subset": run.subset,
        "n_sentences": n,
        "languages": f"{run.src}-{run.tgt}",
        "mode": COST_LABEL if fixed_length else "translation quality and speed",
        "fixed_length": fixed_length,
        "beam": beams[0],
        "beams": beams,
        "lenpen": 1.0,
        "batch_size": run.batch_size,
        "max_len": None if fixed_length else run.max_len,
        "batches": len(run.batches) if fixed_length else None,
        "latency_sentences": len(run.latency_ids),
        "repeat": repeat,
        "threads": run.threads,
        "device": run.device,
        "cores": available_cores(),
        "ctranslate2": version,
        "timing": (
            f"fastest of {repeat} run(s) per system and beam; throughput: decoding only "
            f"(fairseq: {timer}, CTranslate2: translate_batch); latency: one sentence per "
            "call, after one untimed call"
        ),
        "work_dir": str(work) if keep else None,
    }


def run_bench_translate(
    teacher,
    student,
    data,
    subset="test",
    *,
    beams=(5, 1),
    batch_size=64,
    max_len=200,
    threads=None,
    cpu=False,
    work_dir=None,
    fixed_length=False,
    latency_sentences=LATENCY_SENTENCES,
    student_ct2=STUDENT_CT2,
    teacher_ct2=(),
    profile_dir=None,
    repeat=1,
    shortlist=None,
    use_shortlist="on",
):
    """Translate ``subset`` of ``data`` with every system; returns ``{"meta", "rows"}``.

    ``student``: a checkpoint or a list of them (the first is the reference of BLEU
    lost). Rows, for each beam of ``beams`` in turn (the teacher in fairseq, each student
    in fairseq, each student in CTranslate2 for each of ``student_ct2``, the teacher in
    CTranslate2 for each of ``teacher_ct2``), hold: system, model, engine, checkpoint (or
    model folder), quantization, compute_type, parameters, beam, seconds,
    sentences_per_second, target_tokens(_per_second), latency_median_ms, latency_p90_ms
    (None when ``latency_sentences`` is 0), speedup and latency_speedup (over the teacher
    in fairseq at the same beam), bleu, sacrebleu, chrf, bleu_lost (the first student's
    fairseq BLEU minus this one's; all None with ``fixed_length``), same_as_fairseq
    (CTranslate2: share of hypotheses equal to the same model's in fairseq),
    same_length_as_fairseq (CTranslate2 with ``fixed_length``), model_bytes (CTranslate2)
    and hypotheses (a file in ``work_dir``; None when no ``work_dir`` is kept).
    ``work_dir`` keeps the fairseq logs, hypotheses and the CTranslate2 models; default: a
    temporary folder, removed afterwards. ``repeat``: measure every system this many
    times, in rounds (each system once per round, so that a change of load on a shared
    machine hits all of them), and keep each one's fastest round and lowest latencies.
    ``shortlist``: a :class:`evokd.deploy.shortlist.ShortlistSpec`, the shortlist built
    once and written into every CTranslate2 model; ``use_shortlist``: ``on`` (translate
    with it), ``off`` or ``both`` (a row each); every row's ``shortlist`` says whether its
    output was restricted.
    """
    from evokd.deploy.export import require_ctranslate2

    ctranslate2 = require_ctranslate2()
    students = [student] if isinstance(student, (str, os.PathLike)) else list(student)
    quantizations = [(q, "--student-ct2") for q in student_ct2]
    quantizations += [(q, "--teacher-ct2") for q in teacher_ct2]
    if use_shortlist not in ("on", "off", "both"):
        raise EvokdError(f"--shortlist {use_shortlist}: expected on, off or both")
    beams, threads = _check_settings(beams, batch_size, max_len, latency_sentences, repeat,
                                     quantizations, fixed_length, profile_dir, threads)  # fmt: skip
    src, tgt, n, models = _check_inputs(teacher, students, data, subset)
    if shortlist is not None:
        shortlist = shortlist.build(src, tgt)
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="evokd-bench-translate-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Workload(data, subset, src, tgt, batch_size=batch_size, max_len=max_len,
                   threads=threads, device=choose_device(cpu),
                   latency_sentences=latency_sentences)  # fmt: skip
    if fixed_length:
        run.fix_lengths()
    try:
        ct2 = _export(models, student_ct2, teacher_ct2, data, work, shortlist, use_shortlist)
        rows = _measure(run, models, ct2, beams, work, repeat, profile_dir, keep)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = _meta(run, n, beams, repeat, fixed_length, work, keep, ctranslate2.__version__)
    if not fixed_length:
        for name in ("bleu", "sacrebleu", "chrf"):
            meta[f"{name}_signature"] = rows[1][f"{name}_signature"]
    return {"meta": meta, "rows": rows}
