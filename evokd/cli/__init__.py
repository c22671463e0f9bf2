"""The ``evokd`` command: one subcommand per module of this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args)``; heavy imports
live inside ``run`` so that ``evokd --help`` stays fast.
"""

import argparse
import importlib
import logging
import os
import sys

from evokd.errors import EvokdError

# name -> (module, one-line help). Order is the order of ``evokd --help``.
COMMANDS = {
    "prepare": ("evokd.cli.prepare", "tokenize, BPE and binarize a parallel corpus"),
    "chain": ("evokd.cli.chain", "run a chain plan (EKD, TAKD, ...): train, evaluate, report"),
    "recipe": ("evokd.cli.recipe", "one stage of the chain, as the bin/*.sh recipes run it"),
    "cache-teacher": (
        "evokd.cli.cache_teacher",
        "run a teacher once and store its top-K predictions for KD",
    ),
    "distill-data": (
        "evokd.cli.distill_data",
        "translate a subset with a teacher: sequence-level KD data for fairseq-train",
    ),
    "mckd": ("evokd.cli.mckd", "collaborative multi-stage relabelling (MCKD) with two students"),
    "patch": (
        "evokd.cli.patch",
        "fine-tune a student on its teacher's feedback where it errs most (MT-Patcher)",
    ),
    "bench": ("evokd.cli.bench", "time per update of KD (online, cached) against plain training"),
    "evaluate": (
        "evokd.cli.evaluate",
        "translate a test set and score it (tokenized BLEU, sacreBLEU, chrF)",
    ),
    "export": ("evokd.cli.export", "convert a checkpoint to a CTranslate2 model (int8, float32)"),
    "bench-translate": (
        "evokd.cli.bench_translate",
        "translation speed and BLEU: teacher, student, student in CTranslate2",
    ),
}


def _setup_logging():
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
        force=True,  # importing fairseq configures the root logger already
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="evokd",
        description="Knowledge distillation for fairseq translation models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    """``evokd COMMAND [options] [-- passthrough flags]``: what follows ``--`` is left
    unparsed in ``args.passthrough`` (extra fairseq flags for the commands that take them)."""
    _setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.passthrough = passthrough
    try:
        return args._run(args) or 0
    except EvokdError as exc:
        print(f"evokd {args.command}: error: {exc}", file=sys.stderr)
        return 2


def add_device_arguments(parser):
    """--processes and --cpu, for the commands that run a model over a dataset."""
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="processes: one per GPU with CUDA, else N CPU processes sharing the cores "
        "(default: 1)",
    )
    parser.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
