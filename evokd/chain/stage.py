"""Train one ``fairseq-train`` stage into its folder: the stage trainer that the chain,
MCKD and patch share.

Each stage trains with stock ``fairseq-train --user-dir evokd`` (``torchrun -m
evokd.train`` for several processes) into its own folder. The folder holds
``evokd_stage.json``: which stage owns it (a folder of another stage is never reused), the
settings and command it trains with and, once ``fairseq-train`` has finished, the updates
and training time. A stage with that record, the same budget and the same settings is
finished; a finished stage under other settings is refused, naming them; a stage without
the record is started again, and fairseq resumes it from its ``checkpoint_last.pt``.

The trainer builds nothing else: a stage that reads a teacher cache or trains on a
teacher's translations needs them built first (:class:`evokd.chain.runner.Chain` does).
"""

import logging
import math
import os
import time
from pathlib import Path

from evokd import files as steps
from evokd.chain.layout import STAGE_RECORD
from evokd.chain.plan import cache_spec, flags_to_args, kd_flags
from evokd.chain.teachers import is_text_teacher
from evokd.core.devices import Devices
from evokd.core.runtime import USER_DIR
from evokd.errors import EvokdError
from evokd.processes import run_logged, take_lock
from evokd.teachers.text import check_word_level_teacher

logger = logging.getLogger(__name__)


class StageTrainer:
    """Trains the stages of ``plan`` into the folders of ``layout`` (a
    :class:`evokd.chain.layout.Layout`) on ``devices``.

    ``extra_args``: fairseq-train flags after all others; ``seed``: overrides the plan's
    train seed (``evokd chain --seeds``); ``verbose``: stream fairseq's output, not only
    into each stage's ``train.log``.
    """

    def __init__(self, plan, layout, devices=None, extra_args=(), seed=None, verbose=False):
        self.plan, self.layout = plan, layout
        self.devices = devices or Devices()
        self.extra_args = list(extra_args)
        self.seed = seed
        self.verbose = verbose

    # --- the stage's record --------------------------------------------------------------

    def stage_record(self, stage):
        """The stage's ``evokd_stage.json`` as a dict, or None before it first trained."""
        path = self.layout.stage_record_path(stage)
        return steps.read_json(path) if path.is_file() else None

    def budget(self, stage):
        return {"max_epoch": stage.max_epoch, "max_update": stage.max_update}

    def is_finished(self, stage):
        return self.why_unfinished(stage) is None

    def why_unfinished(self, stage):
        """None for a finished stage, else what is missing, in words."""
        record, best = self.stage_record(stage), self.layout.best_checkpoint(stage.name)
        if not record:
            return f"never trained: {self.layout.stage_record_path(stage)} missing"
        if not record.get("finished"):
            return f"its training stopped before the end ({best.parent}; a rerun resumes it)"
        if record.get("budget") != self.budget(stage):
            return f"trained for {record.get('budget')}, the plan asks {self.budget(stage)}"
        if not best.is_file():
            return f"{best} missing"
        return None

    def identity(self, stage):
        return {
            "stage": stage.name,
            "arch": stage.arch,
            "teacher": stage.teacher,
            "init_from": stage.init_from,
            "data": os.path.abspath(self.layout.stage_data(stage)),
        }

    def settings(self, stage):
        """The training flags a finished stage is checked against (not its budget, which may
        grow, nor the device flags; not the seed of a stage shared across seeds)."""
        flags = {k.replace("_", "-"): v for k, v in self.train_flags(stage).items()}
        for key in ("max-epoch", "max-update"):
            flags.pop(key, None)
        if stage.name in self.plan.shared:
            flags.pop("seed", None)
        return " ".join(flags_to_args(flags) + self.extra_args)

    def start_updates(self, stage):
        """Updates the stage's source had made (a stage that carries the training state)."""
        if stage.init_from_state != "training" or stage.init_from not in self.plan.stage_names:
            return 0
        record = self.stage_record(self.plan.stage(stage.init_from)) or {}
        return int(record.get("updates") or 0) + int(record.get("start_updates") or 0)

    # --- the command ---------------------------------------------------------------------

    def train_flags(self, stage):
        """The fairseq flags of a stage, before its budget and the device split."""
        layout = self.layout
        # evokd_translation for every stage: it is fairseq's translation task plus the
        # teacher, and it batches a resumed run exactly like an uninterrupted one
        flags = {"task": "evokd_translation", **self.plan.train}
        if self.seed is not None and stage.name not in self.plan.shared:
            flags["seed"] = self.seed  # a shared stage keeps the plan's seed: trained once
        if stage.teacher:
            flags["criterion"] = "word_kd"
            kd = kd_flags(self.plan, stage)
            spec = cache_spec(self.plan, stage)
            kd.pop("cache", None)
            if spec:
                flags["teacher-cache"] = str(layout.cache_dir(stage))
                kd.setdefault("kd-topk", spec["topk"])
            flags.update(kd)
            flags["teacher-path"] = str(layout.best_checkpoint(stage.teacher))
        if stage.init_from and stage.init_from_state == "weights":
            flags["init-student-from"] = str(layout.best_checkpoint(stage.init_from))
        flags.update(stage.flags)
        return flags

    def train_command(self, stage):
        """The whole command line that trains ``stage``."""
        flags = self.train_flags(stage)
        flags.update(self.budget(stage))
        if stage.init_from_state == "training" and stage.max_update:
            # fairseq counts updates from the source's: the stage's own budget comes on top
            flags["max_update"] = stage.max_update + self.start_updates(stage)
        world = self.devices.world_size
        if world > 1 and flags.get("max-tokens"):  # keep the single-process batch
            flags["max-tokens"] = math.ceil(int(flags["max-tokens"]) / world)
        cmd = self.devices.launcher() + [self.layout.stage_data(stage), "--user-dir", USER_DIR]
        cmd += ["--arch", stage.arch, "--save-dir", str(self.layout.stage_dir(stage))]
        return cmd + flags_to_args(flags) + self.devices.flags() + self.extra_args

    # --- checks before training ----------------------------------------------------------

    def check(self, stage):
        """Everything about ``stage`` that can be wrong before it trains: its folder and its
        command (see :meth:`check_folder`, :meth:`check_command`)."""
        self.check_folder(stage)
        args = self.check_command(stage)
        self.check_models(stage)
        return args

    def check_models(self, stage):
        """The checkpoint files the plan names for ``stage`` (teacher, init_from, seqkd
        teacher) are readable fairseq checkpoints on the dictionaries of its data (once the
        data is prepared), and its teacher cache, once built, fits its teacher and data. A
        word-level teacher with its own vocabulary (a model folder, a server) is refused; a
        sequence-level one is opened when its data is built."""
        from evokd.core.checkpoint import check_dictionaries, languages, load_checkpoint

        data = next(
            (d for d in (self.layout.stage_data(stage), self.plan.data) if has_dictionaries(d)),
            None,
        )
        for key, ref in stage.references():
            if ref in self.plan.stage_names:
                continue
            where = f"plan {self.plan.name}: stage {stage.name}: {key}"
            if is_text_teacher(ref):
                if key == "teacher":
                    check_word_level_teacher(ref, data or self.plan.data, *pair(data), where)
                continue
            if not self.is_finished(stage):
                check_not_training(ref, where)
            state = load_checkpoint(ref, where)
            if data is not None:
                src, tgt = languages(state, data)
                check_dictionaries(state, ref, data, src, tgt, where)
        self.check_cache(stage)

    def check_cache(self, stage):
        """A teacher cache already built for ``stage`` fits its teacher, data and K."""
        cache = self.layout.cache_dir(stage)
        if cache is None or not cache.is_dir():
            return
        teacher = self.layout.best_checkpoint(stage.teacher)
        if not teacher.is_file():
            return
        from fairseq.data.data_utils import infer_language_pair

        from evokd.teachers.cache import TeacherCache

        data = self.layout.stage_data(stage)
        src, tgt = infer_language_pair(data)
        topk = int(self.train_flags(stage)["kd-topk"])
        TeacherCache(cache).check(str(teacher), data, "train", src, tgt, topk)

    def check_folder(self, stage):
        """A folder holding another stage's record is never reused, nor a finished stage's
        under other settings."""
        record = self.stage_record(stage)
        if record is None:
            return
        folder = self.layout.stage_dir(stage)
        mine = self.identity(stage)
        theirs = {k: record.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(
                f"{k}: {theirs[k]!r} there, {mine[k]!r} here" for k in mine if theirs[k] != mine[k]
            )
            raise EvokdError(
                f"stage {stage.name}: {folder} holds checkpoints of another stage ({diff}); "
                "give each stage its own --save-dir"
            )
        if record.get("finished") and "settings" in record:
            steps.check_settings(
                f"stage {stage.name}: {folder}",
                {"flags": record["settings"]},
                {"flags": self.settings(stage)},
                "restore those settings, or remove the folder to train the stage again",
            )

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

    # --- training ------------------------------------------------------------------------

    def train(self, stage):
        """Train ``stage`` into its folder (resuming it if it was interrupted); returns its
        record. Its teacher, init stage, cache and distilled data must be there."""
        folder = self.layout.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        self.check_folder(stage)
        writes = self.devices.node_rank == 0  # on several machines, only the first records
        if writes:  # a kill in fairseq's last save may have left a truncated copy
            from evokd.core.checkpoint import repair_interrupted_save

            repair_interrupted_save(folder)
        resumed = (folder / "checkpoint_last.pt").is_file()
        if stage.init_from_state == "training" and not resumed:
            start_from_training_state(self.layout.best_checkpoint(stage.init_from), folder)
        cmd = self.train_command(stage)
        record = {**self.identity(stage), "budget": self.budget(stage), "finished": False}
        record["settings"] = self.settings(stage)
        record["command"] = cmd
        if stage.init_from_state == "training":
            record["start_updates"] = self.start_updates(stage)
        if writes:
            steps.write_json(self.layout.stage_record_path(stage), record)
        verb = "resuming" if resumed else "training"
        logger.debug("stage %s: %s on %s -> %s", stage.name, verb, self.devices.describe(), folder)
        start = time.time()
        with open(folder / ".lock", "w") as lock:
            take_lock(lock, f"stage {stage.name}: {folder}")
            log = self.layout.train_log(stage)
            try:
                run_logged(cmd, log, stream=self.verbose)
            except EvokdError as exc:
                raise EvokdError(f"stage {stage.name}: {failure_line(log)}\n{exc}") from None
        if not writes:
            return record
        record.update(finished=True, **training_stats(folder))
        if record.get("start_updates") and record.get("updates") is not None:
            record["updates"] -= record["start_updates"]  # this stage's own updates
        record["wall_seconds"] = record.get("train_seconds") or time.time() - start
        steps.write_json(self.layout.stage_record_path(stage), record)
        return record


def check_not_training(checkpoint, where):
    """A checkpoint named by its path whose folder is a chain stage that has not finished
    (its record says so: still training, stopped, or resumed with a larger budget) would be
    read half-trained: refused, naming the record."""
    record = Path(checkpoint).parent / STAGE_RECORD
    if record.is_file() and not steps.read_json(record).get("finished"):
        raise EvokdError(
            f"{where} {checkpoint}: its stage has not finished training ({record} does not "
            "record it finished); wait for it to finish, or give a finished checkpoint"
        )


def has_dictionaries(data):
    return data is not None and any(Path(data).glob("dict.*.txt"))


def pair(data):
    """(source, target) language of binarized ``data``; (None, None) before it is there."""
    from fairseq.data.data_utils import infer_language_pair

    return infer_language_pair(str(data)) if data else (None, None)


def failure_line(log):
    """Why the last run logged in ``log`` failed, in its own words: the exception line of
    an evokd error, else of the last traceback, else the last line written."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = text.rsplit("\n$ ", 1)[-1].splitlines()[1:]  # after the command's own line
    ends, in_traceback = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line.strip() and not line[0].isspace():
            ends.append(line.strip())
            in_traceback = False
    ours = [line for line in ends if line.startswith("evokd.") or "EvokdError" in line]
    if ours or ends:
        return (ours or ends)[-1]
    rest = [line.strip() for line in lines if line.strip()]
    return rest[-1] if rest else "(nothing logged)"


def start_from_training_state(source, folder):
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
    steps.publish(tmp, folder / "checkpoint_last.pt")


def training_stats(folder):
    """Updates, epochs and cumulative training time, from the stage's checkpoint_last.pt."""
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
