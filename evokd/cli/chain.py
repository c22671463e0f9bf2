"""Run a chain plan: every stage in order, then evaluate each and write the report.

A plan (YAML; presets: tiny, cpu, paper in evokd/plans/) lists the stages, each with its
architecture, its teacher (a stage or a checkpoint), the stage whose weights it starts
from, and its budget. The default plans hold the whole EKD chain (student, junior and
senior teachers, junior student, senior student, master student) and TAKD (assistant,
student). Rerunning skips finished stages and resumes an interrupted one from its
checkpoint_last.pt. A bad plan (unknown stage, cycle, unknown architecture, missing data)
is rejected before any training.

Output: checkpoints/RUN/STAGE/ (one folder per stage) and results/RUN/results.{json,md,png}.

examples:
  evokd chain --plan tiny                  # the demo: ~14 minutes on 2 CPU cores
  evokd chain --plan paper --gpus 4        # torchrun, NCCL; the paper's effective batch
  evokd chain --plan my_plan.yaml --stage junior_teacher --stage senior_teacher
  evokd chain --plan tiny -- --fp16        # after --: fairseq-train flags for every stage
"""

import sys
from pathlib import Path

from evokd.cli import add_passthrough_usage


def add_arguments(parser):
    parser.add_argument(
        "--plan", default="tiny", help="preset name (tiny, cpu, paper) or plan file (default: tiny)"
    )
    parser.add_argument("--run", metavar="NAME", help="run name (default: the plan's name)")
    parser.add_argument(
        "--data", metavar="DIR", help="binarized data to use instead of the plan's (not prepared)"
    )
    parser.add_argument(
        "--checkpoints",
        default="checkpoints",
        metavar="DIR",
        help="stage folders go to DIR/RUN/STAGE (default: checkpoints)",
    )
    parser.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="the report goes to DIR/RUN (default: results)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="processes per machine: 0 = CPU; N > 1 starts torchrun (NCCL on GPUs, gloo on "
        "CPU). max-tokens is divided by the world size so the effective batch stays the "
        "plan's. Default: every visible GPU, else 1 CPU process. Several machines: set "
        "NNODES, NODE_RANK and MASTER_ADDR",
    )
    parser.add_argument("--master-port", type=int, default=29500, help="torchrun's port")
    parser.add_argument(
        "--stage",
        action="append",
        metavar="NAME",
        help="train only this stage (repeatable); its teacher and init stages must be finished",
    )
    parser.add_argument(
        "--no-evaluate", action="store_true", help="train only; no evaluation or report"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the finished stages and write the report; train nothing",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="run the plan once per seed into RUN/seedS/ (default: the plan's 'seeds', else "
        "one run with its train seed); the plan's 'shared' stages train once for all seeds",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="stream fairseq's output (it always goes to each stage's train.log)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check of a real run before training (plan, data, teacher files, "
        "dictionaries, caches) and print every step in order with its command; train nothing",
    )
    add_passthrough_usage(parser)


def _progress(line):
    print(line, file=sys.stderr, flush=True)


def build_chain(args, plan, seed=None):
    from evokd.chain.runner import Chain
    from evokd.core.devices import Devices

    extra = list(getattr(args, "passthrough", []))
    devices = Devices(gpus=args.gpus, master_port=args.master_port)
    run_name = args.run or plan.name
    stage_dirs = {}
    if seed is not None:
        shared = Path(args.checkpoints) / run_name / "shared"
        stage_dirs = {name: shared / name for name in plan.shared}
        run_name = f"{run_name}/seed{seed}"
    return Chain(
        plan,
        run_name=run_name,
        checkpoints=args.checkpoints,
        results=args.results,
        devices=devices,
        extra_args=extra,
        stage_dirs=stage_dirs,
        seed=seed,
        verbose=getattr(args, "verbose", False),
        progress=_progress,
    )


def load(args):
    from evokd.chain.plan import check_name, load_plan

    if getattr(args, "run", None):
        check_name("--run", args.run)
    plan = load_plan(args.plan)
    if args.data:
        plan.data, plan.prepare = args.data, None
    return plan


def run(args):
    from evokd.chain.plan import validate
    from evokd.chain.report import markdown_table
    from evokd.chain.results import report_seeds

    plan = load(args)
    seeds = args.seeds or plan.seeds or [None]
    chains = [build_chain(args, plan, seed) for seed in seeds]
    if args.dry_run:
        from evokd.chain.dry_run import dry_run

        for chain in chains:
            print("\n".join(dry_run(chain, args.stage, evaluate=not args.no_evaluate)))
        return 0
    for chain in chains:  # every seed's commands parse before the first stage trains
        chain.check(plan.stages, data_required=False)
    rows = {}
    for chain in chains:
        if args.evaluate_only:
            validate(plan)
            rows[chain.seed] = chain.report()
        else:
            rows[chain.seed] = chain.run(only=args.stage, evaluate=not args.no_evaluate)
        if rows[chain.seed]:
            print(markdown_table(rows[chain.seed]))
            print(f"\nresults: {chain.layout.results}/results.md, results.json, results.png")
    if len(chains) > 1 and all(rows.values()):
        results = Path(args.results) / (args.run or plan.name)
        print(report_seeds(plan, rows, results))
        print(f"\nover {len(chains)} seeds: {results}/results.md")
    return 0
