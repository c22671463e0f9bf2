"""Run a plan: order its stages, check them all before the first trains, build each
stage's teacher data, train the stages, evaluate them and write the report.

Each stage is trained by the :class:`evokd.chain.stage.StageTrainer` into its own folder
(:mod:`evokd.chain.layout`): finished stages are skipped, an interrupted one resumes from its
``checkpoint_last.pt``. Before the first stage trains, every stage's whole command is
parsed by fairseq's own training parser, so a typo in a late stage fails at once.

A teacher is paid for once: a KD stage whose plan says ``kd: {cache: {topk: K}}`` reads the
teacher's top-K from a cache of that (teacher, training data) pair, and a stage with
``seqkd`` trains on its teacher's translations. Both are steps of the chain, built before
the stage that needs them (``checkpoints/<run>/caches/``, recorded in ``steps/``) and
shared by every stage with the same teacher and data.

The stages and teacher steps form a graph (:mod:`evokd.chain.schedule`): with ``jobs``
above one, every step whose prerequisites have finished runs at once, up to ``jobs``, each
stage on its share of the machine (:meth:`evokd.core.devices.Devices.split`); a failed step
stops only the steps that need it. ``jobs/KIND-NAME.json`` records when, and in which job
slot, each step ran. :mod:`evokd.chain.slurm` submits the same steps as Slurm jobs, each
running :meth:`Chain.run_step`.
"""

import fcntl
import logging
import os
import socket
import time
import warnings
from pathlib import Path

from evokd import files as steps
from evokd.chain import results, schedule
from evokd.chain.layout import Layout
from evokd.chain.plan import cache_spec, ordered, validate
from evokd.chain.progress import Progress, clock
from evokd.chain.stage import StageTrainer
from evokd.chain.teachers import is_text_teacher, kind, seqkd_options
from evokd.core.devices import torch_threads
from evokd.errors import EvokdError
from evokd.processes import stop_running

logger = logging.getLogger(__name__)


class Chain:
    """One run of ``plan``: its stages in order, their teacher steps, their evaluation and
    the report. ``stage_dirs``, ``checkpoints``, ``results``, ``run_name``: see
    :class:`evokd.chain.layout.Layout`; ``devices``, ``extra_args``, ``seed``, ``verbose``:
    see :class:`evokd.chain.stage.StageTrainer`; ``evaluate_args`` over the plan's
    ``evaluate:``; ``progress``: called with each progress line."""

    def __init__(self, plan, run_name=None, checkpoints="checkpoints", results="results",
                 devices=None, extra_args=(), evaluate_args=None, stage_dirs=None, seed=None,
                 verbose=False, progress=None):  # fmt: skip
        self.plan = plan
        self.layout = Layout(plan, run_name, checkpoints, results, stage_dirs)
        self.trainer = StageTrainer(plan, self.layout, devices, extra_args, seed, verbose)
        self.devices = self.trainer.devices
        self.seed = seed
        self.evaluate_args = {**plan.evaluate, **(evaluate_args or {})}
        self.progress = progress or logger.info

    # --- checks before any training ------------------------------------------------------

    def stages(self, only=None):
        """The stages to run, in order: all, or those named in ``only``."""
        stages = ordered(self.plan)
        if not only:
            return stages
        for name in only:
            self.plan.stage(name)  # an unknown name is an error
        return [s for s in stages if s.name in set(only)]

    def check(self, stages, data_required=True):
        """Everything that can be wrong before training starts, each error naming a stage."""
        validate(self.plan, data_required=data_required)
        for stage in stages:
            self.trainer.check(stage)
        return True

    def check_prerequisites(self, stage, hint=None, trained_first=()):
        """The teacher and init stages must be finished (or be checkpoint files), or be
        among ``trained_first`` (the other stages of a ``--stage`` list, trained before)."""
        for key, ref in stage.references():
            if ref in trained_first:
                continue
            if ref in self.plan.stage_names:
                other = self.plan.stage(ref)
                if self.devices.node_rank != 0:
                    self.wait_for_first_node(other)
                why = self.trainer.why_unfinished(other)
                if why:
                    seeds = "" if self.seed is None else f" --seeds {self.seed}"
                    how = (
                        hint(other)
                        if hint
                        else f"evokd chain --plan {self.plan.path}{seeds} --stage {ref}"
                    )
                    raise EvokdError(
                        f"stage {stage.name} needs its {key} {ref}, which is not finished "
                        f"({why}): run {how} first"
                    )
            elif not os.path.isfile(ref) and not is_text_teacher(ref):
                raise EvokdError(f"stage {stage.name}: {key} {ref}: no such checkpoint file")

    def wait_for_first_node(self, stage, timeout=1800, poll=2.0):
        """On machine NODE_RANK > 0: node 0 records a finished stage, in the checkpoints
        folder the machines share; wait for that record (a few seconds after training)."""
        deadline = time.time() + timeout
        while not self.trainer.is_finished(stage):
            if time.time() > deadline:
                raise EvokdError(
                    f"stage {stage.name}: node 0 has not recorded it as finished in "
                    f"{self.layout.stage_dir(stage)} after {timeout} s; several machines need "
                    "one checkpoints folder they all see"
                )
            time.sleep(poll)

    # --- teacher steps -------------------------------------------------------------------

    def build_cache(self, stage, tag=""):
        """The teacher cache of the stage's (teacher, data) pair, built once (resumable);
        returns its step record. ``tag``: after the name in the progress lines."""
        out = self.layout.cache_dir(stage)
        path = self.layout.step_record_path("cache", out.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another chain on a shared folder: wait for it
            if out.is_dir() and path.is_file():
                return steps.read_json(path)
            from evokd.distill.cache import build_cache

            teacher, data = (
                self.layout.best_checkpoint(stage.teacher),
                self.layout.stage_data(stage),
            )
            self.progress(f"  teacher cache {out.name}{tag}: {teacher} over {data}")
            start = time.time()
            with warnings.catch_warnings(action="ignore"):  # out of the progress lines
                k, workers = cache_spec(self.plan, stage)["topk"], self.devices.workers
                meta = build_cache(
                    str(teacher), data, out, k=k, processes=workers, cpu=not self.devices.cuda
                )
            record = {"step": "cache", "name": out.name, "teacher": str(teacher), "data": data}
            record.update(seconds=time.time() - start, bytes=meta.get("bytes"))
            steps.write_json(path, record)
        self.progress(
            f"  teacher cache {out.name}{tag}: done in {clock(record['seconds'])}, "
            f"{(record['bytes'] or 0) / 2**20:.1f} MiB"
        )
        return record

    def distill(self, stage, tag=""):
        """Sequence-level KD data for ``stage``: its teacher, of any kind, translates the
        training source, as ``evokd distill-data`` does
        (:func:`evokd.chain.dry_run.distill_command`)."""
        out = Path(self.layout.stage_data(stage))
        if (out / "distill.json").is_file():
            from evokd.distill.seqkd import open_distilled

            open_distilled(out, f"stage {stage.name}:")  # checked against its checksums
            return
        path = self.layout.step_record_path("distill", out.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another chain on a shared folder: wait for it
            if (out / "distill.json").is_file():
                return
            from evokd.distill.any_teacher import distill_any

            teacher = self.layout.teacher_path(stage.seqkd["teacher"])
            what, options = kind(teacher), seqkd_options(stage)
            through = ""
            if what == "fairseq":  # the engine the folder is named after
                options["engine"] = self.layout.seqkd_engine(stage.seqkd)
                through = f" through {options['engine']}"
            self.progress(
                f"  sequence-level KD data {out.name}{tag}: the {what} teacher {teacher} "
                f"translates the training set{through}"
            )
            start = time.time()
            with warnings.catch_warnings(action="ignore"):
                distill_any(teacher, self.plan.data, str(out), cpu=not self.devices.cuda,
                            where=f"stage {stage.name}: seqkd", **options)  # fmt: skip
            record = {"step": "distill", "name": out.name, "teacher": teacher, "kind": what}
            record["seconds"] = time.time() - start
            steps.write_json(path, record)
        self.progress(
            f"  sequence-level KD data {out.name}{tag}: done in {clock(record['seconds'])}"
        )

    # --- the whole run -------------------------------------------------------------------

    def run(self, only=None, evaluate=True, hint=None, jobs=1):
        """Train the stages (all, or ``only``), then evaluate and report; returns the rows
        (none without ``evaluate``). ``hint(stage)``: how to train a missing prerequisite.
        ``jobs``: steps at once (:mod:`evokd.chain.schedule`), each on its share of the
        devices; with several, a failed step stops only the steps that need it, and the
        error comes once the others have finished."""
        stages = self.stages(only)
        self.prepare_data()
        self.check(stages)
        if only:
            for stage in stages:
                if not self.trainer.is_finished(stage):
                    self.check_prerequisites(stage, hint, trained_first=set(only))
        graph = schedule.steps_of(self.layout, stages, self.trainer.is_finished)
        run_step = StepRunner(self, stages, jobs, hint)
        with run_step.threads():
            outcome = schedule.run_steps(
                graph, jobs, run_step, fail_fast=jobs <= 1, on_abort=stop_running,
                on_failure=self.report_failure,
            )  # fmt: skip
        if not outcome:
            raise EvokdError(f"chain {self.layout.run_name}: {outcome.describe()}")
        return self.report() if evaluate else []

    def report_failure(self, step, error):
        """The progress line of a step that failed while other jobs go on."""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.progress(f"{step.key} failed: {first}; the steps that need it will not run")

    def run_step(self, key, hint=None):
        """Run the one step ``key`` of the chain (what a Slurm job runs): its prerequisites
        must be finished."""
        stages = self.stages()
        step = schedule.find(schedule.steps_of(self.layout, stages), key)
        self.prepare_data()
        self.check([step.stage])
        if not self.trainer.is_finished(step.stage):
            self.check_prerequisites(step.stage, hint)
        StepRunner(self, stages, 1, hint)(step, 1)

    def step_done(self, step):
        """Whether a step of :func:`evokd.chain.schedule.steps_of` has finished: a stage's
        record, a cache's step record, distilled data's own record."""
        if step.kind == "stage":
            return self.trainer.is_finished(step.stage)
        if step.kind == "cache":
            folder = self.layout.cache_dir(step.stage)
            return folder.is_dir() and self.layout.step_record_path("cache", step.name).is_file()
        return (Path(self.layout.stage_data(step.stage)) / "distill.json").is_file()

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

    # --- evaluation and report -----------------------------------------------------------

    def evaluate_stage(self, stage):
        """Scores of a stage's best checkpoint (see :func:`evokd.chain.results.evaluate_stage`)."""
        return results.evaluate_stage(
            self.layout, stage, self.evaluate_args, cpu=not self.devices.cuda,
            progress=self.progress,
        )  # fmt: skip

    def report(self):
        """Evaluate the finished stages, then write the report once; returns the rows."""
        finished = [s for s in ordered(self.plan) if self.trainer.is_finished(s)]
        scores = {stage.name: self.evaluate_stage(stage) for stage in finished}
        return results.write_results(self.plan, self.trainer, scores)


class StepRunner:
    """Runs one step of ``chain`` in a job slot: a stage on the slot's share of the devices
    (a :class:`StageTrainer` per slot), a teacher step in this process. Progress lines name
    the slot when several jobs run."""

    def __init__(self, chain, stages, jobs, hint=None):
        self.chain, self.stages, self.jobs, self.hint = chain, stages, jobs, hint
        self.devices = chain.devices.split(jobs)
        base = chain.trainer
        self.trainers = [base] if jobs <= 1 else [
            StageTrainer(base.plan, base.layout, d, base.extra_args, base.seed, base.verbose)
            for d in self.devices
        ]  # fmt: skip
        self.progress = Progress(base, stages)

    def threads(self):
        """Several jobs in one process: each in-process step (a teacher cache, a
        translation) gets the threads of a job's share, as its stage would."""
        import contextlib

        threads = self.devices[0].threads
        if self.jobs <= 1 or not threads:
            return contextlib.nullcontext()
        return torch_threads(threads)

    def __call__(self, step, slot):
        """Run ``step`` in job ``slot``; a step that ran records when, and where, in
        ``jobs/KIND-NAME.json``."""
        started = time.time()
        ran = self.run(step, slot)
        if ran:
            record = {"step": step.key, "slot": slot, "jobs": self.jobs, "started": started}
            record.update(ended=time.time(), host=socket.gethostname())
            record["slurm_job"] = os.environ.get("SLURM_JOB_ID")
            path = self.chain.layout.job_path(step.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            steps.write_json(path, record)

    def run(self, step, slot):
        """Run ``step``; False for a stage finished earlier."""
        chain = self.chain
        tag = f" (job {slot})" if self.jobs > 1 else ""
        if step.kind in ("cache", "distill"):
            build = chain.build_cache if step.kind == "cache" else chain.distill
            build(step.stage, tag=tag) if tag else build(step.stage)
            return True
        stage = step.stage
        head = f"[{self.stages.index(stage) + 1}/{len(self.stages)}] {stage.name}{tag}"
        trainer = self.trainers[slot - 1]
        if trainer.is_finished(stage):
            chain.progress(f"{head}: finished earlier, skipped")
            return False
        chain.check_prerequisites(stage, self.hint)
        log = chain.layout.train_log(stage)
        chain.progress(f"{head}: {self.progress.describe(stage)}; log: {log}")
        started = time.time()
        record = trainer.train(stage)
        chain.progress(f"{head}: {self.progress.finished(stage, record, time.time() - started)}")
        return True
