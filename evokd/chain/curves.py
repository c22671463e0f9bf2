"""Learning curves of a chain from fairseq's own training logs: ``curves.png``.

A stage's ``train.log`` is fairseq-train's output. Each validation prints one line,
``--log-format simple``::

    ... | valid | epoch 001 | valid on 'valid' subset | loss 8.1 | ... | bleu 3.2 | num_updates 100

or ``--log-format json``::

    ... | valid | {"epoch": 1, "valid_loss": "8.1", ..., "valid_num_updates": "100"}

(``bleu`` only with ``--eval-bleu``). :func:`stage_points` reads one point per validation;
:func:`chain_curves` puts the stages on one axis, the student's cumulative updates: a stage
with ``init_from`` continues its source's line, so the evolving student's path across its
teachers is one line beside direct KD's; :func:`plot_curves` draws them.
"""

import json
import logging
import re
import textwrap
from pathlib import Path

from evokd.core import plots
from evokd.files import write_png

logger = logging.getLogger(__name__)

# "| valid | {...}", or "INFO:valid:{...}" under torchrun
_JSON = re.compile(r"(\w+)\s*[|:]\s*(\{.*\})\s*$")
_SIMPLE = re.compile(r"epoch (\d+) \| valid on '([^']+)' subset \| (.*)$")
_UPDATES = re.compile(r"num_updates(?:\"\s*:\s*\"?|[ =])(\d+)")
METRICS = {"bleu": "validation BLEU", "loss": "validation loss"}


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_point(line):
    match = _JSON.search(line)
    if not match or '_num_updates"' not in match.group(2):
        return None
    tag = match.group(1)
    try:
        record = json.loads(match.group(2))
    except json.JSONDecodeError:
        return None
    if f"{tag}_num_updates" not in record or f"{tag}_loss" not in record:
        return None
    if tag in ("train", "train_inner"):
        return None
    stats = {k[len(tag) + 1 :]: v for k, v in record.items() if k.startswith(f"{tag}_")}
    return tag, record.get("epoch"), stats


def _simple_point(line):
    match = _SIMPLE.search(line)
    if not match:
        return None
    stats = {}
    for field in match.group(3).split(" | "):
        key, _, value = field.strip().partition(" ")
        stats[key] = value
    if "num_updates" not in stats or "loss" not in stats:
        return None
    return match.group(2), match.group(1), stats


def stage_points(log_path, subset=None):
    """One point per validation in a fairseq-train log (``--log-format json`` or ``simple``).

    ``subset``: the validation subset (default: the first one the log names). A log that
    holds several runs of the same stage (a resumed one) keeps, for each update count, the
    latest run's point. Returns a list in update order of dicts with keys ``num_updates``
    (int), ``epoch`` (int), ``subset``, ``loss``, ``nll_loss`` and ``bleu`` (floats; None
    when not logged, ``bleu`` without ``--eval-bleu``).
    """
    points = []
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            found = _json_point(line) or _simple_point(line)
            if not found:
                continue
            name, epoch, stats = found
            if subset is None:
                subset = name
            if name != subset:
                continue
            point = {
                "num_updates": int(float(stats["num_updates"])),
                "epoch": int(epoch) if epoch is not None else None,
                "subset": name,
                "loss": _number(stats.get("loss")),
                "nll_loss": _number(stats.get("nll_loss")),
                "bleu": _number(stats.get("bleu")),
            }
            # a resumed run repeats the validations after its checkpoint: the latest wins
            points = [p for p in points if p["num_updates"] < point["num_updates"]]
            points.append(point)
    return points


def final_updates(log_path):
    """The update count at which the log's last fairseq-train run stopped (0 if none)."""
    last = 0
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            for match in _UPDATES.finditer(line):
                last = int(match.group(1))
    return last


def _metric(points_by_stage, metric):
    if metric is not None:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
        return metric
    points = [p for stage in points_by_stage.values() for p in stage]
    return "bleu" if points and all(p["bleu"] is not None for p in points) else "loss"


def chain_curves(stages, metric=None):
    """The validation curves of a chain's stages on the student's cumulative updates.

    ``stages``: dicts with ``name``, ``log`` (the stage's ``train.log``; missing or None:
    no points) and optionally ``init_from`` (a stage name; a checkpoint file or None does
    not join), ``updates`` (where the stage stopped; default: read from the log) and
    ``carries_updates`` (true when the stage resumes its source's update count, so its
    own counts already include the source's). A stage that starts from another one's
    weights starts its x where its source stopped: x = its own num_updates plus the
    source's offset and final update count. ``metric``: ``bleu`` or ``loss``; by default
    ``bleu`` when every validation logged it, else ``loss``.

    Returns a dict: ``metric``, ``curves`` (stage -> list of ``(x, y)``, one per
    validation), ``offsets`` (stage -> the updates added to its own counts) and
    ``continues`` (stage -> the stage whose line it continues).
    """
    by_name = {stage["name"]: stage for stage in stages}
    points, finals = {}, {}
    for name, stage in by_name.items():
        log = stage.get("log")
        has_log = bool(log) and Path(log).is_file()
        points[name] = stage_points(log) if has_log else []
        finals[name] = stage.get("updates")
        if finals[name] is None:
            finals[name] = final_updates(log) if has_log else 0
    metric = _metric(points, metric)

    offsets, continues = {}, {}

    def offset(name, seen=()):
        if name in offsets:
            return offsets[name]
        if name in seen:
            raise ValueError(f"init_from: stages {' -> '.join(seen + (name,))} form a cycle")
        source = by_name[name].get("init_from")
        if source not in by_name:
            offsets[name] = 0
            return 0
        continues[name] = source
        base = offset(source, seen + (name,))
        if not by_name[name].get("carries_updates"):
            base += finals[source]
        offsets[name] = base
        return base

    curves = {}
    for name in by_name:
        shift = offset(name)
        curves[name] = [
            (p["num_updates"] + shift, p[metric]) for p in points[name] if p[metric] is not None
        ]
    return {"metric": metric, "curves": curves, "offsets": offsets, "continues": continues}


def starts_of(curves):
    """stage -> the stage whose line begins with all of this one's points (the same x and
    y), for a line that would otherwise lie hidden under a longer one: two stages with the
    same seed and batches that differ only in their budget, say."""
    found = {}
    for name, points in curves.items():
        for other, longer in curves.items():
            if other != name and points and len(longer) > len(points):
                if longer[: len(points)] == points:
                    found[name] = other
                    break
    return found


def _draw(ax, curves, names, continues, styles, starts):
    for name in names:
        points = curves[name]
        xs, ys = [x for x, _ in points], [y for _, y in points]
        source = curves.get(continues.get(name)) or []
        if source:  # join the line to where its source ended
            xs, ys = [source[-1][0]] + xs, [source[-1][1]] + ys
        colour, linestyle, marker = styles[name]
        label = f"{name}\n(= the start of {starts[name]})" if name in starts else name
        # shorter lines above longer ones, so that a line that is the start of another shows
        ax.plot(xs, ys, linestyle=linestyle, marker=marker, markersize=4, color=colour,
                label=label, linewidth=1.3, markerfacecolor="none",
                zorder=2 + 1 / (1 + len(points)))  # fmt: skip
    ax.grid(alpha=0.3)


def plot_title(title, metric):
    """What ``curves.png`` compares, after the run's own title."""
    what = f"{METRICS.get(metric, metric)} of each stage during training"
    return f"{title}: {what}" if title else what


def plot_curves(curves, path, metric="bleu", continues=None, title=None, teachers=()):
    """``curves.png``: one line per stage (``curves``: stage -> ``(x, y)`` points, as
    :func:`chain_curves` gives them), each in its own colour, line style and marker
    (:func:`evokd.core.plots.styles`); a stage in ``continues`` starts its line at the last
    point of its source's. Stages in ``teachers`` get a panel of their own on the left,
    against the updates in the stage; the others are drawn against the student's updates
    counted across the stages it started from. A line that is the start of another
    (:func:`starts_of`) is drawn above it and says so in the legend. Returns ``path``."""
    continues = continues or {}
    drawn = [name for name, points in curves.items() if points]
    starts = starts_of({name: curves[name] for name in drawn})
    styles = dict(zip(drawn, plots.styles(len(drawn))))
    taught = [name for name in drawn if name in teachers]
    students = [name for name in drawn if name not in teachers]
    fig = plots.figure(9 if taught else 7.5, 4.8)
    panels = [(taught, "updates in the stage")] if taught else []
    panels += [(students, "updates, those of the stage it started from included")]
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    if taught:
        fig.get_layout_engine().set(wspace=0.05)
    for ax, (names, xlabel) in zip(axes, panels):
        _draw(ax, curves, names, continues, styles, starts)
        ax.set_xlabel(xlabel, fontsize=9)
        if taught:
            ax.set_title("teachers" if names is taught else "students", fontsize=9)
    axes[0].set_ylabel(METRICS.get(metric, metric))
    if drawn:
        handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
        fig.legend(handles=handles, loc="outside right center", fontsize=7, title="stage")
    else:
        axes[0].text(0.5, 0.5, "no validation logged yet", ha="center", transform=axes[0].transAxes)
    fig.suptitle(textwrap.fill(plot_title(title, metric), 90), fontsize=10)
    return write_png(fig, path)


def write_curves(stages, path, metric=None, title=None):
    """:func:`chain_curves` of ``stages`` drawn into ``path`` (``curves.png``); a stage
    named as another one's ``teacher`` is drawn in the teachers' panel. Returns the curves
    dict, or None (and writes nothing) when no stage has logged a validation."""
    found = chain_curves(stages, metric)
    if not any(found["curves"].values()):
        logger.info("curves: no validation in the stages' logs, %s not written", path)
        return None
    names = {stage["name"] for stage in stages}
    teachers = {stage.get("teacher") for stage in stages} & names
    plot_curves(found["curves"], path, found["metric"], found["continues"], title, teachers)
    return found
