"""Run a plan stage by stage: train, skip what is finished, resume what was interrupted,
evaluate every stage and write the report.

Each stage trains with stock ``fairseq-train --user-dir evokd`` (``torchrun -m
evokd.train`` for several processes) into its own folder ``checkpoints/<run>/<stage>/``.
A stage folder holds ``evokd_stage.json``: which stage owns it (a folder of another stage
is never reused) and, once ``fairseq-train`` has finished, the updates and training time.
A stage with that record and the same budget is skipped; a stage without it is started
again, and fairseq resumes it from its ``checkpoint_last.pt``.
"""

import fcntl
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from evokd.errors import EvokdError
from evokd.plan import flags_to_args, ordered, validate

logger = logging.getLogger(__name__)

EVOKD_DIR = str(Path(__file__).resolve().parent)
STAGE_RECORD = "evokd_stage.json"
KD_DEFAULTS = {"kd-alpha": 0.5, "kd-temperature": 1.0}


class Devices:
    """Where a stage trains: ``gpus`` 0 is the CPU; N > 1 processes start with torchrun.

    Without CUDA, N > 1 gives N CPU processes (gloo). Several machines: set NNODES,
    NODE_RANK and MASTER_ADDR in the environment (torchrun's meaning) on each of them.
    """

    def __init__(self, gpus=None, master_port=29500, environ=None):
        import torch

        env = os.environ if environ is None else environ
        self.cuda = torch.cuda.is_available() and gpus != 0
        if gpus is None:
            gpus = torch.cuda.device_count() if self.cuda else 1
        self.procs = max(1, gpus)
        self.nnodes = int(env.get("NNODES", "1"))
        self.node_rank = int(env.get("NODE_RANK", "0"))
        self.master_addr = env.get("MASTER_ADDR")
        self.master_port = master_port

    @property
    def world_size(self):
        return self.procs * self.nnodes

    def describe(self):
        kind = "GPU" if self.cuda else "CPU process"
        nodes = f" on each of {self.nnodes} machines" if self.nnodes > 1 else ""
        return f"{self.procs} {kind}{'es' if not self.cuda and self.procs > 1 else ''}{nodes}"

    def launcher(self):
        """The command that starts fairseq-train in every process."""
        if self.world_size == 1:
            return [_script("fairseq-train")]
        cmd = [_script("torchrun"), "--nproc-per-node", str(self.procs)]
        cmd += ["--master-port", str(self.master_port)]
        if self.nnodes > 1:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
            if self.master_addr:
                cmd += ["--master-addr", self.master_addr]
        return cmd + ["-m", "evokd.train"]

    def flags(self):
        if self.world_size == 1:
            return [] if self.cuda else ["--cpu"]
        flags = ["--distributed-world-size", str(self.world_size)]
        if self.cuda:
            return flags + ["--ddp-backend", "pytorch_ddp"]  # NCCL
        return flags + ["--cpu", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]


def _script(name):
    """A console script of this environment, else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _die_with_parent():
    """Linux: the training process dies with the chain, so a rerun never races it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Chain:
    """One plan run: stage folders, training commands, evaluation and the report."""

    def __init__(
        self,
        plan,
        run_name=None,
        checkpoints="checkpoints",
        results="results",
        devices=None,
        extra_args=(),
        evaluate_args=None,
    ):
        self.plan = plan
        self.run_name = run_name or plan.name
        self.checkpoints = Path(checkpoints) / self.run_name
        self.results = Path(results) / self.run_name
        self.devices = devices or Devices()
        self.extra_args = list(extra_args)
        self.evaluate_args = {**plan.evaluate, **(evaluate_args or {})}
        self.stage_dirs = {}

    # --- where things are --------------------------------------------------------------

    def stage_dir(self, stage):
        return Path(self.stage_dirs.get(stage.name, self.checkpoints / stage.name))

    def best_checkpoint(self, name_or_path):
        """A stage's best checkpoint, or a checkpoint file given directly."""
        if name_or_path in self.plan.stage_names:
            return self.stage_dir(self.plan.stage(name_or_path)) / "checkpoint_best.pt"
        return Path(name_or_path)

    def stage_data(self, stage):
        """The binarized folder a stage trains on."""
        if stage.data:
            return stage.data
        if stage.seqkd:
            spec = stage.seqkd
            suffix = "+refs" if spec.get("keep-references") else ""
            teacher = (
                Path(spec["teacher"]).stem
                if spec["teacher"] not in self.plan.stage_names
                else spec["teacher"]
            )
            return f"{self.plan.data.rstrip('/')}.seqkd-{self.run_name}-{teacher}{suffix}"
        return self.plan.data

    def record(self, stage):
        path = self.stage_dir(stage) / STAGE_RECORD
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def budget(self, stage):
        return {"max_epoch": stage.max_epoch, "max_update": stage.max_update}

    def is_finished(self, stage):
        record = self.record(stage)
        return bool(
            record
            and record.get("finished")
            and record.get("budget") == self.budget(stage)
            and (self.stage_dir(stage) / "checkpoint_best.pt").is_file()
        )

    # --- checks before any training ----------------------------------------------------

    def check(self, stages):
        """Everything that can be wrong before training starts, each error naming a stage."""
        validate(self.plan)
        for stage in stages:
            self.check_owner(stage)
        return True

    def check_owner(self, stage):
        """A stage folder holding another stage's record is never reused."""
        record = self.record(stage)
        if record is None:
            return
        mine = self.identity(stage)
        theirs = {k: record.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(
                f"{k}: {theirs[k]!r} there, {mine[k]!r} here" for k in mine if theirs[k] != mine[k]
            )
            raise EvokdError(
                f"stage {stage.name}: {self.stage_dir(stage)} holds checkpoints of another "
                f"stage ({diff}); give each stage its own --save-dir"
            )

    def identity(self, stage):
        return {
            "stage": stage.name,
            "arch": stage.arch,
            "teacher": stage.teacher,
            "init_from": stage.init_from,
            "data": os.path.abspath(self.stage_data(stage)),
        }

    def check_prerequisites(self, stage, hint=None):
        """The teacher and init stages must be finished (or be checkpoint files)."""
        for key, ref in stage.references():
            if ref in self.plan.stage_names:
                other = self.plan.stage(ref)
                if not self.is_finished(other):
                    how = (
                        hint(other)
                        if hint
                        else f"evokd chain --plan {self.plan.path} --stage {ref}"
                    )
                    raise EvokdError(
                        f"stage {stage.name} needs its {key} {ref}, which has not been "
                        f"trained yet ({self.best_checkpoint(ref)} missing): run {how} first"
                    )
            elif not os.path.isfile(ref):
                raise EvokdError(f"stage {stage.name}: {key} {ref}: no such checkpoint file")

    # --- training ----------------------------------------------------------------------

    def train_command(self, stage):
        plan = self.plan
        # evokd_translation for every stage: it is fairseq's translation task plus the
        # teacher, and it batches a resumed run exactly like an uninterrupted one
        flags = {"task": "evokd_translation", **plan.train}
        if stage.teacher:
            flags["criterion"] = "word_kd"
            flags.update({**KD_DEFAULTS, **plan.kd, **stage.kd})
            flags["teacher-path"] = str(self.best_checkpoint(stage.teacher))
        if stage.init_from:
            flags["init-student-from"] = str(self.best_checkpoint(stage.init_from))
        flags.update(stage.flags)
        flags.update(self.budget(stage))
        world = self.devices.world_size
        if world > 1 and flags.get("max-tokens"):  # keep the single-process batch
            flags["max-tokens"] = math.ceil(int(flags["max-tokens"]) / world)
        cmd = self.devices.launcher() + [self.stage_data(stage), "--user-dir", EVOKD_DIR]
        cmd += ["--arch", stage.arch, "--save-dir", str(self.stage_dir(stage))]
        return cmd + flags_to_args(flags) + self.devices.flags() + self.extra_args

    def train(self, stage):
        """Train one stage (resuming it if it was interrupted); returns its record."""
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        self.check_owner(stage)
        if stage.seqkd:
            self.distill(stage)
        cmd = self.train_command(stage)
        record = {**self.identity(stage), "budget": self.budget(stage), "finished": False}
        record["command"] = cmd
        _write_json(folder / STAGE_RECORD, record)
        resumed = (folder / "checkpoint_last.pt").is_file()
        logger.info(
            "stage %s: %s on %s -> %s",
            stage.name,
            "resuming" if resumed else "training",
            self.devices.describe(),
            folder,
        )
        start = time.time()
        with open(folder / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise EvokdError(
                    f"stage {stage.name}: {folder} is being trained by another process"
                ) from exc
            _run_logged(cmd, folder / "train.log")
        record.update(finished=True, **_training_stats(folder))
        record["wall_seconds"] = record.get("train_seconds") or time.time() - start
        _write_json(folder / STAGE_RECORD, record)
        return record

    def distill(self, stage):
        """Sequence-level KD data for ``stage``: the teacher translates the training source."""
        out = Path(self.stage_data(stage))
        if (out / "distill.json").is_file():
            return
        from evokd.distill_data import distill_data

        spec = {k.replace("-", "_"): v for k, v in stage.seqkd.items() if k != "teacher"}
        teacher = self.best_checkpoint(stage.seqkd["teacher"])
        logger.info(
            "stage %s: distilling the training data with %s -> %s", stage.name, teacher, out
        )
        distill_data(str(teacher), self.plan.data, str(out), cpu=not self.devices.cuda, **spec)

    # --- the whole run -----------------------------------------------------------------

    def run(self, only=None, evaluate=True, hint=None):
        """Train the stages (all, or ``only``), then evaluate and report; returns the rows."""
        stages = ordered(self.plan)
        if only:
            wanted = set(only)
            for name in wanted:
                self.plan.stage(name)  # an unknown name is an error
            stages = [s for s in stages if s.name in wanted]
        self.prepare_data()
        self.check(stages)
        if only:
            for stage in stages:
                if not self.is_finished(stage):
                    self.check_prerequisites(stage, hint)
        for stage in stages:
            if self.is_finished(stage):
                logger.info("stage %s: finished earlier, skipped", stage.name)
                continue
            self.check_prerequisites(stage, hint)
            self.train(stage)
        if not evaluate:
            return []
        return self.report()

    def prepare_data(self):
        """Build the plan's data with ``evokd prepare`` if it is not there yet."""
        data = Path(self.plan.data)
        if (data / "text" / "prepare.json").is_file() or (
            any(data.glob("dict.*.txt")) and not (data / ".prepare-incomplete").exists()
        ):
            return
        if not self.plan.prepare:
            validate(self.plan)  # raises the missing-data error
            return
        spec = dict(self.plan.prepare)
        corpus = spec.pop("corpus", "multi30k")
        argv = ["prepare", str(corpus), "--out", str(data)] + flags_to_args(spec)
        logger.info("preparing the data: evokd %s", " ".join(argv))
        from evokd.cli import prepare

        parser = _subparser(prepare)
        prepare.run(parser.parse_args(argv[1:]))

    # --- evaluation and report ---------------------------------------------------------

    def evaluate_stage(self, stage):
        """Scores of a stage's best checkpoint, cached until the checkpoint changes."""
        from evokd.evaluate import evaluate_checkpoint

        checkpoint = self.stage_dir(stage) / "checkpoint_best.pt"
        cache = self.results / "stages" / f"{stage.name}.json"
        stamp = _stamp(checkpoint)
        if cache.is_file():
            with open(cache, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("checkpoint_stamp") == stamp:
                return cached
        cache.parent.mkdir(parents=True, exist_ok=True)
        args = dict(self.evaluate_args)
        scores = evaluate_checkpoint(
            str(checkpoint),
            self.plan.data,
            cpu=not self.devices.cuda,
            out_dir=str(cache.parent / stage.name),
            **args,
        )
        scores["checkpoint_stamp"] = stamp
        _write_json(cache, scores)
        return scores

    def rows(self):
        rows = []
        for stage in ordered(self.plan):
            record = self.record(stage) or {}
            row = {
                "stage": stage.name,
                "architecture": stage.arch,
                "teacher": stage.teacher,
                "init_from": stage.init_from,
                "updates": record.get("updates"),
                "wall_seconds": record.get("wall_seconds"),
                "finished": self.is_finished(stage),
            }
            if row["finished"]:
                scores = self.evaluate_stage(stage)
                row.update({k: v for k, v in scores.items() if k not in row})
            rows.append(row)
        return rows

    def report(self):
        from evokd.report import markdown_table, write_report

        rows = self.rows()
        write_report(
            self.results, rows, title=f"{self.run_name}: {self.plan.description or self.plan.name}"
        )
        print(markdown_table(rows))
        print(f"\nresults: {self.results}/results.md, results.json, results.png")
        return rows


def _subparser(module):
    import argparse

    parser = argparse.ArgumentParser(prog=f"evokd {module.__name__.rsplit('.', 1)[-1]}")
    module.add_arguments(parser)
    return parser


def _stamp(path):
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def _write_json(path, value):
    tmp = Path(f"{path}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def _run_logged(cmd, log_path):
    """Run ``cmd``, passing its output through and appending it to ``log_path``."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in proc.stdout:
            sys.stderr.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        raise EvokdError(f"training failed (exit status {code}); see {log_path}")


def _training_stats(folder):
    """Updates and cumulative training time, from the stage's own checkpoint_last.pt."""
    from evokd.checkpoint import load_checkpoint

    state = load_checkpoint(str(folder / "checkpoint_last.pt"))
    history = state.get("optimizer_history") or [{}]
    extra = state.get("extra_state") or {}
    return {
        "updates": _number(history[-1].get("num_updates"), int),
        "epochs": int((extra.get("train_iterator") or {}).get("epoch", 1)) - 1,
        "train_seconds": _number(extra.get("previous_training_time"), float),
    }


def _number(value, kind):
    """A plain number (distributed runs store some of these as tensors)."""
    if value is None:
        return None
    return kind(value.item() if hasattr(value, "item") else value)
