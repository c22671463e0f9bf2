"""One plan run with several seeds: per stage, the mean and standard deviation of each score.

The deviation is the sample standard deviation (``statistics.stdev``, n - 1 in the
denominator), None with fewer than two values. :func:`evokd.chain.report.seeds_table`
shows the result as "mean ± std" per stage.
"""

import statistics

SCORES = ("bleu", "sacrebleu", "chrf")
KEPT = ("architecture", "parameters", "teacher", "seqkd_teacher", "init_from", "role")


def aggregate(rows_per_seed, fields=SCORES):
    """Per stage, over seeds: ``rows_per_seed`` maps a seed to its report rows (see
    :mod:`evokd.chain.report`); stages come in the order they first appear.

    Each returned row has ``stage``, ``seeds`` (those with a row for the stage),
    ``n_seeds``, the first seed's ``architecture``, ``parameters``, ``teacher``,
    ``seqkd_teacher``, ``init_from`` and ``role`` where present, and for each of
    ``fields``: ``{field}_mean``, ``{field}_std``, ``{field}_n`` (seeds with a value) and
    ``{field}_values`` (in seed order; None where a seed has no value).
    """
    stages = {}
    for seed, rows in rows_per_seed.items():
        for row in rows:
            stages.setdefault(row["stage"], []).append((seed, row))
    out = []
    for stage, entries in stages.items():
        first = entries[0][1]
        row = {"stage": stage, "seeds": [seed for seed, _ in entries], "n_seeds": len(entries)}
        row.update({key: first[key] for key in KEPT if key in first})
        for field in fields:
            values = [r.get(field) for _, r in entries]
            present = [float(v) for v in values if v is not None]
            row[f"{field}_values"] = values
            row[f"{field}_n"] = len(present)
            row[f"{field}_mean"] = statistics.mean(present) if present else None
            row[f"{field}_std"] = statistics.stdev(present) if len(present) > 1 else None
        out.append(row)
    return out
