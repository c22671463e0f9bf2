"""The report of `evokd bench-translate`: its result as Markdown tables (one per beam) and a
PNG (speed-up over the teacher in fairseq against the BLEU below it), written beside the
JSON."""

from pathlib import Path

from evokd.core import plots
from evokd.deploy.bench_translate import COST_LABEL
from evokd.files import write_png

# The recommendation's default: the fastest student at most this many BLEU below the best
# (`evokd bench-translate --bleu-budget`).
BLEU_BUDGET = 0.5


def _number(value, digits=2):
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # no -0.00


def table(result):
    """The rows as markdown tables, one per beam, with the settings underneath; under each
    table the front and the recommended student for the meta's ``bleu_budget``
    (:data:`BLEU_BUDGET` where it has none)."""
    m = result["meta"]
    fixed = m["fixed_length"]
    lines = [f"**{COST_LABEL}**\n"] if fixed else []
    for beam in m["beams"]:
        if len(m["beams"]) > 1 or fixed:
            lines.append(f"beam {beam}{' (greedy)' if beam == 1 else ''}:\n")
        head = "| system | sentences/s | speed-up |"
        rule = "|---|---:|---:|"
        if not fixed:
            head += " BLEU | sacreBLEU | chrF | BLEU lost |"
            rule += "---:|---:|---:|---:|"
        head += " target tokens/s | latency median ms | latency p90 ms | latency speed-up |"
        rule += "---:|---:|---:|---:|"
        lines += [head, rule]
        for r in (r for r in result["rows"] if r["beam"] == beam):
            cells = [r["system"], f"{r['sentences_per_second']:.1f}", f"{r['speedup']:.1f}x"]
            if not fixed:
                cells += [_number(r[k]) for k in ("bleu", "sacrebleu", "chrf", "bleu_lost")]
            cells += [_number(r["target_tokens_per_second"], 0)]
            cells += [_number(r["latency_median_ms"], 1), _number(r["latency_p90_ms"], 1)]
            speedup = r["latency_speedup"]
            cells.append("-" if speedup is None else f"{speedup:.1f}x")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if not fixed:
            rows = [r for r in result["rows"] if r["beam"] == beam]
            budget = m.get("bleu_budget", BLEU_BUDGET)
            lines += [f"- {line}" for line in front_lines(rows, budget)] + [""]
    length = "outputs as long as the references" if fixed else f"at most {m['max_len']} tokens"
    threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
    lines.append(
        f"{m['data']} {m['subset']}, {m['n_sentences']} sentences, batches of "
        f"{m['batch_size']} sentences, {length}, latency over {m['latency_sentences']} "
        f"one-sentence calls, {threads} on {m['device']} ({m['cores']} cores). "
        "Speed-ups: over the teacher in fairseq at the same beam"
        + ("." if fixed else "; BLEU lost: against the first student in fairseq.")
    )
    return "\n".join(lines)


def front(rows):
    """The speed/quality front of ``rows`` (one beam): the systems that no other system
    matches or beats on both speed-up and BLEU while beating on one, fastest first."""

    def beaten(r):
        return any(
            o["speedup"] >= r["speedup"] and o["bleu"] >= r["bleu"]
            and (o["speedup"] > r["speedup"] or o["bleu"] > r["bleu"])
            for o in rows
        )  # fmt: skip

    return sorted((r for r in rows if not beaten(r)), key=lambda r: -r["speedup"])


def recommend(rows, max_loss=BLEU_BUDGET):
    """For one beam: the fastest student (a model other than the teacher) whose BLEU is at
    most ``max_loss`` below the best student's, with its speed-up over the teacher in
    CTranslate2 int8 when that ran, with a shortlist when the student's row used one and
    without when it did not (the same deployment for both). Returns a dict (``row``,
    ``loss``, ``best``, ``over_teacher_ct2``) or None without students."""
    students = [r for r in rows if r["model"] != "teacher" and r.get("bleu") is not None]
    if not students:
        return None
    best = max(students, key=lambda r: r["bleu"])
    near = [r for r in students if r["bleu"] >= best["bleu"] - max_loss]
    row = max(near, key=lambda r: (r["speedup"], r["bleu"]))
    teacher_ct2 = next(
        (r for r in rows if r["model"] == "teacher" and r.get("quantization") == "int8"
         and r["engine"] != "fairseq" and bool(r.get("shortlist")) == bool(row.get("shortlist"))),
        None,
    )  # fmt: skip
    over = row["speedup"] / teacher_ct2["speedup"] if teacher_ct2 else None
    return {"row": row, "loss": best["bleu"] - row["bleu"], "best": best, "over_teacher_ct2": over}


def front_lines(rows, max_loss=BLEU_BUDGET):
    """Markdown lines for one beam: the front, and the recommended student."""
    lines = ["front (no system faster and better): " + "; ".join(
        f"{r['system']} {r['speedup']:.1f}x, {r['bleu']:.2f}" for r in front(rows))]  # fmt: skip
    found = recommend(rows, max_loss)
    if found:
        r, over = found["row"], found["over_teacher_ct2"]
        lines.append(
            f"recommended (the fastest student at most {max_loss} BLEU below the best, "
            f"{found['best']['system']}): {r['system']}: {r['speedup']:.1f}x the teacher in "
            "fairseq"
            + (f", {over:.2f}x the teacher in CTranslate2 int8" if over else "")
            + (" with its shortlist" if over and r.get("shortlist") else "")
            + f", {found['loss']:.2f} BLEU below the best student"
        )
    return lines


def _engine(row):
    return "fairseq" if row["engine"] == "fairseq" else f"CTranslate2 {row['quantization']}"


def _scatter(ax, rows, colours, markers):
    """One panel: each system at (BLEU below the teacher in fairseq, speed-up); returns the
    reference (the teacher in fairseq, the first teacher row) as ``(x, y)``."""
    reference = next((r for r in rows if r["model"] == "teacher"), None)
    top = reference["bleu"] if reference else max(r["bleu"] for r in rows)
    ax.axvline(0, color="0.5", linewidth=0.8, linestyle=":", zorder=1)
    ax.axhline(1, color="0.5", linewidth=0.8, linestyle=":", zorder=1)
    for r in rows:
        colour = colours[r["model"]]
        # A shortlisted CTranslate2 model is drawn hollow, in its model's colour.
        face, rim, width = ("white", colour, 1.3) if r.get("shortlist") else (colour, "black", 0.4)
        ax.scatter(
            top - r["bleu"], r["speedup"], marker=markers[_engine(r)], facecolors=face,
            edgecolors=rim, s=46, zorder=3, linewidths=width,
        )  # fmt: skip
    edge = front(rows)
    ax.plot([top - r["bleu"] for r in edge], [r["speedup"] for r in edge], color="0.3",
            linewidth=0.9, linestyle="--", zorder=2, label="front")  # fmt: skip
    if reference is None:
        return None
    ax.scatter(0, reference["speedup"], marker="o", s=260, facecolors="none",
               edgecolors="black", linewidths=1.2, zorder=2)  # fmt: skip
    return 0, reference["speedup"]


def _legends(fig, colours, markers, shortlist=False):
    from matplotlib.lines import Line2D

    def handle(**kw):
        return Line2D([], [], linestyle="none", **{"markersize": 7, **kw})

    models = [handle(marker="o", color=c, label=m) for m, c in colours.items()]
    engines = [handle(marker=k, color="0.4", label=e) for e, k in markers.items()]
    engines.append(
        handle(
            marker="o",
            markerfacecolor="none",
            markeredgecolor="black",
            markersize=13,
            label="reference: teacher in fairseq",
        )  # fmt: skip
    )
    if shortlist:
        engines.append(handle(marker="o", markerfacecolor="white", markeredgecolor="0.4",
                              markeredgewidth=1.3, label="hollow: with a shortlist"))  # fmt: skip
    engines.append(
        Line2D([], [], color="0.3", linestyle="--", label="front: none faster and better")
    )
    fig.legend(handles=models, loc="outside right upper", fontsize=7, title="model")
    fig.legend(handles=engines, loc="outside right lower", fontsize=7, title="engine")


def plot(result, path):
    """A PNG: speed-up over the teacher in fairseq against BLEU below it, one panel per
    beam, one colour per model and one marker per engine (hollow with a shortlist); the
    teacher in fairseq is the reference of both (at 0 and 1x), ringed and named. Fixed
    lengths: the speed-ups as bars (there is no BLEU)."""
    rows, m = result["rows"], result["meta"]
    data = f"{m['subset']} of {Path(m['data']).name}, {m['threads']} thread(s)"
    if m["fixed_length"]:
        fig = plots.figure(7, 4.5)
        ax = fig.add_subplot()
        labels = [f"{r['system']}, beam {r['beam']}" for r in rows]
        ax.barh(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speed-up over the teacher in fairseq (sentences/s)")
        ax.set_title(f"Speed at fixed output lengths (no BLEU), {data}", fontsize=10)
        return write_png(fig, path)
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {name: colour for name, (colour, _, _) in zip(models, plots.styles(len(models)))}
    engines = list(dict.fromkeys(_engine(r) for r in rows))
    markers = dict(zip(engines, "sD^vP<X>p"))
    beams = m["beams"]
    fig = plots.figure(4 + 3.2 * len(beams), 4.6)
    axes = fig.subplots(1, len(beams), sharey=True, squeeze=False)[0]
    references = []
    for ax, beam in zip(axes, beams):
        references.append(_scatter(ax, [r for r in rows if r["beam"] == beam], colours, markers))
        ax.set_title(f"beam {beam}" + (" (greedy)" if beam == 1 else ""), fontsize=9)
        ax.set_xlabel("BLEU below the teacher in fairseq", fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    axes[0].set_ylabel("speed-up over the teacher in fairseq (sentences/s)", fontsize=9)
    _legends(fig, colours, markers, shortlist=any(r.get("shortlist") for r in rows))
    fig.suptitle(f"Speed against quality: each system against the teacher in fairseq, {data}",
                 fontsize=10)  # fmt: skip
    renderer = plots.freeze_layout(fig)
    for ax, reference in zip(axes, references):
        if reference is not None:
            plots.place_labels(ax, [("reference", reference)], renderer, point_radius=9)
    return write_png(fig, path)
