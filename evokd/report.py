"""The results of a chain of stages: ``results.json``, ``results.md`` and ``results.png``.

One row per stage, a dict with at least ``stage``, ``architecture``, ``parameters``,
``teacher`` (a stage name, a checkpoint path or None), ``init_from`` (or None), ``bleu``
(tokenized), ``sacrebleu``, ``chrf``, ``updates``, ``wall_seconds`` and the metric
signatures ``bleu_signature``, ``sacrebleu_signature``, ``chrf_signature`` (the keys of
:func:`evokd.evaluate.evaluate`'s result). A missing value (a stage not yet evaluated) is
None or absent and shows as "-".
"""

import json
import os
import shlex
import textwrap
from pathlib import Path

from .data.textio import write_lines

MISSING = "-"
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
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _, _ in COLUMNS) + " |")
    return "\n".join(lines)


def signatures(rows):
    """For each metric, the distinct signatures of the rows (normally one), in row order."""
    found = {}
    for key, _ in METRICS:
        values = [row.get(f"{key}_signature") for row in rows]
        found[key] = list(dict.fromkeys(v for v in values if v))
    return found


def markdown_report(rows, title=None, command=None):
    """``results.md``: title, table, metric signatures and the command line."""
    lines = [f"# {title or 'evokd results'}", "", markdown_table(rows), ""]
    lines.append("Tokenized BLEU is the paper's metric (lowercased, Moses-tokenized, like")
    lines.append("multi-bleu.perl); sacreBLEU and chrF score the detokenized output against")
    lines.append("the raw references. Signatures:")
    lines.append("")
    found = signatures(rows)
    for key, name in METRICS:
        for value in found[key] or [None]:
            lines.append(f"- {name}: " + (f"`{value}`" if value else "not computed"))
    if command:
        lines += ["", f"Command: `{_command_line(command)}`"]
    return "\n".join(lines)


def _command_line(command):
    return command if isinstance(command, str) else shlex.join(map(str, command))


def _roles(rows):
    """``teacher`` for stages that teach another stage, else ``student`` when distilled
    from a teacher, else ``baseline`` (trained alone); a row's own ``role`` wins."""
    teachers = {row.get("teacher") for row in rows}
    roles = {}
    for row in rows:
        if row.get("role"):
            roles[row["stage"]] = row["role"]
        elif row["stage"] in teachers:
            roles[row["stage"]] = "teacher"
        else:
            roles[row["stage"]] = "student" if row.get("teacher") else "baseline"
    return roles


STYLE = {  # role -> marker, colour, legend label
    "teacher": ("s", "tab:red", "teacher"),
    "student": ("o", "tab:blue", "distilled student"),
    "baseline": ("^", "tab:gray", "trained without a teacher"),
}


def _human(n):
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def plot(rows, path, title=None):
    """Tokenized BLEU by stage against model size (log scale), one marker per role; solid
    arrows from teacher to student, dashed ones from the stage a student started from."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, no display
    from matplotlib.ticker import NullFormatter

    roles = _roles(rows)
    points = {
        row["stage"]: (row["parameters"], row["bleu"])
        for row in rows
        if row.get("parameters") and row.get("bleu") is not None
    }
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for role in list(STYLE) + sorted(set(roles.values()) - set(STYLE)):
        marker, colour, label = STYLE.get(role, ("D", None, role))
        stages = [s for s in points if roles[s] == role]
        if stages:
            xs, ys = zip(*(points[s] for s in stages))
            ax.scatter(xs, ys, marker=marker, color=colour, s=60, label=label, zorder=3)
    edges = (("teacher", "-", "distilled from"), ("init_from", "--", "initialised from"))
    for key, linestyle, label in edges:
        pairs = [(row[key], row["stage"]) for row in rows if row.get(key) in points]
        for source, stage in pairs:
            if stage in points:
                arrow = dict(
                    arrowstyle="->", color="0.55", linestyle=linestyle, shrinkA=6, shrinkB=6
                )
                ax.annotate("", xy=points[stage], xytext=points[source], arrowprops=arrow)
        if pairs:  # a legend entry for the arrows
            ax.plot([], [], color="0.55", linestyle=linestyle, label=label)
    for stage, (x, y) in points.items():
        ax.annotate(stage, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=8)
    if points:
        sizes = sorted({x for x, _ in points.values()})
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [_human(x) for x in sizes], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.2, y=0.15)
    else:
        ax.text(0.5, 0.5, "no stage evaluated yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("model size (parameters)")
    ax.set_ylabel("tokenized BLEU")
    ax.set_title(textwrap.fill(title or "evokd results", 70), fontsize=10)
    ax.grid(alpha=0.3)
    partial = Path(path).with_name(Path(path).name + ".partial")
    fig.savefig(partial, format="png", dpi=120)
    os.replace(partial, path)
    return path


def write_report(results_dir, rows, title=None, command=None):
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``results_dir``.

    ``command``: the command line that produced the results (a string or an argv list),
    recorded in the JSON and the Markdown. Returns the three paths by kind.
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
    write_lines(paths["json"], [json.dumps(record, indent=2, ensure_ascii=False, default=str)])
    write_lines(paths["markdown"], [markdown_report(rows, title, command)])
    plot(rows, paths["plot"], title)
    return paths
