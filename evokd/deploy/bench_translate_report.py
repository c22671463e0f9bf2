"""The report of `evokd bench-translate`: its result as Markdown tables (one per beam) and a
PNG (speed-up over the teacher in fairseq against the BLEU below it), written beside the
JSON."""

from pathlib import Path

from evokd.core import plots
from evokd.deploy.bench_translate import COST_LABEL
from evokd.files import write_png


def _number(value, digits=2):
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # no -0.00


def table(result):
    """The rows as markdown tables, one per beam, with the settings underneath."""
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
        ax.scatter(
            top - r["bleu"], r["speedup"], marker=markers[_engine(r)], color=colours[r["model"]],
            s=46, zorder=3, edgecolors="black", linewidths=0.4,
        )  # fmt: skip
    if reference is None:
        return None
    ax.scatter(0, reference["speedup"], marker="o", s=260, facecolors="none",
               edgecolors="black", linewidths=1.2, zorder=2)  # fmt: skip
    return 0, reference["speedup"]


def _legends(fig, colours, markers):
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
    fig.legend(handles=models, loc="outside right upper", fontsize=7, title="model")
    fig.legend(handles=engines, loc="outside right lower", fontsize=7, title="engine")


def plot(result, path):
    """A PNG: speed-up over the teacher in fairseq against BLEU below it, one panel per
    beam, one colour per model and one marker per engine; the teacher in fairseq is the
    reference of both (at 0 and 1x), ringed and named. Fixed lengths: the speed-ups as bars
    (there is no BLEU)."""
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
    _legends(fig, colours, markers)
    fig.suptitle(f"Speed against quality: each system against the teacher in fairseq, {data}",
                 fontsize=10)  # fmt: skip
    renderer = plots.freeze_layout(fig)
    for ax, reference in zip(axes, references):
        if reference is not None:
            plots.place_labels(ax, [("reference", reference)], renderer, point_radius=9)
    return write_png(fig, path)
