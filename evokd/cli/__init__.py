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
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except EvokdError as exc:
        print(f"evokd {args.command}: error: {exc}", file=sys.stderr)
        return 2
