"""Run a plan stage by stage: train, skip what is finished, resume what was interrupted,
evaluate every stage and write the report.

Each stage trains with stock ``fairseq-train --user-dir evokd`` (``torchrun -m
evokd.train`` for several processes) into its own folder ``checkpoints/<run>/<stage>/``.
A stage folder holds ``evokd_stage.json``: which stage owns it (a folder of another stage
is never reused) and, once ``fairseq-train`` has finished, the updates and training time.
A stage with that record and the same budget is skipped; a stage without it is started
again, and fairseq resumes it from its ``checkpoint_last.pt``.

A teacher is paid for once: a KD stage whose plan says ``kd: {cache: {topk: K}}`` reads the
teacher's top-K from a cache of that (teacher, training data) pair, built as a step of the
chain (``checkpoints/<run>/caches/``, recorded in ``steps/``) and shared by every stage with
the same teacher and data. Before the first stage trains, every stage's whole command is
parsed by fairseq's own training parser, so a typo in a late stage fails at once.
"""

import fcntl
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from evokd import files as steps
from evokd.chain.plan import flags_to_args, ordered, validate
from evokd.core.runtime import USER_DIR
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

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
        stage_dirs=None,
        seed=None,
        verbose=False,
        progress=None,
    ):
        self.plan = plan
        self.run_name = run_name or plan.name
        self.checkpoints = Path(checkpoints) / self.run_name
        self.results = Path(results) / self.run_name
        self.devices = devices or Devices()
        self.extra_args = list(extra_args)
        self.evaluate_args = {**plan.evaluate, **(evaluate_args or {})}
        self.stage_dirs = dict(stage_dirs or {})  # stage name -> folder (recipes, shared teachers)
        self.seed = seed  # overrides the plan's train seed (evokd chain --seeds)
        self.verbose = verbose  # stream fairseq's output, not only into each stage's log
        self.progress = progress or logger.info

    # --- where things are --------------------------------------------------------------

    def stage_dir(self, stage):
        return Path(self.stage_dirs.get(stage.name, self.checkpoints / stage.name))

    def best_checkpoint(self, name_or_path):
        """A stage's best checkpoint, or a checkpoint file given directly."""
        if name_or_path in self.plan.stage_names:
            return self.stage_dir(self.plan.stage(name_or_path)) / "checkpoint_best.pt"
        return Path(name_or_path)

    def model_name(self, ref):
        """A stage's name, or for a checkpoint file its folder and stem (two files called
        checkpoint_best.pt name different models)."""
        if ref in self.plan.stage_names:
            return ref
        return f"{Path(ref).parent.name}-{Path(ref).stem}".lstrip("-")

    def stage_data(self, stage):
        """The binarized folder a stage trains on."""
        if stage.data:
            return stage.data
        if stage.seqkd:
            spec = stage.seqkd
            suffix = "+refs" if spec.get("keep-references") else ""
            teacher = self.model_name(spec["teacher"])
            run = self.run_name.replace("/", "-")  # tiny/seed2 -> tiny-seed2
            return f"{self.plan.data.rstrip('/')}.seqkd-{run}-{teacher}{suffix}"
        return self.plan.data

    def kd_flags(self, stage):
        return {**KD_DEFAULTS, **self.plan.kd, **stage.kd}

    def cache_spec(self, stage):
        """``{"topk": K}`` when the stage reads its teacher from a cache, else None (online).

        A stage whose KD needs the teacher's full distribution (``kd-topk: 0``) stays online.
        """
        if not stage.teacher:
            return None
        kd = self.kd_flags(stage)
        spec = kd.get("cache")
        if not spec:
            return None
        if not isinstance(spec, dict) or not isinstance(spec.get("topk"), int) or spec["topk"] < 1:
            raise EvokdError(
                f"plan {self.plan.name}: stage {stage.name}: kd: cache: expected {{topk: K}} "
                f"with a whole number K >= 1, got {spec!r}"
            )
        if "kd-topk" in kd and int(kd["kd-topk"]) == 0:
            return None
        return spec

    def cache_dir(self, stage):
        """The cache of the stage's (teacher, training data) pair, shared by every stage with
        the same pair."""
        spec = self.cache_spec(stage)
        teacher = self.model_name(stage.teacher)
        data = Path(self.stage_data(stage)).name
        return self.checkpoints / "caches" / f"{teacher}.{data}.top{spec['topk']}"

    def step_record(self, kind, name):
        return self.checkpoints / "steps" / f"{kind}-{name}.json"

    def record(self, stage):
        path = self.stage_dir(stage) / STAGE_RECORD
        if not path.is_file():
            return None
        return steps.read_json(path)

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

    def check(self, stages, data_required=True):
        """Everything that can be wrong before training starts, each error naming a stage."""
        validate(self.plan, data_required=data_required)
        for stage in stages:
            self.check_owner(stage)
            self.cache_spec(stage)
            self.check_command(stage)
        return True

    def check_command(self, stage):
        """Parse the stage's whole command with fairseq-train's own parser (and the plugin's
        options), as fairseq-train will: an unknown or malformed flag names the stage."""
        import contextlib
        import io

        from fairseq import options

        where = f"plan {self.plan.name}: stage {stage.name}"
        if self.seed is not None and (
            "seed" in stage.flags
            or any(a == "--seed" or a.startswith("--seed=") for a in self.extra_args)
        ):
            raise EvokdError(
                f"{where}: a seed is given twice (--seeds {self.seed} and --seed in the stage's "
                "flags or after --): give it once"
            )
        argv = self.train_command(stage)[len(self.devices.launcher()) :]
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
        except SystemExit as exc:
            lines = [line for line in errors.getvalue().splitlines() if "error:" in line]
            reason = lines[-1].split("error:", 1)[1].strip() if lines else f"exit {exc.code}"
            raise EvokdError(f"{where}: fairseq-train rejects its command: {reason}") from None
        if not (args.max_epoch or 0) and not (args.max_update or 0):
            raise EvokdError(
                f"{where}: max_epoch and max_update are both 0 (fairseq would train without end)"
            )
        return args

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
        if record.get("finished") and "settings" in record:
            steps.check_settings(
                f"stage {stage.name}: {self.stage_dir(stage)}",
                {"flags": record["settings"]},
                {"flags": self.settings(stage)},
                "restore those settings, or remove the folder to train the stage again",
            )

    def settings(self, stage):
        """The training flags a finished stage is checked against (not its budget, which may
        grow, nor the device flags; not the seed of a stage shared across seeds)."""
        flags = {k.replace("_", "-"): v for k, v in self.train_flags(stage).items()}
        for key in ("max-epoch", "max-update"):
            flags.pop(key, None)
        if stage.name in self.plan.shared:
            flags.pop("seed", None)
        return " ".join(flags_to_args(flags) + self.extra_args)

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
                if self.devices.node_rank != 0:
                    self.wait_for_first_node(other)
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

    def wait_for_first_node(self, stage, timeout=1800, poll=2.0):
        """On machine NODE_RANK > 0: node 0 records a finished stage, in the checkpoints
        folder the machines share; wait for that record (a few seconds after training)."""
        deadline = time.time() + timeout
        while not self.is_finished(stage):
            if time.time() > deadline:
                raise EvokdError(
                    f"stage {stage.name}: node 0 has not recorded it as finished in "
                    f"{self.stage_dir(stage)} after {timeout} s; several machines need one "
                    "checkpoints folder they all see"
                )
            time.sleep(poll)

    # --- training ----------------------------------------------------------------------

    def train_command(self, stage):
        flags = self.train_flags(stage)
        flags.update(self.budget(stage))
        if stage.init_from_state == "training" and stage.max_update:
            # fairseq counts updates from the source's: the stage's own budget comes on top
            flags["max_update"] = stage.max_update + self.start_updates(stage)
        world = self.devices.world_size
        if world > 1 and flags.get("max-tokens"):  # keep the single-process batch
            flags["max-tokens"] = math.ceil(int(flags["max-tokens"]) / world)
        cmd = self.devices.launcher() + [self.stage_data(stage), "--user-dir", USER_DIR]
        cmd += ["--arch", stage.arch, "--save-dir", str(self.stage_dir(stage))]
        return cmd + flags_to_args(flags) + self.devices.flags() + self.extra_args

    def train_flags(self, stage):
        """The fairseq flags of a stage, before its budget and the device split."""
        plan = self.plan
        # evokd_translation for every stage: it is fairseq's translation task plus the
        # teacher, and it batches a resumed run exactly like an uninterrupted one
        flags = {"task": "evokd_translation", **plan.train}
        if self.seed is not None:
            flags["seed"] = self.seed
        if stage.teacher:
            flags["criterion"] = "word_kd"
            kd = self.kd_flags(stage)
            spec = self.cache_spec(stage)
            kd.pop("cache", None)
            if spec:
                flags["teacher-cache"] = str(self.cache_dir(stage))
                kd.setdefault("kd-topk", spec["topk"])
            flags.update(kd)
            flags["teacher-path"] = str(self.best_checkpoint(stage.teacher))
        if stage.init_from and stage.init_from_state == "weights":
            flags["init-student-from"] = str(self.best_checkpoint(stage.init_from))
        flags.update(stage.flags)
        return flags

    def train(self, stage):
        """Train one stage (resuming it if it was interrupted); returns its record."""
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        self.check_owner(stage)
        if stage.seqkd:
            self.distill(stage)
        if self.cache_spec(stage):
            self.build_cache(stage)
        writes = self.devices.node_rank == 0  # on several machines, only the first records
        resumed = (folder / "checkpoint_last.pt").is_file()
        if stage.init_from_state == "training" and not resumed:
            _start_from_training_state(self.best_checkpoint(stage.init_from), folder)
        cmd = self.train_command(stage)
        record = {**self.identity(stage), "budget": self.budget(stage), "finished": False}
        record["settings"] = self.settings(stage)
        record["command"] = cmd
        if stage.init_from_state == "training":
            record["start_updates"] = self.start_updates(stage)
        if writes:
            steps.write_json(folder / STAGE_RECORD, record)
        logger.debug(
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
            _run_logged(cmd, folder / "train.log", stream=self.verbose)
        if not writes:
            return record
        record.update(finished=True, **_training_stats(folder))
        if record.get("start_updates") and record.get("updates") is not None:
            record["updates"] -= record["start_updates"]  # this stage's own updates
        record["wall_seconds"] = record.get("train_seconds") or time.time() - start
        steps.write_json(folder / STAGE_RECORD, record)
        return record

    def start_updates(self, stage):
        """Updates the stage's source had made (a stage that carries the training state)."""
        if stage.init_from_state != "training" or stage.init_from not in self.plan.stage_names:
            return 0
        source = self.plan.stage(stage.init_from)
        record = self.record(source) or {}
        return int(record.get("updates") or 0) + int(record.get("start_updates") or 0)

    def build_cache(self, stage):
        """The teacher cache of the stage's (teacher, data) pair, built once (resumable)."""
        out = self.cache_dir(stage)
        record_path = self.step_record("cache", out.name)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        with open(record_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another chain on a shared folder: wait for it
            if out.is_dir() and record_path.is_file():
                return steps.read_json(record_path)
            return self._build_cache(stage, out, record_path)

    def _build_cache(self, stage, out, record_path):
        from evokd.distill.cache import build_cache

        teacher = self.best_checkpoint(stage.teacher)
        self.progress(f"  teacher cache {out.name}: {teacher} over {self.stage_data(stage)}")
        start = time.time()
        with _quiet():
            meta = build_cache(
                str(teacher),
                self.stage_data(stage),
                out,
                k=self.cache_spec(stage)["topk"],
                processes=self.devices.procs if self.devices.cuda else 1,
                cpu=not self.devices.cuda,
            )
        record = {
            "step": "cache",
            "name": out.name,
            "teacher": str(teacher),
            "data": self.stage_data(stage),
            "seconds": time.time() - start,
            "bytes": meta.get("bytes"),
        }
        record_path.parent.mkdir(parents=True, exist_ok=True)
        steps.write_json(record_path, record)
        self.progress(
            f"  teacher cache {out.name}: done in {_clock(record['seconds'])}, "
            f"{(record['bytes'] or 0) / 2**20:.1f} MiB"
        )
        return record

    def distill(self, stage):
        """Sequence-level KD data for ``stage``: the teacher translates the training source."""
        out = Path(self.stage_data(stage))
        if (out / "distill.json").is_file():
            return
        path = self.step_record("distill", out.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another chain on a shared folder: wait for it
            if not (out / "distill.json").is_file():
                self._distill(stage, out, path)

    def _distill(self, stage, out, path):
        from evokd.distill.seqkd import distill_data

        spec = {k.replace("-", "_"): v for k, v in stage.seqkd.items() if k != "teacher"}
        teacher = self.best_checkpoint(stage.seqkd["teacher"])
        self.progress(f"  sequence-level KD data {out.name}: {teacher} translates the training set")
        start = time.time()
        with _quiet():
            distill_data(str(teacher), self.plan.data, str(out), cpu=not self.devices.cuda, **spec)
        record = {"step": "distill", "name": out.name, "teacher": str(teacher)}
        record["seconds"] = time.time() - start
        steps.write_json(path, record)
        self.progress(f"  sequence-level KD data {out.name}: done in {_clock(record['seconds'])}")

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
        clock = _Progress(self, stages)
        for i, stage in enumerate(stages, 1):
            head = f"[{i}/{len(stages)}] {stage.name}"
            if self.is_finished(stage):
                self.progress(f"{head}: finished earlier, skipped")
                continue
            self.check_prerequisites(stage, hint)
            self.progress(
                f"{head}: {clock.describe(stage)}; log: {self.stage_dir(stage)}/train.log"
            )
            started = time.time()
            record = self.train(stage)
            self.progress(f"{head}: {clock.finished(stage, record, time.time() - started)}")
        if not evaluate:
            return []
        return self.report()

    def prepare_data(self):
        """Build the plan's data with ``evokd prepare`` if it is not there yet."""
        from evokd.data.layout import is_ready
        from evokd.data.prepare import prepare

        if is_ready(self.plan.data):
            return
        if not self.plan.prepare:
            validate(self.plan)  # raises the missing-data error
            return
        spec = {k.replace("-", "_"): v for k, v in self.plan.prepare.items()}
        corpus = spec.pop("corpus", "multi30k")
        self.progress(f"preparing {corpus} into {self.plan.data}")
        meta = prepare(str(corpus), self.plan.data, **spec)
        pairs = ", ".join(f"{split} {n}" for split, n in meta["pairs"].items())
        self.progress(f"prepared {self.plan.data}: {pairs} pairs")

    # --- evaluation and report ---------------------------------------------------------

    def evaluate_stage(self, stage):
        """Scores of a stage's best checkpoint, cached until the checkpoint changes."""
        from evokd.evaluation.evaluate import evaluate_checkpoint

        checkpoint = self.stage_dir(stage) / "checkpoint_best.pt"
        cache = self.results / "stages" / f"{stage.name}.json"
        stamp = _stamp(checkpoint)
        if cache.is_file():
            cached = steps.read_json(cache)
            if cached.get("checkpoint_stamp") == stamp:
                return cached
        cache.parent.mkdir(parents=True, exist_ok=True)
        args = dict(self.evaluate_args)
        self.progress(f"  evaluating {stage.name} on {args.get('subset', 'test')}")
        start = time.time()
        scores = evaluate_checkpoint(
            str(checkpoint),
            self.plan.data,
            cpu=not self.devices.cuda,
            out_dir=str(cache.parent / stage.name),
            **args,
        )
        scores["checkpoint_stamp"] = stamp
        steps.write_json(cache, scores)
        found = [f"{name} {scores[key]:.2f}" for key, name in (("bleu", "BLEU"), ("chrf", "chrF"))
                 if isinstance(scores.get(key), (int, float))]  # fmt: skip
        self.progress(
            f"  evaluated {stage.name}: {', '.join(found) or 'no scores'} "
            f"({_clock(time.time() - start)})"
        )
        return scores

    def rows(self):
        rows = []
        for stage in ordered(self.plan):
            record = self.record(stage) or {}
            row = {
                "stage": stage.name,
                "architecture": stage.arch,
                "teacher": stage.teacher,
                "seqkd_teacher": stage.seqkd["teacher"] if stage.seqkd else None,
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

    def step_records(self):
        folder = self.checkpoints / "steps"
        return (
            [steps.read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
        )

    def costs(self, rows):
        """The chain's time (stages and teacher steps) beside what the same stages cost
        without teachers: the plain stages' time per update (by architecture) times the
        KD stages' updates."""
        per_update = {}
        plain = [r for r in rows if not r["teacher"] and not r["seqkd_teacher"]]
        for row in plain:
            if row.get("updates") and row.get("wall_seconds"):
                per_update.setdefault(row["architecture"], row["wall_seconds"] / row["updates"])
        stages_s = sum(r.get("wall_seconds") or 0 for r in rows)
        teacher_steps_s = sum(r.get("seconds") or 0 for r in self.step_records())
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
        }

    def significance(self, rows):
        """Paired bootstrap (sacrebleu's) of the default pairs and the plan's ``compare``."""
        from evokd.evaluation.significance import compare_stages, default_pairs

        done = {r["stage"] for r in rows if r.get("finished")}
        evaluations = {n: self.results / "stages" / f"{n}.json" for n in done}
        pairs = default_pairs(self.plan.stage_names, self.plan.compare)
        return compare_stages(evaluations, pairs)

    def curves(self):
        """``curves.png``: validation BLEU (or loss) on the student's cumulative updates."""
        from evokd.chain.curves import write_curves

        stages = []
        for stage in ordered(self.plan):
            record = self.record(stage) or {}
            stages.append(
                {
                    "name": stage.name,
                    "log": self.stage_dir(stage) / "train.log",
                    "init_from": stage.init_from,
                    "updates": (record.get("updates") or 0) + (record.get("start_updates") or 0)
                    if record.get("updates") is not None
                    else None,
                    "carries_updates": stage.init_from_state == "training",
                }
            )
        return write_curves(stages, self.results / "curves.png", title=self.run_name)

    def report(self):
        """Evaluate the finished stages and write the report; returns the rows."""
        from evokd.chain.report import write_report

        rows = self.rows()
        self.results.mkdir(parents=True, exist_ok=True)
        self.curves()
        significance = self.significance(rows)
        costs = self.costs(rows)
        title = f"{self.run_name}: {self.plan.description or self.plan.name}"
        paths = write_report(self.results, rows, title=title, significance=significance)
        with open(paths["markdown"], "a", encoding="utf-8") as f:
            f.write("\n" + costs_markdown(costs))
        record = steps.read_json(paths["json"])
        steps.write_json(paths["json"], dict(record, costs=costs))
        return rows


def costs_markdown(costs):
    """The chain's time against its no-teacher cost, as a short Markdown section."""
    lines = ["## Cost", ""]
    lines.append(
        f"Chain: {_clock(costs['chain_seconds'])} ({_clock(costs['stage_seconds'])} of stage "
        f"training, {_clock(costs['teacher_step_seconds'])} of teacher caches and "
        "translations)."
    )
    if costs["ratio"] is not None:
        lines.append(
            f"The same stages without teachers: {_clock(costs['no_teacher_seconds'])} "
            f"(the plain stages' time per update times each stage's updates): "
            f"{costs['ratio']:.2f}x."
        )
    else:
        lines.append(
            "No no-teacher estimate for " + ", ".join(costs["not_estimated"]) + " (no plain "
            "stage of the same architecture)."
        )
    return "\n".join(lines) + "\n"


def report_seeds(plan, rows_per_seed, results):
    """Mean and deviation over seeds of every stage, into ``results/results.md``."""
    from evokd.chain.seeds import aggregate, markdown_table

    seed_rows = aggregate(rows_per_seed)
    table = markdown_table(seed_rows)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    seeds = ", ".join(str(s) for s in rows_per_seed)
    text = f"# {plan.name} over seeds {seeds}\n\n{table}\n"
    for seed in rows_per_seed:
        text += f"\n- seed {seed}: [seed{seed}/results.md](seed{seed}/results.md)"
    steps.write_json(results / "results.json", {"seeds": list(rows_per_seed), "rows": seed_rows})
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return table


def _stamp(path):
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def _quiet():
    """Library warnings of an in-process step stay out of the progress lines."""
    import warnings

    return warnings.catch_warnings(action="ignore")


def _clock(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class _Progress:
    """One line per stage: its budget, and an estimate of what is left from the time per
    update measured so far."""

    def __init__(self, chain, stages):
        self.chain, self.stages = chain, stages
        self.seconds, self.updates = 0.0, 0
        self.start = time.time()

    def budget(self, stage):
        if stage.max_update:
            return f"{stage.max_update} updates"
        return f"{stage.max_epoch} epoch{'s' if stage.max_epoch != 1 else ''}"

    def describe(self, stage):
        kind = "plain"
        if stage.teacher:
            kind = "KD from " + stage.teacher
            given = {**stage.kd, **stage.flags}.get("teacher-cache")  # a cache built beforehand
            if given:
                kind += f" (cache {given})"
            else:
                kind += " (cache)" if self.chain.cache_spec(stage) else " (online)"
        if stage.seqkd:
            kind += f", on {stage.seqkd['teacher']}'s translations"
        if stage.init_from:
            kind += f", from {stage.init_from} ({stage.init_from_state})"
        verb = "training"
        if (self.chain.stage_dir(stage) / "checkpoint_last.pt").is_file():
            verb = "resuming"
        return f"{verb}, {self.budget(stage)}, {kind}"

    def updates_per_epoch(self, stage):
        """From a finished stage on the same data, else on any data (the distilled data of a
        sequence-level stage has the same pairs)."""
        found = {}
        for other in self.stages:
            record = self.chain.record(other) or {}
            if record.get("epochs") and record.get("updates") and not record.get("start_updates"):
                same = self.chain.stage_data(other) == self.chain.stage_data(stage)
                found.setdefault(same, record["updates"] / record["epochs"])
        return found.get(True, found.get(False))

    def finished(self, stage, record, seconds):
        updates = record.get("updates") or 0
        self.seconds += seconds
        self.updates += updates
        line = f"done in {_clock(seconds)}, {updates} updates"
        if updates and record.get("wall_seconds"):
            line += f" ({record['wall_seconds'] / updates:.2f} s/update)"
        left, known = 0.0, True
        rest = self.stages[self.stages.index(stage) + 1 :]
        for other in rest:
            if self.chain.is_finished(other):
                continue
            per_epoch = self.updates_per_epoch(other)
            n = other.max_update or (per_epoch and other.max_epoch * per_epoch)
            known = known and bool(n) and bool(self.updates)
            if known:
                left += n * self.seconds / self.updates
        elapsed = _clock(time.time() - self.start)
        line += f"; {elapsed} so far"
        if rest and known:
            line += f", about {_clock(left)} of training left"
        return line


def _start_from_training_state(source, folder):
    """Seed ``folder/checkpoint_last.pt`` with the weights, optimizer and LR schedule position
    of ``source`` and a fresh epoch, so fairseq continues the source's training state."""
    import torch

    from evokd.core.checkpoint import load_raw

    state = load_raw(str(source), "init_from")
    extra = dict(state.get("extra_state") or {})
    extra["train_iterator"] = {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True}
    extra["previous_training_time"] = 0
    for key in ("best", "metrics", "val_loss"):
        extra.pop(key, None)
    state["extra_state"] = extra
    tmp = folder / "checkpoint_last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / "checkpoint_last.pt")


def _run_logged(cmd, log_path, stream=True):
    """Run ``cmd``, appending its output to ``log_path`` (and passing it through if asked)."""
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # tail -f shows it live
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
            if stream:
                sys.stderr.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        raise EvokdError(f"training failed (exit status {code}); see {log_path}")


def _training_stats(folder):
    """Updates and cumulative training time, from the stage's own checkpoint_last.pt."""
    from evokd.core.checkpoint import load_checkpoint

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
