"""The report of `evokd bench-translate`: its result as Markdown tables (one per beam) and a
PNG (speed-up over the teacher in fairseq against BLEU lost), written beside the JSON."""

from pathlib import Path

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


def plot(result, path):
    """A PNG: speed-up over the teacher in fairseq against BLEU lost, one point per system
    and beam (fixed lengths: the speed-ups as bars, there is no BLEU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, m = result["rows"], result["meta"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = dict(zip(m["beams"], "os^vD"))
    if m["fixed_length"]:
        labels = [f"{r['system']}, beam {r['beam']}" for r in rows]
        ax.barh(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speed-up over the teacher in fairseq (sentences/s)")
        ax.set_title("Cost at fixed output lengths (no BLEU)", fontsize=10)
    else:
        for r in rows:
            ax.scatter(
                r["bleu_lost"],
                r["speedup"],
                marker=markers[r["beam"]],
                s=36,
                color="tab:red" if r["model"] == "teacher" else "tab:blue",
            )
            ax.annotate(
                f"{r['system']}, beam {r['beam']}",
                (r["bleu_lost"], r["speedup"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("BLEU lost against the first student in fairseq")
        ax.set_ylabel("speed-up over the teacher in fairseq")
        ax.set_title("Speed against quality", fontsize=10)
        ax.grid(alpha=0.3)
    fig.text(
        0.01, 0.01, f"{m['subset']} of {Path(m['data']).name}, {m['threads']} thread(s)", fontsize=6
    )
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)
    return path
