"""``evokd chain --dry-run``: every check a real run makes before training, then every step
it would take, in order: the data's preparation (and whether it needs the network), each
stage's sequence-level KD data (by which teacher, and the ``evokd distill-data`` command
that builds the same) and teacher cache, its ``fairseq-train`` command, the evaluation and
the report. Nothing is prepared, built, trained or written."""

import shlex
from pathlib import Path

from evokd.chain.plan import cache_spec, flags_to_args, validate
from evokd.chain.progress import Progress
from evokd.chain.teachers import kind


def preparation(plan):
    """The data step in words: prepared already, or how it would be prepared and whether
    that needs the network (IWSLT14 without an archive at hand is downloaded)."""
    from evokd.data.layout import is_ready

    if is_ready(plan.data):
        return f"data {plan.data}: prepared"
    spec = {k.replace("-", "_"): v for k, v in (plan.prepare or {}).items()}
    corpus = str(spec.get("corpus", "multi30k"))
    if corpus == "iwslt14":
        from evokd.data import iwslt14

        archive = spec.get("archive") or (
            Path(spec.get("cache_dir") or iwslt14.default_cache_dir()) / iwslt14.ARCHIVE_NAME
        )
        if Path(archive).is_file():
            source = f"the archive {archive}; no network"
        else:
            source = (
                f"{iwslt14.URL}, downloaded to {archive}: needs the network (offline: "
                f"evokd prepare iwslt14 --archive PATH/{iwslt14.ARCHIVE_NAME})"
            )
    elif spec.get("raw_dir"):
        source = f"the files in {spec['raw_dir']}; no network"
    elif corpus == "multi30k":
        source = "the Multi30k shipped with evokd; no network"
    else:
        source = "the plan's files; no network"
    return f"data {plan.data}: to prepare: {corpus}, from {source}"


def dry_run(chain, only=None, evaluate=True, hint=None):
    """The checks of :meth:`evokd.chain.runner.Chain.run` before training, then its steps as
    lines (``#`` comments and the commands); raises the first problem found."""
    plan, layout, trainer = chain.plan, chain.layout, chain.trainer
    stages = chain.stages(only)
    validate(plan)  # the data is there, or the plan says how to prepare it
    for stage in chain.stages():  # every stage's command, as a real run checks them
        trainer.check(stage)
    if only:
        for stage in stages:
            if not trainer.is_finished(stage):
                chain.check_prerequisites(stage, hint, trained_first=set(only))
    lines = [f"# {preparation(plan)}"]
    progress, seen = Progress(trainer, stages), set()
    for i, stage in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {stage.name}"
        if trainer.is_finished(stage):
            lines.append(f"# {head}: finished, skipped")
            continue
        lines += teacher_steps(chain, stage, seen)
        lines.append(f"# {head}: {progress.describe(stage)}; log: {layout.train_log(stage)}")
        lines.append(shlex.join(trainer.train_command(stage)))
    if evaluate:
        args = chain.evaluate_args
        lines.append(
            f"# evaluation: each stage's checkpoint_best.pt on the {args.get('subset', 'test')} "
            f"set of {plan.data} (beam {args.get('beam', 5)}) -> {layout.results}/stages/"
        )
        lines.append(f"# report: {layout.results}/results.md, results.json, results.png")
    return lines


def teacher_steps(chain, stage, seen):
    """The lines of what ``stage`` reads from its teachers, built before it trains; each
    once (``seen``: the folders listed already), as the run builds each once."""
    layout, lines = chain.layout, []
    if stage.seqkd and Path(layout.stage_data(stage)) not in seen:
        out = Path(layout.stage_data(stage))
        seen.add(out)
        state = "built" if (out / "distill.json").is_file() else "to build"
        command = distill_command(chain, stage)
        teacher = command[command.index("--teacher") + 1]
        what = kind(stage.seqkd["teacher"], chain.plan.stage_names)
        how = "" if what == "fairseq" else "raw "
        through = f" through {command[command.index('--engine') + 1]}" if what == "fairseq" else ""
        lines.append(
            f"#   sequence-level KD data {out} ({state}): the {what} teacher {teacher} "
            f"translates the {how}training source of {chain.plan.data}{through}"
        )
        if state == "to build":
            lines.append(shlex.join(command))
    spec = cache_spec(chain.plan, stage)
    if spec and layout.cache_dir(stage) not in seen:
        out = layout.cache_dir(stage)
        seen.add(out)
        state = "built" if out.is_dir() else "to build"
        teacher = layout.best_checkpoint(stage.teacher)
        lines.append(
            f"#   teacher cache {out} ({state}): the top {spec['topk']} of {teacher} over "
            f"{layout.stage_data(stage)}"
        )
    return lines


def distill_command(chain, stage):
    """The ``evokd distill-data`` command that builds the same data as the chain's step for
    ``stage`` (:meth:`evokd.chain.runner.Chain.distill`), the plan's ``seqkd:`` options as
    its flags."""
    layout, spec = chain.layout, dict(stage.seqkd)
    if kind(spec["teacher"], chain.plan.stage_names) == "fairseq":
        spec["engine"] = layout.seqkd_engine(stage.seqkd)
    teacher = layout.teacher_path(spec.pop("teacher"))
    command = ["evokd", "distill-data", "--teacher", teacher, "--data", chain.plan.data]
    command += ["--out", layout.stage_data(stage)] + flags_to_args(spec)
    return command + ([] if chain.devices.cuda else ["--cpu"])
