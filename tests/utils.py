"""Helpers for evokd tests: tiny binarized data, tiny models, CLI runs.

Like fairseq's own tests/utils.py: a few hundred real sentence pairs (the shipped
Multi30k), binarized with fairseq-preprocess, 2-layer models trained for an epoch.
"""

import contextlib
import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import torch
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import evokd
from evokd.core.devices import torch_threads
from evokd.core.generate import THREAD_VARIABLES

EVOKD_DIR = os.path.dirname(os.path.abspath(evokd.__file__))
CORPUS = Path(EVOKD_DIR) / "corpora" / "multi30k"

# Tiny widths on top of the tiny architectures: seconds per epoch on a CPU.
TINY_MODEL = [
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]  # fmt: skip
TRAIN_FLAGS = [
    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
    "--label-smoothing", "0.1", "--cpu", "--seed", "1", "--num-workers", "0",
    "--no-progress-bar", "--log-format", "json", "--log-interval", "1",
]  # fmt: skip


# This environment's console scripts first (the recipes in bin/ look for `evokd` on PATH).
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def fairseq_script(name):
    """Command for a console script of this environment (fairseq-train, evokd, ...)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return [str(candidate)]
    modules = {
        "fairseq-train": "fairseq_cli.train",
        "fairseq-generate": "fairseq_cli.generate",
        "fairseq-preprocess": "fairseq_cli.preprocess",
        "evokd": "evokd.cli",
        "evokd-train": "evokd.train",
        "torchrun": "torch.distributed.run",
    }
    return [sys.executable, "-m", modules[name]]


def run(cmd, cwd=None, check=True, env=None):
    """Run a command, returning (returncode, combined output); fail loudly if asked."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, "PATH": PATH, "PYTHONWARNINGS": "ignore", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}")
    return proc.returncode, proc.stdout


def read_pairs(split, n):
    out = []
    for lang in ("de", "en"):
        with gzip.open(CORPUS / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            out.append([next(f).strip() for _ in range(n)])
    return list(zip(*out))


def make_data_bin(root, n_train=200, n_valid=40):
    """Lowercased, whitespace-split Multi30k pairs binarized with a joined dictionary."""
    root = Path(root)
    text = root / "text"
    text.mkdir(parents=True, exist_ok=True)
    for split, source, n in (("train", "train", n_train), ("valid", "val", n_valid)):
        pairs = read_pairs(source, n)
        for i, lang in enumerate(("de", "en")):
            lines = [" ".join(re.findall(r"\w+|[^\w\s]", p[i].lower())) for p in pairs]
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dest = root / "bin"
    argv = ["--source-lang", "de", "--target-lang", "en", "--joined-dictionary"]
    argv += ["--trainpref", str(text / "train"), "--validpref", str(text / "valid")]
    argv += ["--testpref", str(text / "valid"), "--destdir", str(dest), "--workers", "1"]
    out = io.StringIO()  # fairseq-preprocess in this process
    assert fairseq_main("preprocess", argv, out) == 0, out.getvalue()[-4000:]
    return dest


def train_command(data_bin, save_dir, arch, extra=(), epochs=1):
    """The flags of a tiny training run (without the program)."""
    argv = [str(data_bin), "--user-dir", EVOKD_DIR, "--arch", arch, "--save-dir", str(save_dir)]
    argv += TINY_MODEL + TRAIN_FLAGS + ["--max-epoch", str(epochs)] + list(extra)
    if "--criterion" not in extra:
        argv += ["--criterion", "label_smoothed_cross_entropy"]
    return argv


# fairseq's command-line programs this suite runs in its own process, by the module or
# console script that starts them.
MAINS = {
    "fairseq-train": "train", "fairseq_cli.train": "train",
    "fairseq_cli.generate": "generate", "fairseq_cli.preprocess": "preprocess",
}  # fmt: skip
_ONE_AT_A_TIME = threading.Lock()  # fairseq keeps its metrics and best score per process


def fairseq_program(cmd):
    """(program, argv, threads) of a one-process fairseq command line that may run in this
    process (``env VAR=...`` in front setting only thread counts), else None."""
    env = {}
    if cmd and cmd[0] == "env":
        cmd = list(cmd[1:])
        while cmd and "=" in cmd[0]:
            key, value = cmd.pop(0).split("=", 1)
            env[key] = value
    if set(env) - set(THREAD_VARIABLES) or not cmd:
        return None
    threads = int(env["OMP_NUM_THREADS"]) if "OMP_NUM_THREADS" in env else None
    if Path(cmd[0]).name == "fairseq-train":
        return "train", cmd[1:], threads
    if len(cmd) > 2 and cmd[1] == "-m" and cmd[2] in MAINS:
        return MAINS[cmd[2]], cmd[3:], threads
    return None


class _Tee:
    def __init__(self, *files):
        self.files = files

    def write(self, text):
        for f in self.files:
            f.write(text)

    def flush(self):
        for f in self.files:
            f.flush()


def fairseq_main(program, argv, out):
    """fairseq's ``program`` ("train", "generate" or "preprocess") on ``argv`` in this
    process, as fairseq's own tests run it (``distributed_utils.call_main(cfg,
    train.main)``): what it prints and logs go to the file ``out``; returns the exit status
    its command would have, an exception's traceback written where the program prints."""
    import traceback

    from fairseq import checkpoint_utils, distributed_utils, options
    from fairseq_cli import generate, preprocess
    from fairseq_cli import train as fairseq_train

    from evokd.core.runtime import FAIRSEQ_CONFIG_LOCK

    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    me = threading.get_ident()
    handler.addFilter(lambda record: record.thread == me)  # this run's records only...

    def others(record):
        return record.thread != me  # ... and only here

    elsewhere = list(logging.getLogger().handlers)
    for other in elsewhere:
        other.addFilter(others)
    # the INFO lines of the program, as its own process shows them (``evokd`` quiets them)
    quiet = [logging.getLogger(name) for name in ("", "fairseq", "fairseq_cli")]
    levels = [logger.level for logger in quiet]
    fairseq_logger = logging.getLogger("fairseq_cli.preprocess")
    handlers = list(fairseq_logger.handlers)
    quiet[0].addHandler(handler)
    for logger in quiet:
        logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            if program == "preprocess":
                preprocess.main(options.get_preprocessing_parser().parse_args(argv))
                return 0
            parser = (
                options.get_training_parser()
                if program == "train"
                else options.get_generation_parser()
            )
            with FAIRSEQ_CONFIG_LOCK:
                args = options.parse_args_and_arch(parser, input_args=argv)
                cfg = convert_namespace_to_omegaconf(args)
            if program == "generate":
                generate.main(cfg)
                return 0
            # fairseq keeps the best validation score of the process on a function
            # attribute; a new run starts without one, as a new fairseq-train process does
            if hasattr(checkpoint_utils.save_checkpoint, "best"):
                del checkpoint_utils.save_checkpoint.best
            distributed_utils.call_main(cfg, fairseq_train.main)
            return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:
        out.write(traceback.format_exc())
        return 1
    finally:
        quiet[0].removeHandler(handler)
        for other in elsewhere:
            other.removeFilter(others)
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        for extra in set(fairseq_logger.handlers) - set(handlers):  # preprocess.log's
            fairseq_logger.removeHandler(extra)
            extra.close()


def run_process_in_this_one(real):
    """A stand-in for :func:`evokd.processes.run_process` that runs fairseq's one-process
    commands in this process (one at a time; another at the same moment, or any other
    command, goes to ``real``): the same command line, without importing torch and fairseq
    again for each stage, translation and binarization."""

    def run_process(cmd, log, stream, env):
        program = fairseq_program(list(cmd))
        if program is None or set(env) - set(THREAD_VARIABLES):
            return real(cmd, log, stream, env)
        if not _ONE_AT_A_TIME.acquire(blocking=False):
            return real(cmd, log, stream, env)
        name, argv, threads = program
        threads = int(env.get("OMP_NUM_THREADS", 0)) or threads or torch.get_num_threads()
        try:
            with torch_threads(threads):
                return fairseq_main(name, argv, _Tee(log, sys.stderr) if stream else log)
        finally:
            _ONE_AT_A_TIME.release()

    return run_process


def generate_in_process(argv):
    """Stock fairseq-generate in this process; returns its output (H- lines, BLEU4 line).
    No data-loading worker process (``--num-workers 0``, as evokd runs it): a worker left to
    the garbage collector would hold this process up to 5 s as it is joined."""
    out = io.StringIO()
    code = fairseq_main("generate", [*map(str, argv), "--num-workers", "0"], out)
    assert code == 0, out.getvalue()[-4000:]
    return out.getvalue()


def train_in_process(argv):
    """fairseq-train in this process; returns (exit code, log text)."""
    out = io.StringIO()
    code = fairseq_main("train", [str(a) for a in argv], out)
    return code, out.getvalue()


def train(data_bin, save_dir, arch, extra=(), epochs=1, script=None):
    """Train a tiny model; returns (the log as parsed JSON records, the log text). In this
    process unless ``script`` names a console script to run instead."""
    argv = train_command(data_bin, save_dir, arch, extra, epochs)
    if script is None:
        code, out = train_in_process(argv)
        if code != 0:
            raise AssertionError(f"fairseq-train {' '.join(argv)} failed:\n{out[-4000:]}")
    else:
        _, out = run(fairseq_script(script) + argv)
    return parse_json_log(out), out


def parse_json_log(output):
    """fairseq's ``--log-format json`` records, each tagged with its logger in ``"_tag"``
    (``train_inner`` per update, ``valid`` and ``train`` per epoch)."""
    records = []
    for line in output.splitlines():
        # "... | INFO | train_inner | {...}", or "INFO:train_inner:{...}" under torchrun
        match = re.search(r"(\w+)\s*[|:]\s*(\{.*\})\s*$", line)
        if not match:
            continue
        try:
            record = json.loads(match.group(2))
        except json.JSONDecodeError:
            continue
        record["_tag"] = match.group(1)
        records.append(record)
    return records


def updates(records):
    """(num_updates, loss, nll_loss, gnorm) of every logged update."""
    return [
        (r["num_updates"], r["loss"], r["nll_loss"], r["gnorm"])
        for r in records
        if r["_tag"] == "train_inner"
    ]


def build_task_model_criterion(data_bin, extra=()):
    """Set up task, model and criterion in-process, through fairseq's own CLI parser."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(data_bin), "--user-dir", EVOKD_DIR] + TINY_MODEL + TRAIN_FLAGS + list(extra)
    if "--criterion" not in extra:
        argv += ["--criterion", "label_smoothed_cross_entropy"]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, model, criterion


def batch(task, indices, split="train"):
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in indices])


def interrupt_on_call(monkeypatch, module, name, n):
    """Make ``module.name`` raise KeyboardInterrupt (as if killed) on its ``n``-th call."""
    real = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return real


def evokd_in_process(argv, cwd=None, check=True):
    """``evokd ARGV`` in this process, from ``cwd``: (exit code, stdout and stderr). The
    current folder is restored after it (``evokd recipe`` changes to its ROOT)."""
    import contextlib
    import io

    from evokd import cli

    out, here = io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main([str(a) for a in argv])
    finally:
        os.chdir(here)
    if check and code != 0:
        raise AssertionError(f"evokd {' '.join(map(str, argv))} failed:\n{out.getvalue()[-4000:]}")
    return code, out.getvalue()
