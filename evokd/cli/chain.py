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
  evokd chain --plan tiny                  # the demo: 14-21 minutes on 2 CPU cores
  evokd chain --plan paper --gpus 4        # torchrun, NCCL; the paper's effective batch
  evokd chain --plan my_plan.yaml --stage junior_teacher --stage senior_teacher
  evokd chain --plan tiny -- --fp16        # after --: fairseq-train flags for every stage
  evokd chain --plan paper --jobs 4        # independent stages at once, the GPUs split
  evokd chain --plan paper --launcher slurm --requeue   # every step a Slurm job
  evokd chain --plan paper --launcher slurm --status    # each step's job and state
"""

import sys
import threading
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
    add_scheduler_arguments(parser)
    add_passthrough_usage(parser)


def add_scheduler_arguments(parser):
    group = parser.add_argument_group("several steps at once, or on Slurm")
    group.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="run every step (stage, teacher cache, distilled data) whose prerequisites are "
        "finished, up to N at a time, the machine divided between them: the GPUs (--gpus "
        "each, default an equal share), or on the CPU --threads each. A failed step stops "
        "the steps that need it; the others finish. Default: the plan's 'jobs', else 1",
    )
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads of each training process (OMP_NUM_THREADS). Default: torch's "
        "with one job, cores // jobs with several. The same threads give the same "
        "checkpoints, whatever runs beside",
    )
    group.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="slurm: submit every step as a Slurm job (sbatch) after the jobs of the steps it "
        "needs, with the plan's 'slurm:' resources, then the report after them all; again: "
        "submits only what is neither finished nor queued. With --dry-run: print the "
        "sbatch scripts (default: local)",
    )
    group.add_argument(
        "--status",
        action="store_true",
        help="with --launcher slurm: each step's job id and state",
    )
    group.add_argument(
        "--requeue",
        action="store_true",
        help="with --launcher slurm: a preempted job, or one near its time limit, is "
        "requeued and resumes from its checkpoint_last.pt",
    )
    group.add_argument(
        "--step",
        metavar="KIND:NAME",
        help="run one step of the chain, as a Slurm job does: stage:NAME, cache:FOLDER or "
        "distill:FOLDER; its prerequisites must be finished",
    )


_PROGRESS_LOCK = threading.Lock()


def _progress(line):
    """One whole line on stderr, also when jobs of ``--jobs N`` report at once (``print``
    writes the line and its newline separately, so two threads could glue their lines)."""
    with _PROGRESS_LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def build_chain(args, plan, seed=None):
    from evokd.chain.runner import Chain
    from evokd.core.devices import Devices

    extra = list(getattr(args, "passthrough", []))
    devices = Devices(
        gpus=args.gpus, master_port=args.master_port, threads=getattr(args, "threads", None)
    )
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
    from evokd.chain.plan import load_plan
    from evokd.files import check_name

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
    if args.step or args.status or args.launcher == "slurm":
        return run_scheduled(args, plan, chains, seeds)
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
            rows[chain.seed] = chain.run(
                only=args.stage, evaluate=not args.no_evaluate, jobs=args.jobs or plan.jobs
            )
        if rows[chain.seed]:
            print(markdown_table(rows[chain.seed]))
            print(f"\nresults: {chain.layout.results}/results.md, results.json, results.png")
    if len(chains) > 1 and all(rows.values()):
        results = Path(args.results) / (args.run or plan.name)
        print(report_seeds(plan, rows, results))
        print(f"\nover {len(chains)} seeds: {results}/results.md")
    return 0


def run_scheduled(args, plan, chains, seeds):
    """``--step``: one step of one chain; ``--launcher slurm``: submit (``--dry-run``: print
    the scripts; ``--status``: the jobs' states)."""
    from evokd.chain.plan import validate
    from evokd.chain.slurm import SlurmChain
    from evokd.errors import EvokdError

    if args.step:
        if len(chains) > 1:
            raise EvokdError("--step runs one step of one run: give one seed (--seeds S)")
        chains[0].run_step(args.step)
        return 0
    if args.launcher != "slurm":
        raise EvokdError("--status and --requeue are for --launcher slurm")
    shared = {}  # stage folder -> job id: a stage the seeds share is submitted once
    for chain, seed in zip(chains, seeds):
        command = step_command(args, plan, seed)
        slurm = SlurmChain(chain, command, requeue=args.requeue, only=args.stage)
        if args.status:
            for key, job, state in slurm.status():
                print(f"{key:40} {job:>10}  {state}")
            continue
        stages = chain.stages(args.stage)
        chain.check(stages, data_required=False)  # a bad plan fails before data
        if not args.dry_run:  # prepared here once, not by the first jobs at once
            chain.prepare_data()
            validate(plan)
            chain.check(stages)
            for stage in stages if args.stage else []:
                if not chain.trainer.is_finished(stage):
                    chain.check_prerequisites(stage)
        slurm.submit(dry_run=args.dry_run, report=not args.no_evaluate, elsewhere=shared)
    return 0


def step_command(args, plan, seed):
    """``command(key, gpus)``: the ``evokd chain`` command line that runs step ``key`` of
    this run (``report``: the evaluation and report) with ``gpus`` processes."""
    from evokd.core.devices import script

    base = [script("evokd"), "chain", "--plan", plan.path, "--checkpoints", args.checkpoints]
    base += ["--results", args.results, "--master-port", str(args.master_port)]
    for flag, value in (("--run", args.run), ("--data", args.data), ("--threads", args.threads)):
        if value is not None:
            base += [flag, str(value)]
    if seed is not None:
        base += ["--seeds", str(seed)]
    if args.verbose:
        base.append("--verbose")
    passthrough = list(getattr(args, "passthrough", []))

    def command(key, gpus=None):
        gpus = gpus if gpus is not None else args.gpus
        cmd = base + (["--gpus", str(gpus)] if gpus is not None else [])
        cmd += ["--evaluate-only"] if key == "report" else ["--step", key]
        return cmd + (["--", *passthrough] if passthrough else [])

    return command
