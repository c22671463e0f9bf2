"""The results of a chain of stages: ``results.json``, ``results.md`` and ``results.png``.

One row per stage, a dict with at least ``stage``, ``architecture``, ``parameters``,
``teacher`` (a stage name, a checkpoint path or None), ``init_from`` (or None), ``bleu``
(tokenized), ``sacrebleu``, ``chrf``, ``updates``, ``wall_seconds`` and the metric
signatures ``bleu_signature``, ``sacrebleu_signature``, ``chrf_signature`` (the keys of
:func:`evokd.evaluation.evaluate.evaluate`'s result). A missing value (a stage not yet evaluated) is
None or absent and shows as "-". A stage trained on a teacher's translations
(sequence-level KD) may name that teacher in ``seqkd_teacher``.

``results.md`` can also hold the paired significance tests (:func:`significance_table`,
rows of :func:`evokd.evaluation.significance.compare_stages`), the mean and deviation over seeds
(:func:`seeds_table`, rows of :func:`evokd.chain.seeds.aggregate`) and the learning curves
(``curves.png``, see :mod:`evokd.chain.curves`).
"""

import json
import shlex
import textwrap
from pathlib import Path

from evokd.chain.progress import clock
from evokd.core import plots
from evokd.data.textio import write_lines
from evokd.files import write_png

MISSING = "-"
CURVES = "curves.png"  # the learning curves, next to results.md
METRICS = (("bleu", "tokenized BLEU"), ("sacrebleu", "sacreBLEU"), ("chrf", "chrF"))
COLUMNS = (
    ("stage", "stage", "---"),
    ("parameters", "parameters", "--:"),
    ("teacher", "teacher", "---"),
    ("init_from", "init from", "---"),
    ("bleu", "tokenized BLEU", "--:"),
    ("sacrebleu", "sacreBLEU", "--:"),
    ("chrf", "chrF", "--:"),
    ("updates", "updates", "--:"),
    ("wall_seconds", "wall time", "--:"),
)


def _duration(seconds):
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _teacher(row):
    """The teacher column: the word-level teacher, and the one whose translations the
    stage learned from, marked "(seq)"."""
    word, seq = row.get("teacher"), row.get("seqkd_teacher")
    if not seq:
        return word
    if not word:
        return f"{seq} (seq)"
    return f"{word} (word+seq)" if word == seq else f"{word}, {seq} (seq)"


def _cell(key, value):
    if value is None or value == "":
        return MISSING
    if key in ("bleu", "sacrebleu", "chrf"):
        return f"{value:.2f}"
    if key in ("parameters", "updates"):
        return f"{value:,}"
    if key == "wall_seconds":
        return _duration(value)
    return str(value).replace("|", "\\|")


def _check_rows(rows):
    names = [row.get("stage") for row in rows]
    if any(not name for name in names):
        raise ValueError("every row needs a 'stage' name")
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat: {names}")


def markdown_table(rows):
    """The results as a Markdown table (one line per stage), missing values as "-"."""
    _check_rows(rows)
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "|".join(align for _, _, align in COLUMNS) + "|",
    ]
    for row in rows:
        values = {**row, "teacher": _teacher(row)}
        lines.append("| " + " | ".join(_cell(key, values.get(key)) for key, _, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _number(value, digits=2):
    return MISSING if value is None else f"{value:.{digits}f}"


def _p_value(p):
    if p is None:
        return MISSING
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


SIGNIFICANCE_NAMES = dict(METRICS)


def significance_table(rows):
    """The paired bootstrap tests as a Markdown table, one line per pair and metric.

    ``rows``: :func:`evokd.evaluation.significance.compare_stages` results. The interval is
    sacrebleu's 95% interval of the system's score (its bootstrap mean ± half-width).
    """
    lines = [
        "| system | against | metric | baseline | system | difference | 95% interval "
        "(system) | p-value |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        low, high = row.get("system_interval") or (None, None)
        interval = MISSING if low is None else f"[{low:.2f}, {high:.2f}]"
        difference = row.get("difference")
        cells = [
            _cell("stage", row.get("system_stage")),
            _cell("stage", row.get("baseline_stage")),
            SIGNIFICANCE_NAMES.get(row.get("key"), row.get("metric") or MISSING),
            _number(row.get("baseline")),
            _number(row.get("system")),
            MISSING if difference is None else f"{difference:+.2f}",
            interval,
            _p_value(row.get("p_value")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(row, key):
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return MISSING
    cell = f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"
    n = row.get(f"{key}_n")
    if n is not None and n != row.get("n_seeds"):
        cell += f" (n={n})"
    return cell


def seeds_table(rows, fields=("bleu", "sacrebleu", "chrf")):
    """Mean ± sample standard deviation over seeds, per stage, as a Markdown table.

    ``rows``: :func:`evokd.chain.seeds.aggregate` results; a score that some seeds lack shows
    how many seeds it averages, as "(n=2)".
    """
    titles = dict(METRICS)
    lines = [
        "| stage | seeds | " + " | ".join(titles.get(f, f) for f in fields) + " |",
        "|---|--:|" + "--:|" * len(fields),
    ]
    for row in rows:
        cells = [_cell("stage", row.get("stage")), _cell("seeds", row.get("n_seeds"))]
        cells += [_mean_std(row, field) for field in fields]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def signatures(rows):
    """For each metric, the distinct signatures of the rows (normally one), in row order."""
    found = {}
    for key, _ in METRICS:
        values = [row.get(f"{key}_signature") for row in rows]
        found[key] = list(dict.fromkeys(v for v in values if v))
    return found


def markdown_report(rows, title=None, command=None, significance=None, seed_rows=None, curves=None):
    """``results.md``: title, table, metric signatures and the command line; then, when
    given, the mean and deviation over seeds (``seed_rows``), the paired significance
    tests (``significance``) and the learning curves (``curves``: the image's path,
    relative to ``results.md``)."""
    lines = [f"# {title or 'evokd results'}", "", markdown_table(rows), ""]
    lines.append("Tokenized BLEU is the paper's metric (lowercased, Moses-tokenized, like")
    lines.append("multi-bleu.perl); sacreBLEU and chrF score the detokenized output against")
    lines.append("the raw references. Signatures:")
    lines.append("")
    found = signatures(rows)
    for key, name in METRICS:
        for value in found[key] or [None]:
            lines.append(f"- {name}: " + (f"`{value}`" if value else "not computed"))
    if seed_rows:
        seeds = sorted({seed for row in seed_rows for seed in row.get("seeds", ())}, key=str)
        lines += ["", f"## Over seeds ({', '.join(map(str, seeds))})", ""]
        lines += [seeds_table(seed_rows), ""]
        lines.append("Mean ± sample standard deviation (n - 1) of each stage's scores.")
    if significance:
        first = significance[0]
        lines += ["", "## Paired significance", "", significance_table(significance), ""]
        lines.append(
            f"sacrebleu's paired bootstrap resampling ({first.get('n_samples')} resamples, "
            f"seed {first.get('seed')}) on the same test sentences; the difference is system "
            "minus baseline, the interval sacrebleu's 95% interval of the system's score, "
            "and the p-value sacrebleu's: a small one means the difference is unlikely to "
            "be chance."
        )
    if curves:
        lines += ["", "## Learning curves", "", f"![validation curves]({curves})"]
    if command:
        lines += ["", f"Command: `{_command_line(command)}`"]
    return "\n".join(lines)


def _command_line(command):
    return command if isinstance(command, str) else shlex.join(map(str, command))


def _roles(rows):
    """``teacher`` for stages that teach another stage, else ``student`` when distilled
    from a teacher, else ``baseline`` (trained alone); a row's own ``role`` wins."""
    teachers = {row.get(key) for row in rows for key in ("teacher", "seqkd_teacher")}
    roles = {}
    for row in rows:
        if row.get("role"):
            roles[row["stage"]] = row["role"]
        elif row["stage"] in teachers:
            roles[row["stage"]] = "teacher"
        elif row.get("teacher") or row.get("seqkd_teacher"):
            roles[row["stage"]] = "student"
        else:
            roles[row["stage"]] = "baseline"
    return roles


STYLE = {  # role -> marker, colour, legend label
    "baseline": ("D", "black", "baseline: trained without a teacher"),
    "teacher": ("s", "tab:red", "teacher (of a later stage)"),
    "student": ("o", "tab:blue", "distilled student"),
}
EDGES = (  # row key -> line style, legend label of its arrows
    ("teacher", "-", "distilled from"),
    ("seqkd_teacher", ":", "trained on the translations of"),
    ("init_from", "--", "initialised from"),
)


def _human(n):
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def plot_title(title):
    """What ``results.png`` compares, after the run's own title."""
    what = "tokenized BLEU of each stage against its parameters"
    return f"{title}: {what}" if title else what


def _draw_points(ax, rows, points, roles):
    for role in list(STYLE) + sorted(set(roles.values()) - set(STYLE)):
        marker, colour, label = STYLE.get(role, ("P", "tab:green", role))
        stages = [s for s in points if roles[s] == role]
        if not stages:
            continue
        xs, ys = zip(*(points[s] for s in stages))
        hollow = role == "baseline"
        ax.scatter(
            xs, ys, marker=marker, s=70, label=label, zorder=3, linewidths=1.6,
            facecolors="none" if hollow else colour, edgecolors=colour,
        )  # fmt: skip
        if hollow:  # the level to beat, across the plot
            for y in ys:
                ax.axhline(y, color=colour, linewidth=0.8, linestyle=(0, (1, 3)), zorder=1)
    for key, linestyle, label in EDGES:
        pairs = [(row[key], row["stage"]) for row in rows if row.get(key) in points]
        pairs = [(source, stage) for source, stage in pairs if stage in points]
        for source, stage in pairs:
            arrow = dict(arrowstyle="->", color="0.55", linestyle=linestyle, shrinkA=6, shrinkB=6)
            ax.annotate("", xy=points[stage], xytext=points[source], arrowprops=arrow)
        if pairs:  # a legend entry for the arrows
            ax.plot([], [], color="0.55", linestyle=linestyle, label=f"arrow: {label}")


def plot(rows, path, title=None):
    """``results.png``: tokenized BLEU by stage against parameters (log scale), one marker
    and colour per role (the baseline hollow, its BLEU a dotted line across), each stage
    named beside its point where the name meets no other text; solid arrows from teacher to
    student, dotted ones from the teacher whose translations a student learned from, dashed
    ones from the stage a student started from."""
    from matplotlib.ticker import NullFormatter

    roles = _roles(rows)
    points = {
        row["stage"]: (row["parameters"], row["bleu"])
        for row in rows
        if row.get("parameters") and row.get("bleu") is not None
    }
    fig = plots.figure(7.5, 5)
    ax = fig.add_subplot()
    _draw_points(ax, rows, points, roles)
    if points:
        sizes = sorted({x for x, _ in points.values()})
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [_human(x) for x in sizes], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, borderaxespad=0)
        ax.margins(x=0.25, y=0.2)
    else:
        ax.text(0.5, 0.5, "no stage evaluated yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("parameters (log scale)" if len(points) > 1 else "parameters")
    ax.set_ylabel("tokenized BLEU")
    ax.set_title(textwrap.fill(plot_title(title), 80), fontsize=10)
    ax.grid(alpha=0.3)
    renderer = plots.freeze_layout(fig)
    plots.thin_ticks(ax.xaxis, renderer)
    plots.place_labels(ax, [(stage, xy) for stage, xy in points.items()], renderer)
    return write_png(fig, path)


def costs_markdown(costs):
    """The chain's time against its no-teacher cost, as a short Markdown section."""
    lines = ["## Cost", ""]
    lines.append(
        f"Chain: {clock(costs['chain_seconds'])} ({clock(costs['stage_seconds'])} of stage "
        f"training, {clock(costs['teacher_step_seconds'])} of teacher caches and "
        "translations)."
    )
    if costs["ratio"] is not None:
        lines.append(
            f"The same stages without teachers: {clock(costs['no_teacher_seconds'])} "
            f"(the plain stages' time per update times each stage's updates): "
            f"{costs['ratio']:.2f}x."
        )
    else:
        lines.append(
            "No no-teacher estimate for " + ", ".join(costs["not_estimated"]) + " (no plain "
            "stage of the same architecture)."
        )
    run = costs.get("wall")
    if run:
        lines.append(
            f"Wall time with --jobs {run['jobs']}: {clock(run['span_seconds'])} from the first "
            f"step's start to the last one's end, for {clock(run['busy_seconds'])} of the "
            f"{run['steps']} steps' own times"
            + (f" ({run['parallelism']:.2f} at once on average)." if run["parallelism"] else ".")
        )
    return "\n".join(lines) + "\n"


def write_report(
    results_dir, rows, title=None, command=None, significance=None, seed_rows=None, costs=None
):
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``results_dir``.

    ``command``: the command line that produced the results (a string or an argv list),
    recorded in the JSON and the Markdown. ``significance`` (rows of
    :func:`evokd.evaluation.significance.compare_stages`), ``seed_rows`` (of
    :func:`evokd.chain.seeds.aggregate`) and ``costs`` (of :func:`evokd.chain.results.costs`),
    when given, go into both too, and ``curves.png`` of
    ``results_dir`` (written by :func:`evokd.chain.curves.write_curves`), when there, into the
    Markdown. Returns the three paths by kind.
    """
    _check_rows(rows)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": results_dir / "results.json",
        "markdown": results_dir / "results.md",
        "plot": results_dir / "results.png",
    }
    record = {
        "title": title,
        "command": _command_line(command) if command else None,
        "rows": rows,
        "signatures": signatures(rows),
    }
    if significance:
        record["significance"] = significance
    if seed_rows:
        record["seeds"] = seed_rows
    if costs:
        record["costs"] = costs
    curves = CURVES if (results_dir / CURVES).is_file() else None
    write_lines(paths["json"], [json.dumps(record, indent=2, ensure_ascii=False, default=str)])
    markdown = markdown_report(rows, title, command, significance, seed_rows, curves)
    if costs:
        markdown += "\n\n" + costs_markdown(costs).rstrip("\n")
    write_lines(paths["markdown"], [markdown])
    plot(rows, paths["plot"], title)
    return paths
