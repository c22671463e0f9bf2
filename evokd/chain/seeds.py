"""One plan run with several seeds: per stage, the mean and standard deviation of each score.

The deviation is the sample standard deviation (``statistics.stdev``, n - 1 in the
denominator), None with fewer than two values. :func:`evokd.chain.report.seeds_table`
shows the result as "mean ± std" per stage.
"""

import statistics

from evokd.chain.report import MISSING, SIGNIFICANCE_NAMES, _cell, _p_value

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


def compare_over_seeds(pairs, rows_per_seed, bootstrap_per_seed=None, fields=("bleu", "chrf")):
    """The plan's ``compare:`` pairs over seeds: one row per (pair, metric) with the seeds
    that scored both stages, their scores, the paired statistics of
    :func:`evokd.evaluation.seeds.across_seeds` and, per seed, the paired bootstrap's
    p-value from that seed's own report (``bootstrap_per_seed``: seed -> significance rows of
    :func:`evokd.evaluation.significance.compare_stages`; None where a seed has none).

    Row keys: ``system``, ``baseline``, ``key``, ``seeds``, ``system_scores``,
    ``baseline_scores``, ``bootstrap_p`` and those of ``across_seeds``.
    """
    from evokd.evaluation.seeds import across_seeds

    out = []
    for system, baseline in pairs:
        for field in fields:
            seeds, system_scores, baseline_scores, bootstrap = [], [], [], []
            for seed, rows in rows_per_seed.items():
                by_stage = {row["stage"]: row for row in rows}
                s = (by_stage.get(system) or {}).get(field)
                b = (by_stage.get(baseline) or {}).get(field)
                if s is None or b is None:
                    continue
                seeds.append(seed)
                system_scores.append(float(s))
                baseline_scores.append(float(b))
                bootstrap.append(
                    _bootstrap_p((bootstrap_per_seed or {}).get(seed), system, baseline, field)
                )
            if not seeds:
                continue
            row = {"system": system, "baseline": baseline, "key": field, "seeds": seeds}
            row.update(system_scores=system_scores, baseline_scores=baseline_scores)
            row["bootstrap_p"] = bootstrap
            row.update(across_seeds(system_scores, baseline_scores))
            out.append(row)
    return out


def _bootstrap_p(significance, system, baseline, key):
    for row in significance or ():
        if (row.get("system_stage"), row.get("baseline_stage"), row.get("key")) == (
            system,
            baseline,
            key,
        ):
            return row.get("p_value")
    return None


def plot_seeds(rows_per_seed, stages, path, metric="bleu", title=None):
    """``path`` (PNG): one point per seed and stage (``stages``, in that order, on the x
    axis; one marker per seed), each stage's mean marked by a bar."""
    from evokd.core import plots
    from evokd.files import write_png

    fig = plots.figure(width=max(5.0, 1.3 * len(stages) + 2), height=4.0)
    ax = fig.add_subplot()
    seeds = list(rows_per_seed)
    marks = plots.styles(len(seeds))
    for i, seed in enumerate(seeds):
        by_stage = {row["stage"]: row for row in rows_per_seed[seed]}
        xs, ys = [], []
        for x, stage in enumerate(stages):
            value = (by_stage.get(stage) or {}).get(metric)
            if value is not None:
                xs.append(x + (i - (len(seeds) - 1) / 2) * 0.08)
                ys.append(float(value))
        colour, _, marker = marks[i]
        ax.plot(xs, ys, linestyle="none", marker=marker, color=colour, label=f"seed {seed}")
    for x, stage in enumerate(stages):
        values = [
            float(row[metric])
            for rows in rows_per_seed.values()
            for row in rows
            if row["stage"] == stage and row.get(metric) is not None
        ]
        if values:
            mean = statistics.mean(values)
            ax.hlines(mean, x - 0.3, x + 0.3, color="black", linewidth=2)
            ax.annotate(f"{mean:.2f}", (x + 0.32, mean), fontsize=8, va="center")
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(stages) - 0.2)
    ax.set_ylabel({"bleu": "tokenized BLEU", "chrf": "chrF"}.get(metric, metric) + " (test)")
    ax.set_title(title or f"{metric} per seed; bars: the mean over seeds", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    write_png(fig, path)
    return path


def _interval(pair):
    return MISSING if not pair else f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def seeds_comparison_table(rows):
    """The ``compare:`` pairs over seeds as a Markdown table, one line per pair and metric.

    ``rows``: :func:`evokd.chain.seeds.compare_over_seeds` results: the per-seed
    differences (system minus baseline) with each seed's paired bootstrap p-value in
    brackets, their mean with its 95% confidence interval (t, n - 1), the paired t-test and
    the Wilcoxon signed-rank test over seeds.
    """
    lines = [
        "| system | against | metric | seeds | difference per seed (bootstrap p) | mean "
        "difference | 95% CI | t-test p | Wilcoxon p |",
        "|---|---|---|--:|---|--:|--:|--:|--:|",
    ]
    for row in rows:
        per_seed = []
        for seed, d, p in zip(row["seeds"], row["differences"], row["bootstrap_p"]):
            per_seed.append(f"{seed}: {d:+.2f}" + ("" if p is None else f" ({_p_value(p)})"))
        cells = [
            _cell("stage", row["system"]),
            _cell("stage", row["baseline"]),
            SIGNIFICANCE_NAMES.get(row["key"], row["key"]),
            str(row["n"]),
            "; ".join(per_seed),
            f"{row['mean']:+.2f}",
            _interval(row.get("ci")),
            _p_value(row.get("t_p")),
            _p_value(row.get("wilcoxon_p")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SEEDS_COMPARISON_NOTE = (
    "Each seed trains both stages with the same seed; the unit of the tests is the seed. "
    "The interval is the 95% confidence interval of the mean difference (Student's t, n - 1 "
    "degrees of freedom); the t-test is scipy's paired `ttest_rel`, the Wilcoxon test "
    "scipy's exact signed-rank test (two-sided), whose smallest p-value with n seeds is "
    "2 / 2^n (0.125 with 4, 0.0625 with 5): below 6 seeds it cannot reach 0.05. With so "
    "few seeds an interval that holds 0 means not detected, not no difference. The "
    "bootstrap p-values in brackets are each seed's own paired bootstrap on the test "
    "sentences: they measure the test set's sampling, not training variance."
)
