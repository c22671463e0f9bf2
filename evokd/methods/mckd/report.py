"""The scores and the report of an MCKD run (:mod:`evokd.methods.mckd.relabel`):
``mckd.json`` and ``mckd.md``.

The labels of every stage are scored against the training references with sacrebleu's chrF
(default settings) and BLEU (``tokenize="none"``) on tokenized text: label and reference
token ids decoded with the target dictionary, BPE (``@@ ``) removed, compared as they are,
with no detokenization.
"""

import os

from evokd import files as steps
from evokd.core.metrics import corpus_score, metric
from evokd.data.folder import load_side
from evokd.methods.mckd import first_labels

FORMAT = "evokd-mckd/1"
HALVES = ("A", "B")
METHOD = "collaborative multi-stage relabelling (after MCKD, Zhao et al., ACL 2024)"
METRIC_NOTE = (
    "labels and training references decoded with the target dictionary, BPE '@@ ' removed, "
    "scored as tokenized text: sacrebleu's chrF (default settings) and BLEU with tokenize='none'"
)


def _stamp(path):
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def _strings(folder, data, pair, tgt):
    """The training targets of ``folder`` as tokenized text (BPE removed), in dataset order."""
    from fairseq.data import Dictionary

    vocab = Dictionary.load(str(data / f"dict.{tgt}.txt"))
    items = load_side(folder, "train", pair, tgt)
    return [vocab.string(items[j], bpe_symbol="@@ ") for j in range(len(items))]


def references(run):
    """The training targets of the pool's pairs (``run.pool``: every pair of DATA unless
    some had no first label) as tokenized text (BPE removed), in the pool's order."""
    refs = _strings(run.data, run.data, run.pair, run.tgt)
    return [refs[i] for i in run.pool]


def score_labels(run, k, ids, refs):
    """chrF and BLEU of stage ``k``'s labels (both halves, and each) against ``refs``; kept in
    ``labels/stage{k}/scores.json`` while the labels are unchanged."""
    folder, cache = run.labels(k), run.labels(k) / "scores.json"
    stamp = {h: _stamp(run.labels(k, h) / f"train.{run.pair}.{run.tgt}.bin") for h in HALVES}
    if cache.is_file() and steps.read_json(cache).get("stamp") == stamp:
        return steps.read_json(cache)
    hyps, parts, n = {}, {}, len(refs)
    merged = [None] * n
    for half in HALVES:
        hyps[half] = _strings(folder / half, run.data, run.pair, run.tgt)
        parts[half] = [refs[i] for i in ids[half]]
        for j, i in enumerate(ids[half]):
            merged[i] = hyps[half][j]
    hyps["all"], parts["all"] = merged, refs
    scores = {"stage": k, "pairs": n, "stamp": stamp}
    for part in ("all", *HALVES):
        suffix = "" if part == "all" else f"_{part}"
        for name, scorer in (("chrf", metric("chrf", lowercase=False)), ("bleu", metric("bleu"))):
            scores[name + suffix], scores[f"{name}_signature"] = corpus_score(
                scorer, hyps[part], parts[part]
            )
    steps.write_json(cache, scores)
    return scores


def report(run, ids, labels, students, trainer, final, test):
    """The content of ``mckd.json``: settings, the labels' scores, the students, the steps."""
    seconds = {s["step"]: s["seconds"] for s in run.records}
    for row in labels:
        k = row["stage"]
        del row["stamp"]
        row["folders"] = {h: str(run.labels(k, h)) for h in HALVES}
        if k == 1:
            file = run.source["kind"] == first_labels.FILE
            row["made_by"] = "labels file" if file else "teacher"
            row["seconds"] = run.records[0]["seconds"]  # the first step made them
        else:
            row["made_by"] = f"student_B{k - 1} (half A), student_A{k - 1} (half B)"
            row["seconds"] = sum(
                seconds[f"relabel half {h} with student_{o}{k - 1}"]
                for h, o in zip(HALVES, reversed(HALVES))
            )
    rows = [
        {"stage": k, "student": stage.name, "half": half, "data": stage.data,
         "pairs": len(ids[half]), "updates": record["updates"],
         "seconds": record["wall_seconds"]}
        for k, half, stage, record in students
    ]  # fmt: skip
    record = trainer.stage_record(final)
    checkpoint = trainer.layout.best_checkpoint(final.name)
    final = {
        "stage": None, "student": final.name, "half": "A+B", "data": final.data,
        "pairs": sum(map(len, ids.values())), "updates": record["updates"],
        "seconds": record["wall_seconds"], "checkpoint": str(checkpoint),
        "test": test,
    }  # fmt: skip
    return {
        "format": FORMAT,
        "method": METHOD,
        "settings": run.settings,
        "first_labels": run.source,
        "split": {"seed": run.settings["seed"], **{h: len(ids[h]) for h in HALVES}},
        "metric": METRIC_NOTE,
        "labels": labels,
        "students": rows,
        "final": final,
        "steps": run.records,
    }


def _num(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report):
    """The report as Markdown: the labels of every stage, the students, the steps."""
    lines = [
        f"# {METHOD}",
        "",
        f"First labels: {first_labels.line(report['first_labels'])}.",
        "",
        f"Labels against the training references ({report['metric']}).",
        "",
        "| labels | made by | pairs | chrF | BLEU | chrF A | chrF B | seconds |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["labels"]:
        cells = [f"stage {r['stage']}", r["made_by"], str(r["pairs"])]
        cells += [_num(r[key]) for key in ("chrf", "bleu", "chrf_A", "chrf_B")]
        lines.append("| " + " | ".join(cells + [_num(r["seconds"], 1)]) + " |")
    final, test = report["final"], report["final"]["test"] or {}
    lines += ["", "| student | pairs | updates | seconds | test BLEU | test chrF |"]
    lines += ["|---|--:|--:|--:|--:|--:|"]
    for s in report["students"] + [final]:
        scores = ["", ""] if s["stage"] else [_num(test.get("bleu")), _num(test.get("chrf"))]
        cells = [s["student"], str(s["pairs"]), str(s["updates"]), _num(s["seconds"], 1)]
        lines.append("| " + " | ".join(cells + scores) + " |")
    lines += ["", "| step | seconds | run now |", "|---|--:|---|"]
    for s in report["steps"]:
        lines.append(
            f"| {s['step']} | {_num(s['seconds'], 1)} | {'yes' if s['ran_now'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
