"""Collaborative multi-stage relabelling, after MCKD (Zhao et al., "Multistage Collaborative
Knowledge Distillation from a Large Language Model for Semi-Supervised Sequence
Generation", ACL 2024), with a fairseq teacher and fairseq students.

The teacher's translations of the training source are the first pseudo-labels. The pool is
split in two halves by a seeded permutation of the example ids. At every stage k two fresh
students are trained from scratch, A_k on half A's labels and B_k on half B's, and each
relabels the half it has not seen: B_k translates A's sources, A_k translates B's. Those
translations are the labels of stage k + 1. After K stages a final student trains on both
halves with their last labels. Every student is a chain stage (stock fairseq-train,
``checkpoint_best.pt`` chosen on the real validation set); every relabelling is
:func:`evokd.distill_data.distill_data`. Each step's output appears complete or not at all,
and a rerun skips the finished ones::

    DIR/mckd_settings.json          the settings DIR was made with; a rerun must match them
    DIR/labels/teacher/             distill_data(teacher, DATA): the n pairs, teacher labels
    DIR/split.json                  seed, n, and the ids of half A and of half B, in order
    DIR/labels/stage1/{A,B}/        one binarized folder per half: train = the half's sources
                                    and labels; valid/test and dictionaries copied from DATA;
                                    mckd_ids.txt: line j holds the original id of pair j
    DIR/labels/stage{k+1}/A/        distill_data(B_k, labels/stage{k}/A): B_k's labels of A
    DIR/labels/stage{k+1}/B/        distill_data(A_k, labels/stage{k}/B): A_k's labels of B
    DIR/labels/stage{k}/scores.json those labels scored against the training references
    DIR/labels/final/               all n pairs in their original order, the last labels
    DIR/checkpoints/mckd/STAGE/     student_A1, student_B1, ..., final_student
    DIR/results/mckd/stages/        the final student's test scores (fairseq-generate)
    DIR/mckd.json, DIR/mckd.md      the report

The labels are scored with sacrebleu's chrF (default settings) and BLEU (``tokenize="none"``)
on tokenized text: label and reference token ids decoded with the target dictionary, BPE
(``@@ ``) removed, compared as they are, with no detokenization.
"""

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from evokd.chain import Chain, Devices
from evokd.checkpoint import check_exists, load_checkpoint
from evokd.distill_data import META as DISTILLED
from evokd.distill_data import distill_data, write_dataset
from evokd.errors import EvokdError
from evokd.plan import Plan, Stage
from evokd.teacher_cache import data_fingerprint, file_digest

logger = logging.getLogger(__name__)

FORMAT = "evokd-mckd/1"
SETTINGS = "mckd_settings.json"
IDS = "mckd_ids.txt"  # in every half folder: the original id of each of its pairs
MERGED = "merge.json"
RUN = "mckd"  # the chain run: DIR/checkpoints/mckd/STAGE
HALVES = ("A", "B")
METHOD = "collaborative multi-stage relabelling (after MCKD, Zhao et al., ACL 2024)"
METRIC_NOTE = (
    "labels and training references decoded with the target dictionary, BPE '@@ ' removed, "
    "scored as tokenized text: sacrebleu CHRF() and BLEU(tokenize='none')"
)


def split_ids(n, seed):
    """Half A: the first ceil(n / 2) ids of a seeded permutation of range(n); B: the rest."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    cut = math.ceil(n / 2)
    return order[:cut], order[cut:]


def _write_json(path, value):
    tmp = Path(f"{path}.partial")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _stamp(path):
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def _whole(value, flag, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EvokdError(f"{flag} {value!r}: expected a whole number >= {minimum}")


def _languages(teacher, data):
    """(src, tgt, pair): the teacher's languages and the file-name pair of DATA's train."""
    task = load_checkpoint(str(teacher), "--teacher")["cfg"]["task"]
    src, tgt = getattr(task, "source_lang", None), getattr(task, "target_lang", None)
    if src is None or tgt is None:
        from fairseq.data.data_utils import infer_language_pair

        src, tgt = infer_language_pair(str(data))
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        if (Path(data) / f"train.{pair}.{src}.idx").is_file():
            return src, tgt, pair
    raise EvokdError(
        f"--data {data}: no train.{src}-{tgt}.{src}.idx (expected fairseq binarized data "
        "whose train subset is the source pool)"
    )


def _load(folder, pair, lang):
    from fairseq.data import data_utils

    return data_utils.load_indexed_dataset(str(Path(folder) / f"train.{pair}.{lang}"), None)


class Relabelling:
    """One MCKD run in ``out``: its folders, its steps and its report (see the module doc)."""

    def __init__(self, out, settings, devices, extra_args=()):
        self.out = Path(os.path.abspath(out))  # the chain records its stages' data by path
        self.settings, self.devices, self.extra_args = settings, devices, list(extra_args)
        self.teacher, self.data = settings["teacher"], Path(settings["data"])
        self.src, self.tgt, self.pair = (
            settings[k] for k in ("source_lang", "target_lang", "pair")
        )
        self.steps = []

    # --- where things are --------------------------------------------------------------

    def labels(self, k, half=None):
        folder = self.out / "labels" / (f"stage{k}" if isinstance(k, int) else k)
        return folder / half if half else folder

    def student(self, name, data):
        s = self.settings
        flags = {"seed": s["seed"]}
        return Stage(name, s["arch"], max_epoch=s["max_epoch"], flags=flags, data=str(data))

    def chain(self, stages):
        plan = Plan(
            name=RUN,
            data=str(self.data),
            stages=stages,
            train=dict(self.settings["train_flags"]),
            evaluate=dict(self.settings["evaluate"]),
        )
        return Chain(
            plan,
            run_name=RUN,
            checkpoints=self.out / "checkpoints",
            results=self.out / "results",
            devices=self.devices,
            extra_args=self.extra_args,
        )

    # --- the steps ---------------------------------------------------------------------

    def _step(self, name, output, done, work, seconds):
        """Run ``work()`` unless ``done()``; record the step and its (recorded) wall time."""
        ran = not done()
        if ran:
            logger.info("mckd: %s -> %s", name, output)
            work()
        else:
            logger.info("mckd: %s: finished earlier, skipped", name)
        self.steps.append(
            {"step": name, "output": str(output), "seconds": seconds(), "ran_now": ran}
        )

    def relabel(self, name, model, data, out):
        meta = Path(out) / DISTILLED
        s = self.settings

        def work():
            distill_data(
                str(model), str(data), str(out), beam=s["beam"], max_len_a=s["max_len_a"],
                max_len_b=s["max_len_b"], max_tokens=s["max_tokens"],
                cpu=not self.devices.cuda, processes=self.devices.procs if self.devices.cuda else 1,
            )  # fmt: skip

        self._step(name, out, meta.is_file, work, lambda: _read_json(meta)["wall_seconds"])

    def train(self, stages):
        """Train ``stages`` as chain stages (a finished one is skipped); returns the chain."""
        chain = self.chain(stages)
        for stage in stages:
            self._step(
                f"train {stage.name}",
                chain.stage_dir(stage),
                lambda stage=stage: chain.is_finished(stage),
                lambda stage=stage: chain.run(only=[stage.name], evaluate=False),
                lambda stage=stage: chain.record(stage)["wall_seconds"],
            )
        return chain

    def write_folder(self, dest, sources, targets, extra):
        """``dest``: DATA's files (dictionaries, valid, test, ...) with a new train subset."""
        from fairseq.data import Dictionary

        partial = Path(f"{dest}.partial")
        if partial.exists():  # an interrupted write: cheap to redo
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        langs = (self.src, self.tgt)
        skip = {f"train.{self.pair}.{lang}.{ext}" for lang in langs for ext in ("bin", "idx")}
        for path in sorted(self.data.iterdir()):
            if path.is_file() and path.name not in skip | {DISTILLED, IDS, MERGED}:
                shutil.copyfile(path, partial / path.name)
        for lang, items in zip(langs, (sources, targets)):
            size = len(Dictionary.load(str(self.data / f"dict.{lang}.txt")))
            write_dataset(partial / f"train.{self.pair}.{lang}", items, size)
        for name, text in extra.items():
            (partial / name).write_text(text, encoding="utf-8")
        os.replace(partial, dest)

    def split(self, n):
        """The stage-1 halves (the teacher's labels), then split.json with their ids."""
        path, seed = self.out / "split.json", self.settings["seed"]
        ids = dict(zip(HALVES, split_ids(n, seed)))

        def work():
            start = time.perf_counter()
            teacher = self.labels("teacher")
            sources = _load(teacher, self.pair, self.src)
            targets = _load(teacher, self.pair, self.tgt)
            for half in HALVES:
                if self.labels(1, half).is_dir():  # written completely or not at all
                    continue
                mine = ids[half]
                self.write_folder(
                    self.labels(1, half),
                    (sources[i] for i in mine),
                    (targets[i] for i in mine),
                    {IDS: "".join(f"{i}\n" for i in mine)},
                )
            seconds = round(time.perf_counter() - start, 2)
            _write_json(path, {"seed": seed, "n": n, **ids, "seconds": seconds})

        self._step("split in halves", path, path.is_file, work, lambda: _read_json(path)["seconds"])
        return ids

    def merge(self, k, ids):
        """labels/final: the n pairs in their original order, labels of stage ``k``."""
        dest = self.labels("final")

        def work():
            start = time.perf_counter()
            n = sum(len(v) for v in ids.values())
            sources, targets = [None] * n, [None] * n
            for half in HALVES:
                folder = self.labels(k, half)
                src, tgt = _load(folder, self.pair, self.src), _load(folder, self.pair, self.tgt)
                for j, i in enumerate(ids[half]):
                    sources[i], targets[i] = src[j], tgt[j]
            info = {"labels": {h: str(self.labels(k, h)) for h in HALVES}, "pairs": n}
            info["seconds"] = round(time.perf_counter() - start, 2)
            self.write_folder(dest, sources, targets, {MERGED: json.dumps(info, indent=2)})

        seconds = lambda: _read_json(dest / MERGED)["seconds"]  # noqa: E731
        self._step("merge the halves", dest, dest.is_dir, work, seconds)

    # --- scores of the labels ----------------------------------------------------------

    def score_labels(self, k, ids, references):
        """chrF and BLEU of stage ``k``'s labels (both halves, and each) against the refs."""
        from fairseq.data import Dictionary
        from sacrebleu.metrics import BLEU, CHRF

        folder, cache = self.labels(k), self.labels(k) / "scores.json"
        stamp = {h: _stamp(self.labels(k, h) / f"train.{self.pair}.{self.tgt}.bin") for h in HALVES}
        if cache.is_file() and _read_json(cache).get("stamp") == stamp:
            return _read_json(cache)
        vocab = Dictionary.load(str(self.data / f"dict.{self.tgt}.txt"))
        hyps, refs, n = {}, {}, len(references)
        merged = [None] * n
        for half in HALVES:
            items = _load(folder / half, self.pair, self.tgt)
            hyps[half] = [vocab.string(items[j], bpe_symbol="@@ ") for j in range(len(items))]
            refs[half] = [references[i] for i in ids[half]]
            for j, i in enumerate(ids[half]):
                merged[i] = hyps[half][j]
        hyps["all"], refs["all"] = merged, references
        scores = {"stage": k, "pairs": n, "stamp": stamp}
        for part in ("all", *HALVES):
            suffix = "" if part == "all" else f"_{part}"
            for name, metric in (("chrf", CHRF()), ("bleu", BLEU(tokenize="none", force=True))):
                scores[name + suffix] = metric.corpus_score(hyps[part], [refs[part]]).score
                scores[f"{name}_signature"] = str(metric.get_signature())
        _write_json(cache, scores)
        return scores

    def references(self):
        """DATA's training targets as tokenized text (BPE removed), in id order."""
        from fairseq.data import Dictionary

        vocab = Dictionary.load(str(self.data / f"dict.{self.tgt}.txt"))
        items = _load(self.data, self.pair, self.tgt)
        return [vocab.string(items[i], bpe_symbol="@@ ") for i in range(len(items))]

    # --- the whole run -----------------------------------------------------------------

    def run(self, n, evaluate=True):
        start, stages = time.perf_counter(), self.settings["stages"]
        self.relabel("teacher labels", self.teacher, self.data, self.labels("teacher"))
        ids = self.split(n)
        students = []
        for k in range(1, stages + 1):
            pair = {h: self.student(f"student_{h}{k}", self.labels(k, h)) for h in HALVES}
            chain = self.train(list(pair.values()))
            for half, other in zip(HALVES, reversed(HALVES)):  # B_k labels A, A_k labels B
                students.append((k, half, pair[half], chain.record(pair[half])))
                model = chain.best_checkpoint(pair[other].name)
                name = f"relabel half {half} with {pair[other].name}"
                self.relabel(name, model, self.labels(k, half), self.labels(k + 1, half))
        self.merge(stages + 1, ids)
        final = self.student("final_student", self.labels("final"))
        chain = self.train([final])
        test = chain.evaluate_stage(final) if evaluate else None
        references = self.references()
        labels = [self.score_labels(k, ids, references) for k in range(1, stages + 2)]
        report = self.report(ids, labels, students, chain, final, test)
        report["wall_seconds"] = round(time.perf_counter() - start, 1)
        _write_json(self.out / "mckd.json", report)
        (self.out / "mckd.md").write_text(markdown(report), encoding="utf-8")
        for row in labels:
            logger.info(
                "mckd: labels of stage %d (%s): chrF %.2f, BLEU %.2f against the references",
                row["stage"], row["made_by"], row["chrf"], row["bleu"],
            )  # fmt: skip
        return report

    def report(self, ids, labels, students, chain, final, test):
        seconds = {s["step"]: s["seconds"] for s in self.steps}
        for row in labels:
            k = row["stage"]
            del row["stamp"]
            row["folders"] = {h: str(self.labels(k, h)) for h in HALVES}
            if k == 1:
                row["made_by"], row["seconds"] = "teacher", seconds["teacher labels"]
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
        record = chain.record(final)
        final = {
            "stage": None, "student": final.name, "half": "A+B", "data": final.data,
            "pairs": sum(map(len, ids.values())), "updates": record["updates"],
            "seconds": record["wall_seconds"], "checkpoint": str(chain.best_checkpoint(final.name)),
            "test": test,
        }  # fmt: skip
        return {
            "format": FORMAT,
            "method": METHOD,
            "settings": self.settings,
            "split": {"seed": self.settings["seed"], **{h: len(ids[h]) for h in HALVES}},
            "metric": METRIC_NOTE,
            "labels": labels,
            "students": rows,
            "final": final,
            "steps": self.steps,
        }


def _num(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report):
    """The report as Markdown: the labels of every stage, the students, the steps."""
    lines = [
        f"# {METHOD}",
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


def _claim(out, settings):
    """Record ``settings`` in a new ``out``, or check that an existing one was made with them."""
    path = out / SETTINGS
    if path.is_file():
        theirs, diffs = _read_json(path), []
        for key in sorted(set(theirs) | set(settings)):
            a, b = theirs.get(key), settings.get(key)
            if a != b:
                if key.endswith("_sha256") and a and b:
                    a, b = a[:12], b[:12]
                diffs.append(f"{key}: {a!r} there, {b!r} now")
        if diffs:
            raise EvokdError(
                f"--out {out}: made with other settings ({'; '.join(diffs)}); rerun with its "
                "settings to resume it, or give another --out"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvokdError(
            f"--out {out}: exists and is not an evokd mckd folder (no {SETTINGS}); give a new "
            "or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def run_mckd(
    teacher,
    data,
    out,
    stages=3,
    arch=None,
    max_epoch=None,
    seed=1,
    train_flags=None,
    devices=None,
    beam=5,
    extra_args=(),
    *,
    max_len_a=1.2,
    max_len_b=10,
    max_tokens=8000,
    evaluate=True,
    evaluate_args=None,
):
    """Collaborative multi-stage relabelling into ``out`` (see the module doc).

    ``stages``: K, the pairs of students (>= 1). ``arch``, ``max_epoch``: every student's
    architecture and epochs. ``seed``: the split and fairseq's ``--seed`` of the students.
    ``train_flags``: fairseq flags of every student, as a plan's ``train:`` section
    (default: the ``tiny`` preset's). ``devices``: a :class:`evokd.chain.Devices`.
    ``beam``, ``max_len_a``, ``max_len_b``, ``max_tokens``: decoding of every relabelling.
    ``extra_args``: fairseq-train flags after all others. ``evaluate``: score the final
    student on DATA's test set with ``evaluate_args`` (keys of
    :func:`evokd.evaluate.evaluate_checkpoint`; default subset test, beam ``beam``).
    Returns the report written to ``out/mckd.json``.
    """
    from fairseq.models import ARCH_MODEL_REGISTRY

    from evokd.evaluate import subset_size
    from evokd.plan import load_plan

    check_exists(str(teacher), "--teacher")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    _whole(stages, "--stages")
    _whole(beam, "--beam")
    _whole(max_tokens, "--max-tokens")
    _whole(seed, "--seed", 0)
    if max_epoch is None:
        raise EvokdError("--max-epoch: give the epochs of every student")
    _whole(max_epoch, "--max-epoch")
    if not (isinstance(max_len_a, (int, float)) and max_len_a >= 0):
        raise EvokdError(f"--max-len-a {max_len_a!r}: expected a number >= 0")
    _whole(max_len_b, "--max-len-b")
    if arch not in ARCH_MODEL_REGISTRY:  # evokd's transformer_evokd_* are registered
        raise EvokdError(
            f"--arch {arch}: not an architecture known to fairseq (see `fairseq-train --help` "
            "for --arch, or the transformer_evokd_* names in the README)"
        )
    if not any(Path(data).glob("dict.*.txt")):
        raise EvokdError(f"--data {data}: holds no binarized data (dict.*.txt); run evokd prepare")
    if train_flags is None:
        train_flags = load_plan("tiny").train
    src, tgt, pair = _languages(teacher, data)
    n = subset_size(str(data), "train", src, tgt)
    if n < 2:
        raise EvokdError(f"--data {data}: {n} training pairs; two halves need at least 2")
    settings = {
        "format": FORMAT,
        "teacher": os.path.abspath(teacher),
        "teacher_sha256": file_digest(teacher),
        "data": os.path.abspath(data),
        "data_sha256": data_fingerprint(str(data), "train", *pair.split("-")),
        "source_lang": src,
        "target_lang": tgt,
        "pair": pair,
        "stages": stages,
        "arch": arch,
        "max_epoch": max_epoch,
        "seed": seed,
        "train_flags": dict(train_flags),
        "extra_args": list(extra_args),
        "beam": beam,
        "max_len_a": max_len_a,
        "max_len_b": max_len_b,
        "max_tokens": max_tokens,
        "evaluate": dict(evaluate_args or {"subset": "test", "beam": beam}),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from the file
    out = Path(out)
    _claim(out, settings)
    run = Relabelling(out, settings, devices or Devices(), extra_args)
    return run.run(n, evaluate=evaluate)
