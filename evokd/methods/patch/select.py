"""Step ``select``: rank the pool by how far the student is from the teacher; keep the worst.

Two signals per sentence (from ``translations.jsonl``): ``nll``, the student's NLL of the
teacher's translation (higher is worse), and ``chrf``, chrF of the student's translation
against the teacher's (lower is worse). Each becomes a percentile of badness in (0, 1]:
its rank among the n sentences from best (1) to worst (n), ties sharing their average
rank, divided by n. ``score`` is the NLL percentile (``--score nll``), the chrF
percentile (``chrf``) or the mean of the two (``both``, the default). The ``ceil(select *
n)`` sentences with the highest score are kept, ties broken by the lower id.
"""

import math

import numpy as np

from evokd.errors import EvokdError

from .workspace import read_jsonl, write_jsonl

SCORES = ("both", "nll", "chrf")


def badness_percentiles(values, higher_is_worse=True):
    """Average ranks of ``values`` from best (1) to worst (n), divided by n."""
    values = np.asarray(values, dtype=np.float64)
    if not higher_is_worse:
        values = -values
    n = len(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < n:  # ties share the mean of their ranks
        end = start
        while end + 1 < n and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks / n if n else ranks


def select_worst(rows, fraction, score="both"):
    """The ``ceil(fraction * n)`` rows farthest from the teacher, worst first.

    ``rows`` need ``id``, ``nll`` and ``chrf``; the returned rows are copies with
    ``score``, ``nll_percentile``, ``chrf_percentile`` and ``rank`` (1 = worst) added.
    """
    check_selection(fraction, score)
    if not rows:
        return []
    nll = badness_percentiles([r["nll"] for r in rows], higher_is_worse=True)
    chrf = badness_percentiles([r["chrf"] for r in rows], higher_is_worse=False)
    combined = {"nll": nll, "chrf": chrf, "both": (nll + chrf) / 2}[score]
    k = math.ceil(round(fraction * len(rows), 9))
    order = sorted(range(len(rows)), key=lambda i: (-combined[i], rows[i]["id"]))[:k]
    out = []
    for rank, i in enumerate(order, 1):
        row = dict(rows[i])
        row.update(
            score=round(float(combined[i]), 6),
            nll_percentile=round(float(nll[i]), 6),
            chrf_percentile=round(float(chrf[i]), 6),
            rank=rank,
        )
        out.append(row)
    return out


def check_selection(fraction, score):
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not (ok and math.isfinite(fraction) and 0 < fraction <= 1):
        raise EvokdError(f"--select {fraction}: expected a fraction in (0, 1]")
    if score not in SCORES:
        raise EvokdError(f"--score {score}: expected one of {', '.join(SCORES)}")


SELECTED_KEYS = (
    "id", "origin", "rank", "score", "nll", "chrf", "nll_percentile", "chrf_percentile",
    "source", "student", "teacher", "error_words", "source_bpe", "student_bpe", "teacher_bpe",
)  # fmt: skip


def run_select(ws, cfg):
    """Write ``selected.jsonl`` (atomically); returns counts."""
    rows = read_jsonl(ws.translations)
    selected = select_worst(rows, cfg.select, cfg.score)
    out = []
    for row in selected:
        row["origin"] = "selected"
        out.append({key: row[key] for key in SELECTED_KEYS})
    write_jsonl(ws.selected, out)
    return {
        "pool": len(rows),
        "selected": len(out),
        "with_error_words": sum(bool(r["error_words"]) for r in out),
        "error_words": sum(len(r["error_words"]) for r in out),
        "mean_nll": round(float(np.mean([r["nll"] for r in out])), 4) if out else None,
        "mean_chrf": round(float(np.mean([r["chrf"] for r in out])), 4) if out else None,
    }
