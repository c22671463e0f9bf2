"""Collaborative multi-stage relabelling, after MCKD (Zhao et al., "Multistage Collaborative
Knowledge Distillation from a Large Language Model for Semi-Supervised Sequence
Generation", ACL 2024), with fairseq students.

The first pseudo-labels are a teacher's translations of the training source (a fairseq
checkpoint, or a teacher with its own vocabulary such as an LLM, through the text bridge of
``evokd distill-data``), or a file of them (:mod:`evokd.methods.mckd.first_labels`). The
pairs that have one are the pool (every pair of DATA unless a bad output was dropped); the
pool is split in two halves by a seeded permutation of its ids (positions in
``labels/teacher``, equal to DATA's ids when no pair was dropped). At every stage k two fresh
students are trained from scratch, A_k on half A's labels and B_k on half B's, and each
relabels the half it has not seen: B_k translates A's sources, A_k translates B's. Those
translations are the labels of stage k + 1. After K stages a final student trains on both
halves with their last labels. Every student is a chain stage (stock fairseq-train,
``checkpoint_best.pt`` chosen on the real validation set); every relabelling is
:func:`evokd.distill.seqkd.distill_data`, which survives kills and resumes to the same labels.
Each step's output appears complete or not at all, and a rerun skips the finished ones; a
folder one step reads is counted first (a half or a relabelled folder with more or fewer
pairs than its ids is refused). A rerun of a finished run with the same settings runs no
step and writes the report again; with other settings it is refused, naming them::

    DIR/mckd_settings.json          the settings DIR was made with; a rerun must match them
    DIR/labels/teacher/             the first labels of the n pairs of the pool, from
                                    distill_data or distill_text(teacher, DATA) or the file
    DIR/split.json                  seed, n, and the ids of half A and of half B, in order
    DIR/labels/stage1/{A,B}/        one binarized folder per half: train = the half's sources
                                    and labels; valid/test and dictionaries copied from DATA;
                                    mckd_ids.txt: line j holds the pool id of pair j
    DIR/labels/stage{k+1}/A/        distill_data(B_k, labels/stage{k}/A): B_k's labels of A
    DIR/labels/stage{k+1}/B/        distill_data(A_k, labels/stage{k}/B): A_k's labels of B
    DIR/labels/stage{k}/scores.json those labels scored against the training references
    DIR/labels/final/               the n pairs of the pool in their order, the last labels
    DIR/checkpoints/mckd/STAGE/     student_A1, student_B1, ..., final_student
    DIR/results/mckd/stages/        the final student's test scores (fairseq-generate)
    DIR/mckd.json, DIR/mckd.md      the report

How the labels are scored, and the report: :mod:`evokd.methods.mckd.report`.
"""

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from evokd import files as steps
from evokd.chain.layout import Layout
from evokd.chain.plan import Plan, Stage, validate
from evokd.chain.results import evaluate_stage
from evokd.chain.stage import StageTrainer
from evokd.core.build import check_complete, check_count
from evokd.core.decoding import DECODING
from evokd.core.devices import Devices
from evokd.data.folder import data_digest, language_pair, load_side, subset_size, write_folder
from evokd.distill.seqkd import META as DISTILLED
from evokd.distill.seqkd import distill_data, open_distilled
from evokd.errors import EvokdError, check_number
from evokd.methods.mckd import first_labels
from evokd.methods.mckd import report as mckd_report
from evokd.methods.mckd.report import FORMAT, HALVES

logger = logging.getLogger(__name__)

SETTINGS = "mckd_settings.json"
IDS = "mckd_ids.txt"  # in every half folder: the original id of each of its pairs
MERGED = "merge.json"
RUN = "mckd"  # the chain run: DIR/checkpoints/mckd/STAGE


def split_ids(n, seed):
    """Half A: the first ceil(n / 2) ids of a seeded permutation of range(n); B: the rest."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    cut = math.ceil(n / 2)
    return order[:cut], order[cut:]


class Relabelling:
    """One MCKD run in ``out``: its folders, its steps and its report (see the module doc)."""

    def __init__(self, out, settings, devices, extra_args=(), options=None):
        self.out = Path(os.path.abspath(out))  # the chain records its stages' data by path
        self.settings, self.devices, self.extra_args = settings, devices, list(extra_args)
        self.options = first_labels.options_of(options)  # how a text teacher is asked
        self.teacher, self.data = settings.get("teacher"), Path(settings["data"])
        self.src, self.tgt, self.pair = (
            settings[k] for k in ("source_lang", "target_lang", "pair")
        )
        self.records = []  # one per step: name, output, seconds, ran now

    # --- where things are --------------------------------------------------------------

    def labels(self, k, half=None):
        folder = self.out / "labels" / (f"stage{k}" if isinstance(k, int) else k)
        return folder / half if half else folder

    def student(self, name, data):
        s = self.settings
        flags = {"seed": s["seed"]}
        return Stage(name, s["arch"], max_epoch=s["max_epoch"], flags=flags, data=str(data))

    def trainer(self, stages):
        """The stage trainer of ``stages``, in DIR/checkpoints/mckd/STAGE."""
        plan = Plan(
            name=RUN,
            data=str(self.data),
            stages=stages,
            train=dict(self.settings["train_flags"]),
            evaluate=dict(self.settings["evaluate"]),
        )
        layout = Layout(plan, RUN, self.out / "checkpoints", self.out / "results")
        return StageTrainer(plan, layout, self.devices, self.extra_args)

    # --- the steps ---------------------------------------------------------------------

    def _step(self, name, output, done, work, seconds):
        """Run ``work()`` unless ``done()``; record the step and its (recorded) wall time."""
        ran = not done()
        if ran:
            logger.info("mckd: %s -> %s", name, output)
            work()
        else:
            logger.info("mckd: %s: finished earlier, skipped", name)
        self.records.append(
            {"step": name, "output": str(output), "seconds": seconds(), "ran_now": ran}
        )

    def relabel(self, name, model, data, out):
        meta = Path(out) / DISTILLED
        s = self.settings

        def work():
            distill_data(
                str(model), str(data), str(out), beam=s["beam"], lenpen=s["lenpen"],
                max_len_a=s["max_len_a"],
                max_len_b=s["max_len_b"], max_tokens=s["max_tokens"],
                cpu=not self.devices.cuda, processes=self.devices.procs if self.devices.cuda else 1,
            )  # fmt: skip

        self._step(name, out, meta.is_file, work, lambda: steps.read_json(meta)["wall_seconds"])
        info = open_distilled(out, "mckd:")  # counted: every pair relabelled, once
        check_count(f"mckd: {out}", info["examples"], _pairs(data, self.pair, self.src))
        return info

    def train(self, stages):
        """Train ``stages`` (a finished one is skipped); returns their trainer."""
        trainer = self.trainer(stages)
        validate(trainer.plan)

        def work(stage):
            trainer.check(stage)
            trainer.train(stage)

        for stage in stages:
            self._step(
                f"train {stage.name}",
                trainer.layout.stage_dir(stage),
                lambda stage=stage: trainer.is_finished(stage),
                lambda stage=stage: work(stage),
                lambda stage=stage: trainer.stage_record(stage)["wall_seconds"],
            )
        return trainer

    def write_folder(self, dest, sources, targets, extra):
        """``dest``: DATA's files (dictionaries, valid, test, ...) with a new train subset."""
        columns = {self.src: sources, self.tgt: targets}
        skip = {DISTILLED, IDS, MERGED}
        write_folder(self.data, dest, "train", self.pair, columns, extra, skip)

    def check_half(self, k, half, ids):
        """Fail unless the half folder holds exactly the pairs ``ids``, in that order."""
        folder = self.labels(k, half)
        recorded = [int(i) for i in (folder / IDS).read_text(encoding="utf-8").split()]
        if recorded != list(ids):
            raise EvokdError(
                f"mckd: {folder / IDS}: other ids than split.json gives half {half}; remove "
                f"{folder} to rebuild it"
            )
        check_count(f"mckd: {folder}", _pairs(folder, self.pair, self.tgt), len(ids))

    def split(self, n):
        """The stage-1 halves (the teacher's labels), then split.json with their ids."""
        path, seed = self.out / "split.json", self.settings["seed"]
        ids = dict(zip(HALVES, split_ids(n, seed)))
        check_complete(str(path), ids["A"] + ids["B"], n)

        def work():
            start = time.perf_counter()
            teacher = self.labels("teacher")
            sources = load_side(teacher, "train", self.pair, self.src)
            targets = load_side(teacher, "train", self.pair, self.tgt)
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
            digests = {h: steps.payload_digests(self.labels(1, h)) for h in HALVES}
            record = {"seed": seed, "n": n, **ids, "seconds": seconds, steps.PAYLOAD: digests}
            steps.write_json(path, record)

        seconds = lambda: steps.read_json(path)["seconds"]  # noqa: E731
        self._step("split in halves", path, path.is_file, work, seconds)
        recorded = steps.read_json(path)
        if {h: recorded[h] for h in HALVES} != ids:
            raise EvokdError(f"mckd: {path}: other halves than seed {seed} gives; remove it")
        for half in HALVES:
            folder = self.labels(1, half)
            if steps.PAYLOAD in recorded:  # each half as split.json recorded it
                hint = f"remove {folder} and {path} and rerun to split again"
                steps.verify_payload(f"mckd: {folder}", folder, recorded[steps.PAYLOAD][half], hint)
            self.check_half(1, half, ids[half])
        return ids

    def merge(self, k, ids):
        """labels/final: the n pairs in their original order, labels of stage ``k``."""
        dest = self.labels("final")

        def work():
            start = time.perf_counter()
            n = sum(len(v) for v in ids.values())
            check_complete(f"mckd: {self.out / 'split.json'}", ids["A"] + ids["B"], n)
            sources, targets = [None] * n, [None] * n
            for half in HALVES:
                self.check_half(k, half, ids[half])
                folder = self.labels(k, half)
                src, tgt = (
                    load_side(folder, "train", self.pair, lang) for lang in (self.src, self.tgt)
                )
                for j, i in enumerate(ids[half]):
                    sources[i], targets[i] = src[j], tgt[j]
            info = {"labels": {h: str(self.labels(k, h)) for h in HALVES}, "pairs": n}
            info["seconds"] = round(time.perf_counter() - start, 2)
            self.write_folder(dest, sources, targets, {MERGED: json.dumps(info, indent=2)})
            info[steps.PAYLOAD] = steps.payload_digests(dest, skip=(MERGED,))
            steps.write_json(dest / MERGED, info)

        seconds = lambda: steps.read_json(dest / MERGED)["seconds"]  # noqa: E731
        self._step("merge the halves", dest, dest.is_dir, work, seconds)
        digests = steps.read_json(dest / MERGED).get(steps.PAYLOAD)
        if digests:  # as merge.json recorded them
            hint = f"remove {dest} and rerun to merge again"
            steps.verify_payload(f"mckd: {dest}", dest, digests, hint)
        n = sum(len(v) for v in ids.values())
        check_count(f"mckd: {dest}", _pairs(dest, self.pair, self.tgt), n)

    def first(self):
        """labels/teacher (see :mod:`evokd.methods.mckd.first_labels`): the pool's size."""
        out, n = self.labels("teacher"), _pairs(self.data, self.pair, self.src)
        if self.teacher is not None:  # a fairseq checkpoint labels every pair
            info = self.relabel("teacher labels", self.teacher, self.data, out)
        else:
            meta, kind = out / DISTILLED, self.settings["first_labels"]["kind"]
            self._step("labels file" if kind == first_labels.FILE else "teacher labels", out,
                       meta.is_file, lambda: first_labels.make(self, out),
                       lambda: steps.read_json(meta)["wall_seconds"])  # fmt: skip
            info = open_distilled(out, "mckd:")  # every file as recorded
            check_count(f"mckd: {out}", info["source_examples"], n, "pairs of DATA")
        self.pool, self.source = first_labels.pool(self.settings, out, info)
        return len(self.pool)

    # --- the whole run -----------------------------------------------------------------

    def run(self, evaluate=True):
        start, stages = time.perf_counter(), self.settings["stages"]
        ids = self.split(self.first())
        students = []
        for k in range(1, stages + 1):
            pair = {h: self.student(f"student_{h}{k}", self.labels(k, h)) for h in HALVES}
            trainer = self.train(list(pair.values()))
            for half, other in zip(HALVES, reversed(HALVES)):  # B_k labels A, A_k labels B
                students.append((k, half, pair[half], trainer.stage_record(pair[half])))
                model = trainer.layout.best_checkpoint(pair[other].name)
                name = f"relabel half {half} with {pair[other].name}"
                self.relabel(name, model, self.labels(k, half), self.labels(k + 1, half))
        self.merge(stages + 1, ids)
        final = self.student("final_student", self.labels("final"))
        trainer = self.train([final])
        cpu = not self.devices.cuda
        test = (
            evaluate_stage(trainer.layout, final, trainer.plan.evaluate, cpu) if evaluate else None
        )
        if not any(r["ran_now"] for r in self.records):
            logger.info("mckd: %s: every step finished earlier: nothing to do", self.out)
        refs = mckd_report.references(self)
        labels = [mckd_report.score_labels(self, k, ids, refs) for k in range(1, stages + 2)]
        report = mckd_report.report(self, ids, labels, students, trainer, final, test)
        report["wall_seconds"] = round(time.perf_counter() - start, 1)
        steps.write_json(self.out / "mckd.json", report)
        (self.out / "mckd.md").write_text(mckd_report.markdown(report), encoding="utf-8")
        for row in labels:
            logger.info(
                "mckd: labels of stage %d (%s): chrF %.2f, BLEU %.2f against the references",
                row["stage"], row["made_by"], row["chrf"], row["bleu"],
            )  # fmt: skip
        return report


def _pairs(folder, pair, lang):
    """The number of training sentences of ``folder``'s side ``lang``."""
    return len(load_side(folder, "train", pair, lang))


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
    beam=DECODING["beam"],
    extra_args=(),
    *,
    lenpen=DECODING["lenpen"],
    max_len_a=DECODING["max_len_a"],
    max_len_b=DECODING["max_len_b"],
    max_tokens=DECODING["max_tokens"],
    evaluate=True,
    evaluate_args=None,
    labels=None,
    teacher_options=None,
):
    """Collaborative multi-stage relabelling into ``out`` (see the module doc).

    The first labels come from ``teacher`` (a fairseq checkpoint, a CTranslate2 or Hugging
    Face model folder, or a server URL) or from the file ``labels`` (raw target sentences,
    one per training pair): exactly one of the two (:mod:`evokd.methods.mckd.first_labels`).
    ``teacher_options``: how a text teacher is asked and what becomes of bad outputs, by the
    names of :data:`evokd.methods.mckd.first_labels.FLAGS` (``model``, ``on_bad_output``, ...;
    the defaults of ``evokd distill-data``). ``stages``: K, the pairs of students (>= 1).
    ``arch``, ``max_epoch``: every student's architecture and epochs. ``seed``: the split
    and fairseq's ``--seed`` of the students.
    ``train_flags``: fairseq flags of every student, as a plan's ``train:`` section
    (default: the ``tiny`` preset's). ``devices``: a :class:`evokd.core.devices.Devices`.
    ``beam``, ``lenpen``, ``max_len_a``, ``max_len_b``, ``max_tokens``: decoding of every
    relabelling (default: :data:`evokd.core.decoding.DECODING`).
    ``extra_args``: fairseq-train flags after all others. ``evaluate``: score the final
    student on DATA's test set with ``evaluate_args`` (keys of
    :func:`evokd.evaluation.evaluate.evaluate_checkpoint`; default subset test, beam ``beam``).
    Returns the report written to ``out/mckd.json``.
    """
    from fairseq.models import ARCH_MODEL_REGISTRY

    from evokd.chain.plan import load_plan

    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    if max_epoch is None:
        raise EvokdError("--max-epoch: give the epochs of every student")
    for value, flag, minimum in ((stages, "--stages", 1), (beam, "--beam", 1), (seed, "--seed", 0),
                                 (max_tokens, "--max-tokens", 1), (max_epoch, "--max-epoch", 1),
                                 (max_len_b, "--max-len-b", 1)):  # fmt: skip
        check_number(value, flag, minimum)
    check_number(max_len_a, "--max-len-a", 0, kind=float)
    if arch not in ARCH_MODEL_REGISTRY:  # evokd's transformer_evokd_* are registered
        raise EvokdError(
            f"--arch {arch}: not an architecture known to fairseq (see `fairseq-train --help` "
            "for --arch, or the transformer_evokd_* names in the README)"
        )
    if not any(Path(data).glob("dict.*.txt")):
        raise EvokdError(f"--data {data}: holds no binarized data (dict.*.txt); run evokd prepare")
    if train_flags is None:
        train_flags = load_plan("tiny").train
    options = first_labels.options_of(teacher_options)
    decoding = dict(beam=beam, max_len_a=max_len_a, max_len_b=max_len_b)
    src, tgt, source = first_labels.describe(teacher, labels, data, decoding, options)
    pair = language_pair(data, "train", src, tgt)
    n = subset_size(data, "train", src, tgt)
    if n < 2:
        raise EvokdError(f"--data {data}: {n} training pairs; two halves need at least 2")
    settings = {
        "format": FORMAT,
        **source,  # the fairseq teacher, or where the first labels come from
        "data": os.path.abspath(data),
        "data_sha256": data_digest(str(data), "train", *pair.split("-")),
        "source_lang": src,
        "target_lang": tgt,
        "pair": pair,
        **dict(stages=stages, arch=arch, max_epoch=max_epoch, seed=seed),
        **dict(train_flags=dict(train_flags), extra_args=list(extra_args)),
        **dict(beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b),
        "max_tokens": max_tokens,
        "evaluate": dict(evaluate_args or {"subset": "test", "beam": beam}),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from the file
    hint = "rerun with its settings to resume it, or give another --out"
    steps.claim(out, SETTINGS, settings, "an evokd mckd folder", hint)
    run = Relabelling(out, settings, devices or Devices(), extra_args, options)
    return run.run(evaluate=evaluate)
