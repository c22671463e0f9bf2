"""One stage of the EKD / TAKD chain, as the bin/*.sh recipes run it.

Positional form of the original scripts: STAGE ROOT MASTER_PORT GPU_NUM (eval_model:
GPU_IDX ROOT). ROOT is the repository root: data-bin/, checkpoints/PRESET/STAGE/ and
results/PRESET/ are under it, and the plan's own paths are read from it; the paths given as
flags (--data, --preset FILE, --save-dir, --checkpoint) are read from the current folder.
GPU_NUM 0, or no CUDA, trains on the CPU (gloo when more than one process); GPU_NUM > 1
starts torchrun with NCCL and divides max-tokens among the processes so the effective batch
stays that of the paper's single-GPU scripts. Several machines: set NNODES, NODE_RANK and
MASTER_ADDR.

A stage trains with the plan's flags (defaults of the paper's scripts: alpha 0.5, T 1,
lr 5e-4, inverse_sqrt with 4000 warm-up updates, dropout 0.3, max-tokens 4096, validation
BLEU with beam 5 choosing checkpoint_best.pt) into its own folder, and stops at once if its
teacher or initialisation stage has not been trained, naming the script to run first.
Rerunning resumes an interrupted stage and skips a finished one.
"""

import os

from evokd.cli import add_passthrough_usage

STAGES = (
    "student_model",
    "junior_teacher",
    "senior_teacher",
    "junior_student",
    "senior_student",
    "master_student",
    "TAKD_assistant_teacher",
    "TAKD_student",
)


def add_arguments(parser):
    parser.add_argument("stage", choices=STAGES + ("eval_model",), help="the recipe")
    parser.add_argument(
        "positional",
        nargs="*",
        metavar="ARG",
        help="ROOT MASTER_PORT GPU_NUM (eval_model: GPU_IDX ROOT), all optional",
    )
    parser.add_argument("--root", help="repository root (default: ROOT, else the current folder)")
    parser.add_argument("--master-port", type=int, help="torchrun's port (default: 29500)")
    parser.add_argument(
        "--gpus",
        type=int,
        help="processes: 0 = CPU, N > 1 = torchrun (default: GPU_NUM, else all visible GPUs)",
    )
    parser.add_argument(
        "--preset",
        default="paper",
        help="plan preset or plan file giving the stage's flags (default: paper; tiny and cpu "
        "for CPUs)",
    )
    parser.add_argument("--data", help="binarized data folder (default: the preset's)")
    parser.add_argument(
        "--save-dir",
        help="this stage's checkpoint folder (default: ROOT/checkpoints/PRESET/STAGE); "
        "a folder holding another stage's checkpoints is refused",
    )
    parser.add_argument("--max-epoch", type=int, help="epochs (default: the preset's)")
    parser.add_argument(
        "--checkpoint", help="eval_model: evaluate this checkpoint (default: every finished stage)"
    )
    parser.add_argument(
        "--average-last",
        type=int,
        metavar="N",
        help="eval_model: average the last N epoch checkpoints of each stage first",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and print the command; train nothing"
    )
    add_passthrough_usage(parser)


def _positional(args):
    from evokd.errors import EvokdError

    names = ("gpu_idx", "root") if args.stage == "eval_model" else ("root", "port", "gpu_num")
    if len(args.positional) > len(names):
        usage = " ".join(n.upper() for n in names)
        raise EvokdError(f"{args.stage} takes at most {len(names)} positional arguments: {usage}")
    values = dict(zip(names, args.positional))
    for key in ("port", "gpu_num", "gpu_idx"):
        if key in values:
            try:
                values[key] = int(values[key])
            except ValueError:
                raise EvokdError(
                    f"{key.upper()} {values[key]!r}: expected a whole number"
                ) from None
    return values


def run(args):
    from evokd.errors import EvokdError

    pos = _positional(args)
    root = args.root or pos.get("root") or os.environ.get("EVOKD_ROOT") or "."
    if not os.path.isdir(root):
        raise EvokdError(f"ROOT {root}: no such folder (expected the evokd repository root)")
    _paths_from_here(args)
    os.chdir(root)
    if args.stage == "eval_model":
        return _evaluate(args, pos)
    return _train(args, pos)


def _paths_from_here(args):
    """The paths typed on the command line, made absolute before changing to ROOT: they are
    read from the caller's folder (the plan's own paths stay relative to ROOT)."""
    for key in ("data", "save_dir", "checkpoint"):
        if getattr(args, key):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    if os.path.isfile(args.preset):  # a plan file rather than a preset name
        args.preset = os.path.abspath(args.preset)


def _chain(args, gpus, port, stage_dirs=None, evaluate_args=None):
    """The chain of the preset with the flags' changes: another data folder, another
    budget for the recipe's stage."""
    import dataclasses

    from evokd.chain.plan import load_plan
    from evokd.chain.runner import Chain
    from evokd.core.devices import Devices

    plan = load_plan(args.preset)
    changes = {}
    if args.data:
        changes.update(data=args.data, prepare=None)
    if args.max_epoch and args.stage in plan.stage_names:
        budget = {"max_epoch": args.max_epoch, "max_update": None}
        changes["stages"] = [
            dataclasses.replace(s, **budget) if s.name == args.stage else s for s in plan.stages
        ]
    plan = dataclasses.replace(plan, **changes)
    extra = list(getattr(args, "passthrough", []))
    devices = Devices(gpus=gpus, master_port=port or 29500)
    # the original scripts show fairseq's own output: so do the recipes
    return Chain(plan, devices=devices, extra_args=extra, stage_dirs=stage_dirs,
                 evaluate_args=evaluate_args, verbose=True)  # fmt: skip


def _train(args, pos):
    import shlex

    gpus = args.gpus if args.gpus is not None else pos.get("gpu_num")
    stage_dirs = {args.stage: args.save_dir} if args.save_dir else None
    chain = _chain(args, gpus, args.master_port or pos.get("port"), stage_dirs)
    stage = chain.plan.stage(args.stage)
    if args.dry_run:
        chain.check([stage], data_required=False)
        print(shlex.join(chain.trainer.train_command(stage)))
        return 0
    chain.run(only=[stage.name], evaluate=False, hint=lambda s: f"bin/{s.name}.sh")
    folder = chain.layout.stage_dir(stage)
    print(f"stage {stage.name} finished: {folder}; evaluate with bin/eval_model.sh")
    return 0


def _evaluate(args, pos):
    gpu = pos.get("gpu_idx")
    if gpu is not None and gpu >= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    average = {"average_last": args.average_last} if args.average_last else None
    chain = _chain(args, 0 if gpu is not None and gpu < 0 else None, None, evaluate_args=average)
    if args.checkpoint:
        from evokd.evaluation.evaluate import evaluate_checkpoint

        scores = evaluate_checkpoint(args.checkpoint, chain.plan.data, **chain.evaluate_args)
        print(scores)
        return 0
    from evokd.chain.report import markdown_table

    print(markdown_table(chain.report()))
    print(f"\nresults: {chain.layout.results}/results.md, results.json, results.png")
    return 0
