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
  call of :func:`translate_fairseq` (in-process, :mod:`evokd.core.inference`) or
  :func:`translate_ct2`, after one untimed call;
- quality: tokenized BLEU, sacreBLEU and chrF as :mod:`evokd.evaluation.evaluate` computes them,
  and BLEU lost against the first student in fairseq at the same beam.

Two modes:

- by default, decoding stops at the end of sentence (or after ``max_len`` tokens). The
  fairseq throughput is fairseq-generate's (:func:`evokd.evaluation.evaluate.evaluate_checkpoint`,
  its own decoding timer: model loading and data reading excluded); CTranslate2's is
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
  ``MKL_NUM_THREADS``; in-process fairseq: ``torch.set_num_threads``; CTranslate2:
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

import contextlib
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "int8")  # the CTranslate2 variants of the students by default
LATENCY_SENTENCES = 100
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# fairseq-generate: "Translated 30 sentences (412 tokens) in 0.3s (...)"; tokens include EOS
_TOKENS = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\)")
COST_LABEL = "cost measurement: every output forced to its reference's length, no BLEU"


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


@contextlib.contextmanager
def torch_threads(threads):
    """``torch.set_num_threads(threads)`` for in-process fairseq, then restore."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


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


def reference_lengths(data, subset, src, tgt):
    """Target length of every pair of a binarized subset, in BPE pieces (no end of
    sentence), at least 1."""
    from fairseq.data import data_utils

    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = Path(data) / f"{subset}.{pair}.{tgt}"
        if Path(f"{prefix}.idx").is_file():
            dataset = data_utils.load_indexed_dataset(str(prefix), None)
            sizes = dataset.sizes.tolist()  # a view of the memory map: copied while it is open
            return [max(1, n - 1) for n in sizes]
    raise EvokdError(
        f"--fixed-length needs the references: {data} has no {subset}.{src}-{tgt}.{tgt}.idx"
    )


def fixed_length_batches(lengths, source_lengths, batch_size):
    """Sentence ids grouped by reference length, longest source first inside a length,
    cut into batches of at most ``batch_size``: a list of (length, ids)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], -source_lengths[i], i))
    batches = []
    for i in order:
        if batches and batches[-1][0] == lengths[i] and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(i)
        else:
            batches.append((lengths[i], [i]))
    return batches


# --- the engines -------------------------------------------------------------------------------


def fairseq_translator(checkpoint, data, subset, beam, device, flag="--student"):
    """A :class:`evokd.core.inference.Translator` of ``checkpoint`` over ``subset``, decoding
    like fairseq-generate ``--beam beam --lenpen 1 --max-len-a 0 --min-len 1``; the
    length limits are set per call by :func:`translate_fairseq`."""
    import torch

    from evokd.core.inference import Translator

    decoding = {"beam": beam, "lenpen": 1.0, "max_len_a": 0, "min_len": 1}
    return Translator(str(checkpoint), str(data), subset, decoding, torch.device(device), flag)


def translate_fairseq(translator, ids, *, max_len, min_len=1):
    """The best hypotheses of sentences ``ids`` of the translator's subset, one batch.

    Returns (token-id lists without the end of sentence, in the order of ``ids``,
    seconds of :func:`evokd.core.inference.translate`). Outputs have ``min_len`` to ``max_len``
    tokens: fairseq's generator bans the end of sentence before ``min_len`` and forces it
    at ``max_len_a * source length + max_len_b`` (``max_len_a`` is 0).
    """
    import torch

    from evokd.core.inference import translate

    translator.generator.min_len, translator.generator.max_len_b = min_len, max_len
    start = time.perf_counter()
    with torch.inference_mode():
        by_id = {h.id: h.body.tolist() for h in translate(translator, [ids])}
    seconds = time.perf_counter() - start
    return [by_id[int(i)] for i in ids], seconds


def load_ct2(model_dir, threads, device="cpu"):
    import ctranslate2

    return ctranslate2.Translator(
        str(model_dir), device=device, inter_threads=1, intra_threads=threads
    )


def translate_ct2(translator, source, *, beam, batch_size, max_len, min_len=1):
    """Translate token lists with a CTranslate2 translator.

    Returns (hypothesis token lists, seconds of ``translate_batch``). Outputs have
    ``min_len`` to ``max_len`` tokens, the end of sentence not counted.
    """
    start = time.perf_counter()
    results = translator.translate_batch(
        source,
        beam_size=beam,
        length_penalty=1.0,
        max_batch_size=batch_size,
        batch_type="examples",
        max_decoding_length=max_len,
        min_decoding_length=min_len,
    )
    return [r.hypotheses[0] for r in results], time.perf_counter() - start


# --- the systems -------------------------------------------------------------------------------


def _shape(state):
    from evokd.core.checkpoint import model_config

    cfg = model_config(state)
    return f"{cfg.encoder_layers}+{cfg.decoder_layers} ({cfg.encoder_embed_dim})"


def _check_inputs(teacher, students, data, subset):
    """Every checkpoint loads and fits the data; returns (src, tgt, n, models).

    ``models``: (role name, checkpoint, parameters), the teacher first.
    """
    from evokd.core.checkpoint import load_checkpoint
    from evokd.evaluation.evaluate import (
        check_dictionaries,
        count_parameters,
        languages,
        subset_size,
    )

    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected a fairseq data-bin folder)")
    if not students:
        raise EvokdError("--student: give at least one student checkpoint")
    loaded = []
    for path, flag in [(teacher, "--teacher")] + [(s, "--student") for s in students]:
        state = load_checkpoint(str(path), flag)
        pair = languages(state, data)
        check_dictionaries(state, data, *pair)
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


def _device(cpu):
    import ctranslate2
    import torch

    cuda = torch.cuda.is_available() and ctranslate2.get_cuda_device_count() > 0
    return "cuda" if cuda and not cpu else "cpu"


def _slug(name):
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def _percentile(values, q):
    """The ``q``-th percentile (0-100), linear between the nearest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _latency(call, ids):
    """Milliseconds of ``call([i])`` for every id (one sentence per call), after one
    untimed call; returns (median, 90th percentile)."""
    call(ids[:1])
    ms = []
    for i in ids:
        start = time.perf_counter()
        call([i])
        ms.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(ms), 3), round(_percentile(ms, 90), 3)


class _Run:
    """The settings of one bench-translate run, and the systems' translation calls."""

    def __init__(self, data, subset, src, tgt, *, batch_size, max_len, threads, device,
                 latency_sentences=0):  # fmt: skip
        self.data, self.subset, self.src, self.tgt = data, subset, src, tgt
        self.batch_size, self.max_len = batch_size, max_len
        self.threads, self.device = threads, device
        self.source = source_tokens(data, subset, src, tgt)
        self.latency_ids = list(range(min(latency_sentences, len(self.source))))
        self.lengths = None  # reference lengths, with fixed_length
        self.batches = None  # with fixed_length: (length, ids), the same for every system

    def fix_lengths(self):
        self.lengths = reference_lengths(self.data, self.subset, self.src, self.tgt)
        sources = [len(s) for s in self.source]
        self.batches = fixed_length_batches(self.lengths, sources, self.batch_size)

    def limits(self, ids):
        """(min_len, max_len) for a batch of sentences."""
        if self.lengths is None:
            return 1, self.max_len
        (length,) = {self.lengths[i] for i in ids}
        return length, length

    def fairseq_call(self, translator):
        def call(ids):
            low, high = self.limits(ids)
            return translate_fairseq(translator, ids, max_len=high, min_len=low)

        return call

    def ct2_call(self, translator, beam):
        def call(ids):
            low, high = self.limits(ids)
            source = [self.source[i] for i in ids]
            return translate_ct2(translator, source, beam=beam, batch_size=self.batch_size,
                                 max_len=high, min_len=low)  # fmt: skip

        return call

    def latency(self, call):
        return _latency(call, self.latency_ids) if self.latency_ids else None

    def batched(self, call, batches, profile=None):
        """Translate every batch with ``call``: (hypotheses by id, seconds).
        ``profile``: under cProfile, the profile written there."""
        import cProfile

        hyps, seconds = [None] * len(self.source), 0.0
        profiler = cProfile.Profile() if profile else None
        for _, ids in batches:
            if profiler:
                profiler.enable()
            out, spent = call(ids)
            if profiler:
                profiler.disable()
            seconds += spent
            for i, tokens in zip(ids, out):
                hyps[i] = tokens
        if profiler:
            _write_profile(profiler, profile)
        return hyps, seconds


def _write_profile(profiler, path):
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(buffer.getvalue(), encoding="utf-8")
    logger.info(f"bench-translate: profile written to {path}")


def _row(system, engine, model, beam, hyps, seconds, latency):
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
    student_ct2=QUANTIZATIONS,
    teacher_ct2=(),
    profile_dir=None,
    repeat=1,
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
    """
    from evokd.deploy.export import QUANTIZATIONS as ALL
    from evokd.deploy.export import export_ct2, require_ctranslate2
    from evokd.errors import check_number

    ctranslate2 = require_ctranslate2()
    students = [student] if isinstance(student, (str, os.PathLike)) else list(student)
    beams = [beams] if isinstance(beams, int) else list(beams)
    if not beams:
        raise EvokdError("--beam: give at least one beam size")
    for value in beams:
        check_number(value, "--beam", 1)
    for value, flag in ((batch_size, "--batch-size"), (max_len, "--max-len")):
        check_number(value, flag, 1)
    check_number(latency_sentences, "--latency-sentences", 0)
    check_number(repeat, "--repeat", 1)
    quantizations = [(q, "--student-ct2") for q in student_ct2]
    for q, flag in quantizations + [(q, "--teacher-ct2") for q in teacher_ct2]:
        if q not in ALL:
            raise EvokdError(f"{flag} {q}: expected one of {', '.join(ALL)}")
    if profile_dir is not None and not fixed_length:
        raise EvokdError(
            "--profile: only with --fixed-length (without it fairseq runs as fairseq-generate)"
        )
    threads = available_cores() if threads is None else threads
    check_number(threads, "--threads", 1)
    src, tgt, n, models = _check_inputs(teacher, students, data, subset)
    device = _device(cpu)
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="evokd-bench-translate-"))
    work.mkdir(parents=True, exist_ok=True)
    run = _Run(data, subset, src, tgt, batch_size=batch_size, max_len=max_len,
               threads=threads, device=device,
               latency_sentences=latency_sentences)  # fmt: skip
    if fixed_length:
        run.fix_lengths()
    try:
        # (system, (name, CTranslate2 folder, parameters, quantization)), converted first
        exports = [(f"{m[0]} (CTranslate2 {q})", m, q) for m in models[1:] for q in student_ct2]
        exports += [(f"teacher (CTranslate2 {q})", models[0], q) for q in teacher_ct2]
        ct2 = []
        for system, (name, path, params), q in exports:
            folder = work / f"{_slug(name)}-ct2-{q}"
            export_ct2(path, folder, data, q, force=True)
            ct2.append((system, (name, folder, params, q)))
        rows = []
        for beam in beams:
            suffix = "" if len(beams) == 1 else f".beam{beam}"
            ctx = dict(run=run, beam=beam, work=work, suffix=suffix)
            rounds = []
            for k in range(repeat):  # every system once per round: the load hits them alike
                profile = profile_dir if k == 0 else None
                beam_rows = _fairseq_rows(models=models, profile_dir=profile, **ctx)
                rounds.append(beam_rows + _ct2_rows(ct2=ct2, fairseq_rows=beam_rows, **ctx))
            beam_rows = _fastest(rounds)
            _compare(beam_rows, keep)
            rows += beam_rows
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "data": str(data),
        "subset": subset,
        "n_sentences": n,
        "languages": f"{src}-{tgt}",
        "mode": COST_LABEL if fixed_length else "translation quality and speed",
        "fixed_length": fixed_length,
        "beam": beams[0],
        "beams": beams,
        "lenpen": 1.0,
        "batch_size": batch_size,
        "max_len": None if fixed_length else max_len,
        "batches": len(run.batches) if fixed_length else None,
        "latency_sentences": len(run.latency_ids),
        "repeat": repeat,
        "threads": threads,
        "device": device,
        "cores": available_cores(),
        "ctranslate2": ctranslate2.__version__,
        "timing": (
            f"fastest of {repeat} run(s) per system and beam; throughput: decoding only "
            + ("(fairseq: evokd.core.inference in-process" if fixed_length else "(fairseq: ")
            + ("" if fixed_length else "fairseq-generate's timer")
            + ", CTranslate2: translate_batch); latency: one sentence per call, after one "
            "untimed call"
        ),
        "work_dir": str(work) if keep else None,
    }
    if not fixed_length:
        for name in ("bleu", "sacrebleu", "chrf"):
            meta[f"{name}_signature"] = rows[1][f"{name}_signature"]
    return {"meta": meta, "rows": rows}


def _fairseq_rows(run, models, beam, work, suffix, profile_dir):
    """The teacher and the students in fairseq at one beam size."""
    rows = []
    for name, path, params in models:
        system = f"{name} (fairseq)"
        logger.info(f"bench-translate: {system}, beam {beam}, {run.threads} threads")
        stem = work / f"{_slug(name)}{suffix}"
        translator, latency = None, None
        if run.lengths is not None or run.latency_ids:
            flag = "--teacher" if name == "teacher" else "--student"
            translator = fairseq_translator(path, run.data, run.subset, beam, run.device, flag)
        with torch_threads(run.threads):
            if translator is not None:
                latency = run.latency(run.fairseq_call(translator))
            if run.lengths is not None:
                profile = Path(profile_dir) / f"{stem.name}.txt" if profile_dir else None
                hyps, seconds = run.batched(run.fairseq_call(translator), run.batches, profile)
                row = _row(system, "fairseq", (name, path, params, "float32"), beam, hyps,
                           seconds, latency)  # fmt: skip
                rows.append({**row, "hypotheses_ids": hyps})
                continue
        rows.append(_fairseq_generate_row(run, system, (name, path, params), beam, stem, latency))
    return rows


def _fairseq_generate_row(run, system, model, beam, stem, latency):
    """A fairseq row from fairseq-generate, scored."""
    from evokd.evaluation.evaluate import evaluate_checkpoint

    name, path, params = model
    with thread_environment(run.threads):
        result = evaluate_checkpoint(
            path, run.data, run.subset, beam=beam, batch_size=run.batch_size,
            max_len_a=0.0, max_len_b=run.max_len, cpu=run.device == "cpu", out=f"{stem}.json",
        )  # fmt: skip
    with open(result["log"], encoding="utf-8", errors="replace") as log:
        found = _TOKENS.findall(log.read())
    result["_tokens"], n = (found[-1] if found else None), result["n_sentences"]
    seconds = n / result["sentences_per_second"]  # fairseq prints seconds to 0.1 s only
    row = _row(system, "fairseq", (name, path, params, "float32"), beam, [], seconds, latency)
    row.update(seconds=result["seconds"], sentences_per_second=result["sentences_per_second"])
    row["target_tokens"] = row["target_tokens_per_second"] = None
    if result["_tokens"]:  # fairseq counts the end of sentence of every hypothesis
        sentences, tokens = (int(x.replace(",", "")) for x in result["_tokens"])
        row["target_tokens"] = tokens - sentences
        row["target_tokens_per_second"] = round((tokens - sentences) / seconds, 1)
    for key in ("bleu", "sacrebleu", "chrf"):
        row[key], row[f"{key}_signature"] = result.get(key), result.get(f"{key}_signature")
    row["hypotheses"] = result["hypotheses"]
    row["_hypotheses_tok"], row["_references"] = result["hypotheses_tok"], result["references"]
    return row


def _ct2_rows(run, beam, work, suffix, ct2, fairseq_rows):
    """Every CTranslate2 system at one beam size, scored like the fairseq rows."""
    from evokd.data import remove_bpe

    rows = []
    by_model = {r["model"]: r for r in fairseq_rows}
    for system, (name, folder, params, q) in ct2:
        logger.info(f"bench-translate: {system}, beam {beam} on {run.device}")
        translator = load_ct2(folder, run.threads, run.device)
        call = run.ct2_call(translator, beam)
        latency = run.latency(call)
        if run.lengths is not None:
            hyps, seconds = run.batched(call, run.batches)
        else:
            hyps, seconds = translate_ct2(
                translator, run.source, beam=beam, batch_size=run.batch_size, max_len=run.max_len
            )
        row = _row(system, "ctranslate2", (name, folder, params, q), beam, hyps, seconds, latency)
        row.update(compute_type=translator.compute_type, model_bytes=_model_bytes(folder))
        if run.lengths is not None:
            row["hypotheses_tokens"] = hyps
        else:
            lines = [remove_bpe(" ".join(h)) for h in hyps]
            path = work / f"{folder.name}{suffix}.hyp.{run.tgt}"
            _score_ct2(row, lines, by_model[name], run, path)
        rows.append(row)
    return rows


def _model_bytes(folder):
    from evokd.deploy.export import model_size

    return model_size(folder)


def _score_ct2(row, lines, reference, run, path):
    """Scores of CTranslate2 hypotheses, as :func:`evokd.evaluation.evaluate.evaluate_checkpoint`
    scores them, and their agreement with the same model in fairseq."""
    from evokd.evaluation.evaluate import detokenize, score

    fairseq_hyps = _read_lines(reference["_hypotheses_tok"])
    refs_tok = _read_lines(reference["_references"])  # the file fairseq's BLEU used
    raw = _raw_references(run.data, run.subset, run.tgt)
    detok = detokenize(lines, run.tgt)
    scores = score(lines, refs_tok, detok, _read_lines(raw) if raw else None)
    path.write_text("".join(line + "\n" for line in detok), encoding="utf-8")
    row.update(bleu=scores["bleu"], sacrebleu=scores.get("sacrebleu"), chrf=scores.get("chrf"))
    row["same_as_fairseq"] = sum(a == b for a, b in zip(lines, fairseq_hyps)) / len(lines)
    if reference["model"] != "teacher":
        row["same_as_fairseq_student"] = row["same_as_fairseq"]
    row["hypotheses"] = str(path)


def _fastest(rounds):
    """Each system's row of its fastest round (throughput), with the lowest median and
    90th-percentile latency of any round."""
    rows = []
    for same in zip(*rounds):
        row = dict(max(same, key=lambda r: r["sentences_per_second"]))
        for key in ("latency_median_ms", "latency_p90_ms"):
            values = [r[key] for r in same if r[key] is not None]
            row[key] = min(values) if values else None
        rows.append(row)
    return rows


def _compare(rows, keep):
    """Speed-ups over the teacher in fairseq, BLEU lost against the first student in
    fairseq (same beam); private fields dropped."""
    base, reference = rows[0], rows[1]
    by_model = {r["model"]: r for r in rows if r["engine"] == "fairseq"}
    for row in rows:
        row["speedup"] = round(row["sentences_per_second"] / base["sentences_per_second"], 3)
        if row["latency_median_ms"] is not None:
            row["latency_speedup"] = round(base["latency_median_ms"] / row["latency_median_ms"], 3)
        else:
            row["latency_speedup"] = None
        has_bleu = row["bleu"] is not None and reference["bleu"] is not None
        row["bleu_lost"] = round(reference["bleu"] - row["bleu"], 4) if has_bleu else None
        if row["engine"] == "ctranslate2":
            ids = row.pop("hypotheses_tokens", None)
            fairseq = by_model[row["model"]].get("hypotheses_ids")
            if ids is not None and fairseq is not None:
                row["same_length_as_fairseq"] = sum(
                    len(a) == len(b) for a, b in zip(ids, fairseq)
                ) / len(ids)
            row.setdefault("same_as_fairseq", None)
    for row in rows:
        for key in ("hypotheses_ids", "_hypotheses_tok", "_references"):
            row.pop(key, None)
        row.setdefault("hypotheses", None)
        row.setdefault("model_bytes", None)
        if not keep:
            row["hypotheses"] = None
            if row["engine"] == "ctranslate2":
                row["checkpoint"] = None


def _read_lines(path):
    from evokd.data.textio import read_lines

    return list(read_lines(path))


def _raw_references(data, subset, tgt):
    from evokd.data import text_path

    try:
        path = text_path(data, subset, tgt, "raw")
    except ValueError:
        return None
    return path if path.is_file() else None
