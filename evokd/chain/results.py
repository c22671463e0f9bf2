"""What a chain's report holds, gathered from the stage records and the evaluations: one
row per stage, the chain's cost against the same stages without teachers, the paired
significance tests, the learning curves, and the mean over seeds. The report is written
once, from all of them (:func:`write_results`)."""

import json
import logging
import os
import time
from pathlib import Path

from evokd import files as steps
from evokd.chain.plan import ordered
from evokd.chain.progress import clock

logger = logging.getLogger(__name__)

BASELINE = "student_model"  # the EKD student trained without a teacher


def default_pairs(stage_names, extra=(), baseline=BASELINE, students=None):
    """The (system, baseline) pairs that a chain's report compares, read "system against
    baseline": each student against ``baseline``, ``master_student`` against
    ``senior_student`` and ``TAKD_student``, then ``extra`` (a plan's ``compare:`` list of
    ``[a, b]``: a against b). Only pairs of existing, distinct stages, each once, in order.

    ``students``: the student stages; by default those whose name holds ``student``.
    """
    names = list(stage_names)
    if students is None:
        students = [n for n in names if "student" in n.lower() and n != baseline]
    pairs = [(s, baseline) for s in students]
    pairs += [("master_student", "senior_student"), ("master_student", "TAKD_student")]
    for pair in extra:
        if len(pair) != 2:
            raise ValueError(f"compare: {list(pair)}: expected a pair [stage, stage]")
        missing = [name for name in pair if name not in names]
        if missing:
            logger.warning("compare: %s against %s: no stage %s, skipped", *pair, missing[0])
        pairs.append(tuple(pair))
    found = []
    for a, b in pairs:
        if a in names and b in names and a != b and (a, b) not in found:
            found.append((a, b))
    return found


def evaluate_stage(layout, stage, evaluate_args, cpu, progress=None):
    """Scores of a stage's best checkpoint on the plan's data (keys of
    :func:`evokd.evaluation.evaluate.evaluate_checkpoint` in ``evaluate_args``), kept in
    the stage's evaluation file until the checkpoint changes."""
    from evokd.evaluation.evaluate import evaluate_checkpoint

    progress = progress or logger.info
    checkpoint = layout.best_checkpoint(stage.name)
    path = layout.evaluation_path(stage)
    stat = os.stat(checkpoint)
    stamp = f"{stat.st_size}-{stat.st_mtime_ns}"
    if path.is_file() and steps.read_json(path).get("checkpoint_stamp") == stamp:
        return steps.read_json(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"  evaluating {stage.name} on {evaluate_args.get('subset', 'test')}")
    start = time.time()
    out_dir = str(path.parent / stage.name)
    scores = evaluate_checkpoint(
        str(checkpoint), layout.plan.data, cpu=cpu, out_dir=out_dir, **evaluate_args
    )
    scores["checkpoint_stamp"] = stamp
    steps.write_json(path, scores)
    found = [f"{name} {scores[key]:.2f}" for key, name in (("bleu", "BLEU"), ("chrf", "chrF"))
             if isinstance(scores.get(key), (int, float))]  # fmt: skip
    took = clock(time.time() - start)
    progress(f"  evaluated {stage.name}: {', '.join(found) or 'no scores'} ({took})")
    return scores


def rows(plan, trainer, scores):
    """One row per stage of ``plan`` in training order: what it is, its record's updates
    and time, and its ``scores`` (stage name -> evaluation) when it has been evaluated."""
    found = []
    for stage in ordered(plan):
        record = trainer.stage_record(stage) or {}
        row = {
            "stage": stage.name,
            "architecture": stage.arch,
            "teacher": stage.teacher,
            "seqkd_teacher": stage.seqkd["teacher"] if stage.seqkd else None,
            "init_from": stage.init_from,
            "updates": record.get("updates"),
            "wall_seconds": record.get("wall_seconds"),
            "finished": trainer.is_finished(stage),
        }
        row.update({k: v for k, v in (scores.get(stage.name) or {}).items() if k not in row})
        found.append(row)
    return found


def step_records(layout):
    """The records of the chain's teacher steps (caches, sequence-level data)."""
    return _records(layout.steps_dir)


def _records(folder):
    """Every ``*.json`` record in ``folder``, by name; none when it does not exist."""
    return [steps.read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def job_records(layout):
    """When each step of the run last ran, and in which job slot (``jobs/*.json``)."""
    found = _records(layout.jobs_dir)  # slurm.json holds job ids, not times
    return [r for r in found if isinstance(r, dict) and "started" in r and "ended" in r]


def wall(job_records):
    """The steps' wall time as they ran: from the first start to the last end (a run stopped
    and resumed counts its pause), beside the sum of their own times; None without records."""
    if not job_records:
        return None
    span = max(r["ended"] for r in job_records) - min(r["started"] for r in job_records)
    busy = sum(r["ended"] - r["started"] for r in job_records)
    return {
        "jobs": max(r.get("jobs", 1) for r in job_records),
        "steps": len(job_records),
        "span_seconds": span,
        "busy_seconds": busy,
        "parallelism": busy / span if span > 0 else None,
    }


def costs(rows, step_records, job_records=()):
    """The chain's time (stages and teacher steps) beside what the same stages cost
    without teachers: the plain stages' time per update (by architecture) times the
    KD stages' updates; and, from ``job_records``, the wall time (:func:`wall`)."""
    per_update = {}
    plain = [r for r in rows if not r["teacher"] and not r["seqkd_teacher"]]
    for row in plain:
        if row.get("updates") and row.get("wall_seconds"):
            per_update.setdefault(row["architecture"], row["wall_seconds"] / row["updates"])
    stages_s = sum(r.get("wall_seconds") or 0 for r in rows)
    teacher_steps_s = sum(r.get("seconds") or 0 for r in step_records)
    no_teacher, unknown = 0.0, []
    for row in rows:
        if row in plain:
            no_teacher += row.get("wall_seconds") or 0
        elif row.get("updates") and row["architecture"] in per_update:
            no_teacher += row["updates"] * per_update[row["architecture"]]
        else:
            unknown.append(row["stage"])
    total = stages_s + teacher_steps_s
    return {
        "chain_seconds": total,
        "stage_seconds": stages_s,
        "teacher_step_seconds": teacher_steps_s,
        "no_teacher_seconds": no_teacher,
        "ratio": total / no_teacher if no_teacher and not unknown else None,
        "not_estimated": unknown,
        "wall": wall(list(job_records)),
    }


def significance(plan, layout, rows):
    """Paired bootstrap (sacrebleu's) of the default pairs and the plan's ``compare``."""
    from evokd.evaluation.significance import compare_stages

    done = [r["stage"] for r in rows if r.get("finished")]
    evaluations = {n: layout.evaluation_path(plan.stage(n)) for n in done}
    return compare_stages(evaluations, default_pairs(plan.stage_names, plan.compare))


def curve_stages(plan, trainer):
    """The stages as :func:`evokd.chain.curves.write_curves` reads them."""
    found = []
    for stage in ordered(plan):
        record = trainer.stage_record(stage) or {}
        updates = record.get("updates")
        found.append(
            {
                "name": stage.name,
                "log": trainer.layout.train_log(stage),
                "init_from": stage.init_from,
                "teacher": stage.teacher,
                "updates": None
                if updates is None
                else updates + (record.get("start_updates") or 0),
                "carries_updates": stage.init_from_state == "training",
            }
        )
    return found


def write_results(plan, trainer, scores):
    """``curves.png`` and the report (``results.{json,md,png}``) of the run, written once;
    returns the rows."""
    from evokd.chain.curves import write_curves
    from evokd.chain.report import write_report

    layout = trainer.layout
    found = rows(plan, trainer, scores)
    layout.results.mkdir(parents=True, exist_ok=True)
    write_curves(curve_stages(plan, trainer), layout.results / "curves.png", title=layout.run_name)
    title = f"{layout.run_name}: {plan.description or plan.name}"
    write_report(
        layout.results,
        found,
        title=title,
        significance=significance(plan, layout, found),
        costs=costs(found, step_records(layout), job_records(layout)),
    )
    return found


def report_seeds(plan, rows_per_seed, results):
    """Mean and deviation over seeds of every stage, and the plan's ``compare:`` pairs
    tested across seeds (read with each seed's own paired bootstrap from
    ``results/seedS/results.json``), into ``results/results.{md,json}`` and
    ``results/seeds.png``; returns the Markdown."""
    from evokd.chain.report import seeds_table
    from evokd.chain.seeds import (
        SEEDS_COMPARISON_NOTE,
        aggregate,
        compare_over_seeds,
        plot_seeds,
        seeds_comparison_table,
    )

    seed_rows = aggregate(rows_per_seed)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    bootstrap = {seed: _significance(results / f"seed{seed}") for seed in rows_per_seed}
    compared = compare_over_seeds(plan.compare, rows_per_seed, bootstrap)
    seeds = ", ".join(str(s) for s in rows_per_seed)
    text = f"# {plan.name} over seeds {seeds}\n\n{seeds_table(seed_rows)}\n"
    text += "\nMean ± sample standard deviation (n - 1) of each stage's scores.\n"
    if compared:
        text += "\n## Compared across seeds\n\n" + seeds_comparison_table(compared) + "\n"
        text += "\n" + SEEDS_COMPARISON_NOTE + "\n"
    stages = [row["stage"] for row in seed_rows]
    plot_seeds(
        rows_per_seed, stages, results / "seeds.png", title=f"{plan.name}: test BLEU per seed"
    )
    text += "\n![test BLEU per seed; bars: the mean](seeds.png)\n"
    for seed in rows_per_seed:
        text += f"\n- seed {seed}: [seed{seed}/results.md](seed{seed}/results.md)"
    record = {"seeds": list(rows_per_seed), "rows": seed_rows, "compared": compared}
    steps.write_json(results / "results.json", record)
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text


def _significance(results):
    """The paired bootstrap rows of a run's report (``results.json``), [] when none."""
    path = Path(results) / "results.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("significance") or []
