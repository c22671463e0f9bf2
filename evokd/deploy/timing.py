"""Timing and comparing the systems of ``evokd bench-translate``.

Throughput is the sum of the engine calls' own seconds over every batch; latency the
median and 90th percentile milliseconds of one-sentence calls, after one untimed call.
With several rounds each system keeps its fastest round's throughput and its lowest
latencies (:func:`fastest`); :func:`compare` then adds the speed-ups over the teacher in
fairseq and the BLEU lost against the first student in fairseq.
"""

import logging
import statistics
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE = ("hypotheses_ids", "hypotheses_tokens", "_hypotheses_tok", "_references")


def percentile(values, q):
    """The ``q``-th percentile (0-100), linear between the nearest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency(call, ids):
    """Milliseconds of ``call([i])`` for every id (one sentence per call), after one
    untimed call; returns (median, 90th percentile)."""
    call(ids[:1])
    ms = []
    for i in ids:
        start = time.perf_counter()
        call([i])
        ms.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(ms), 3), round(percentile(ms, 90), 3)


def batched(call, batches, n, profile=None):
    """Translate every ``(length, ids)`` batch with ``call``: (hypotheses of the ``n``
    sentences by id, seconds). ``profile``: under cProfile, the profile written there."""
    import cProfile

    hyps, seconds = [None] * n, 0.0
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
        write_profile(profiler, profile)
    return hyps, seconds


def write_profile(profiler, path):
    """The 30 functions with the most own time, then the most cumulative time, as text."""
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(buffer.getvalue(), encoding="utf-8")
    logger.info(f"bench-translate: profile written to {path}")


def fastest(rounds):
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


def _ratio(a, b):
    return round(a / b, 3)


def compare(rows, keep):
    """New rows: speed-ups over the teacher in fairseq (the first row), BLEU lost against
    the first student in fairseq (the second), same_length_as_fairseq for CTranslate2 with
    fixed lengths; private fields dropped, and without ``keep`` no file names."""
    base, reference = rows[0], rows[1]
    by_model = {r["model"]: r for r in rows if r["engine"] == "fairseq"}
    out = []
    for row in rows:
        new = {k: v for k, v in row.items() if k not in PRIVATE}
        new["speedup"] = _ratio(row["sentences_per_second"], base["sentences_per_second"])
        new["latency_speedup"] = None
        if row["latency_median_ms"] is not None:
            new["latency_speedup"] = _ratio(base["latency_median_ms"], row["latency_median_ms"])
        has_bleu = row["bleu"] is not None and reference["bleu"] is not None
        new["bleu_lost"] = round(reference["bleu"] - row["bleu"], 4) if has_bleu else None
        if row["engine"] == "ctranslate2":
            ids, fairseq = (
                row.get("hypotheses_tokens"),
                by_model[row["model"]].get("hypotheses_ids"),
            )
            if ids is not None and fairseq is not None:
                same = sum(len(a) == len(b) for a, b in zip(ids, fairseq))
                new["same_length_as_fairseq"] = same / len(ids)
            new.setdefault("same_as_fairseq", None)
        new.setdefault("hypotheses", None)
        new.setdefault("model_bytes", None)
        if not keep:
            new["hypotheses"] = None
            if row["engine"] == "ctranslate2":
                new["checkpoint"] = None
        out.append(new)
    return out
