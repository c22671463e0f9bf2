"""The ``evokd`` command: one subcommand per module of this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args)``; torch and
fairseq are imported inside ``run`` only, so that ``evokd --help`` answers at once (a test
checks that printing usage imports neither).

What the person at the keyboard sees of a fault is one line: an :class:`EvokdError`'s
message, a file error with its file and cause, or, after Ctrl-C or SIGTERM, what was
interrupted and the command that resumes it (exit 130 and 143). ``--verbose`` (or
``EVOKD_VERBOSE=1``) shows the traceback and the libraries' warnings as well.
"""

import argparse
import importlib
import io
import logging
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings

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
    "verify": ("evokd.cli.verify", "check a teacher cache or distilled data against its checksums"),
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


# libraries whose INFO lines are their own business: shown with --verbose, else warnings only
QUIET_LOGGERS = ("fairseq", "fairseq_cli", "hydra", "transformers")


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
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=os.environ.get("EVOKD_VERBOSE", "") not in ("", "0"),
        help="show tracebacks and library warnings (also: EVOKD_VERBOSE=1)",
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: every step stops and cleans up as for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None):
    """``evokd COMMAND [options] [-- passthrough flags]``: what follows ``--`` is left
    unparsed in ``args.passthrough`` (extra fairseq flags for the commands that take them)."""
    _setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = "evokd " + shlex.join(argv)
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.passthrough = passthrough
    if not args.verbose:
        warnings.simplefilter("ignore")  # deprecation notes of hydra, omegaconf and fairseq
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    if not args.verbose:
        for name in QUIET_LOGGERS:  # fairseq run in-process (caches, distilled data)
            logging.getLogger(name).setLevel(logging.WARNING)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args._run(args) or 0
    except EvokdError as exc:
        return _fail(args, f"error: {exc}", 2)
    except OSError as exc:  # a full disk, a permission, a missing file: the file and the cause
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        where = where or file_in_use(exc.__traceback__) or ""
        cause = exc.strerror or str(exc)
        return _fail(args, f"error: {where + ': ' if where else ''}{cause}", 1)
    except Terminated:
        return _fail(args, f"terminated (SIGTERM); finished work is kept: {typed!r} resumes", 143)
    except KeyboardInterrupt:
        return _fail(args, f"interrupted (Ctrl-C); finished work is kept: {typed!r} resumes", 130)
    finally:
        for name, level in levels.items():  # a caller in the same process keeps its logging
            logging.getLogger(name).setLevel(level)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def file_in_use(tb):
    """The file a write or read without a file name in its error (a full disk fails in
    ``write`` or ``close``) was on: the open or just closed file object nearest to where
    the error was raised, a file being written before one being read; None if none."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for writing in (True, False):
        for frame in reversed(frames):
            for value in frame.f_locals.values():
                name, mode = getattr(value, "name", None), getattr(value, "mode", "")
                if not isinstance(value, io.IOBase) or not isinstance(name, str):
                    continue
                if not writing or any(c in str(mode) for c in "wax+"):
                    return name
    return None


def _fail(args, message, code):
    if args.verbose:
        traceback.print_exc()
    print(f"evokd {args.command}: {message}", file=sys.stderr)
    return code


def add_passthrough_usage(parser, what="FAIRSEQ_TRAIN_FLAGS"):
    """End the usage line of ``parser`` with ``[-- WHAT ...]``: the flags after ``--``, left
    unparsed (see :func:`main`). Call it after the parser's last argument."""
    usage = parser.format_usage().strip().removeprefix("usage: ")
    parser.usage = usage.replace("%", "%%") + f" [-- {what} ...]"


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


def add_decoding_arguments(parser, title="decoding (fairseq-generate flags)", batch_size=False):
    """--beam, --lenpen, --max-len-a, --max-len-b and --max-tokens (with ``batch_size``, or
    --batch-size instead), with the defaults of :data:`evokd.core.decoding.DECODING`."""
    from evokd.core.decoding import DECODING

    group = parser.add_argument_group(title)
    group.add_argument(
        "--beam", type=int, default=DECODING["beam"], metavar="N",
        help="beam size (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--lenpen", type=float, default=DECODING["lenpen"], metavar="X",
        help="length penalty: < 1.0 favours shorter, > 1.0 longer output (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--max-len-a", type=float, default=DECODING["max_len_a"], metavar="A",
        help="hypotheses have at most A x source length + B tokens, the source length being "
        "the longest of its batch, with EOS (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--max-len-b", type=int, default=DECODING["max_len_b"], metavar="B",
        help="see --max-len-a (default: %(default)s)",
    )  # fmt: skip
    batching = group.add_mutually_exclusive_group() if batch_size else group
    batching.add_argument(
        "--max-tokens", type=int, default=None if batch_size else DECODING["max_tokens"],
        metavar="N", help=f"tokens per batch, source or target, whichever is longer (default: "
        f"{DECODING['max_tokens']}{' unless --batch-size is given' if batch_size else ''})",
    )  # fmt: skip
    if batch_size:
        batching.add_argument("--batch-size", type=int, metavar="N", help="sentences per batch")
    return group


def add_server_arguments(group):
    """--teacher-model, --teacher-api, --concurrency, --timeout and --retries: how a server
    teacher is asked."""
    group.add_argument(
        "--teacher-model", metavar="NAME", help="the served model's name (server teachers)"
    )
    group.add_argument(
        "--teacher-api", choices=("chat", "completions"), default="chat",
        help="the server's endpoint: chat/completions or completions (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--concurrency", type=int, default=4, metavar="N",
        help="server requests in flight at once (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--timeout", type=float, default=120.0, metavar="S",
        help="seconds a server request may take (default: 120)",
    )  # fmt: skip
    group.add_argument(
        "--retries", type=int, default=3, metavar="N",
        help="retries of a refused, timed-out, 429 or 5xx request, after 1, 2, 4, ... seconds "
        "(default: 3)",
    )  # fmt: skip
