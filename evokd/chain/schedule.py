"""The steps of a chain and the order they may run in: the step graph of a plan, and the
scheduler that runs every step whose prerequisites have finished, up to N at a time.

A step is a stage to train (``stage:NAME``), a teacher cache to build (``cache:FOLDER``)
or sequence-level KD data to translate (``distill:FOLDER``). A stage needs the stages it
learns from or starts from, and the teacher steps it reads; a teacher step needs its
teacher's stage (and a cache over distilled data needs that data). Teacher steps are in
the graph only for stages still to train: a finished stage reads nothing again.

The same graph serves the local scheduler (:func:`run_steps`, ``evokd chain --jobs N``)
and the Slurm launcher (:mod:`evokd.chain.slurm`), where the needs become ``afterok``
dependencies.
"""

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from evokd.chain.plan import cache_spec
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

KINDS = ("stage", "cache", "distill")


@dataclass(frozen=True)
class Step:
    """One step: ``kind`` (one of :data:`KINDS`), ``name`` (the stage's, or the folder the
    teacher step builds), ``stage`` (the stage it trains, or the first stage that reads it)
    and ``needs`` (the keys of the steps that must finish first)."""

    kind: str
    name: str
    stage: object = field(compare=False)
    needs: tuple = ()

    @property
    def key(self):
        return f"{self.kind}:{self.name}"


def steps_of(layout, stages, finished=lambda stage: False):
    """The steps that train ``stages`` (in the plan's order) and build what they read from
    their teachers, each after the steps it needs. ``finished(stage)``: stages that need no
    teacher step. A need outside ``stages`` (``--stage``) is not a step: the runner checks
    that it is there."""
    names = {stage.name for stage in stages}
    steps, seen = [], set()

    def add(step):
        if step.key not in seen:
            seen.add(step.key)
            steps.append(step)
        return step.key

    def stage_key(ref):
        return [f"stage:{ref}"] if ref in names else []

    for stage in stages:
        teacher_steps = []
        if not finished(stage):
            if stage.seqkd:
                out = Path(layout.stage_data(stage)).name
                needs = tuple(stage_key(stage.seqkd["teacher"]))
                teacher_steps.append(add(Step("distill", out, stage, needs)))
            if cache_spec(layout.plan, stage):
                needs = tuple(stage_key(stage.teacher) + teacher_steps)
                teacher_steps.append(add(Step("cache", layout.cache_dir(stage).name, stage, needs)))
        needs = [f"stage:{ref}" for ref in stage.dependencies(names)]
        add(Step("stage", stage.name, stage, tuple(dict.fromkeys(needs + teacher_steps))))
    return steps


def find(steps, key):
    """The step named ``key`` (``stage:NAME``, ``cache:FOLDER``, ``distill:FOLDER``)."""
    for step in steps:
        if step.key == key:
            return step
    known = ", ".join(step.key for step in steps) or "none"
    raise EvokdError(f"no step {key!r} in this chain (steps: {known})")


@dataclass
class Outcome:
    """What a scheduled run left undone: ``failed`` (key -> the error) and ``blocked``
    (key -> the failed or blocked step it needed)."""

    failed: dict = field(default_factory=dict)
    blocked: dict = field(default_factory=dict)

    def __bool__(self):
        return not self.failed and not self.blocked

    def describe(self):
        lines = [f"{key} failed: {error}" for key, error in self.failed.items()]
        lines += [f"{key} not run: it needs {need}" for key, need in self.blocked.items()]
        return "; ".join(lines)


def run_steps(steps, jobs, run, fail_fast=False, on_abort=None, on_failure=None):
    """Run ``steps`` (ordered so that each comes after its needs), every step whose needs
    have finished, up to ``jobs`` at a time: ``run(step, slot)`` runs one in job slot
    1..jobs. A failed step stops the steps that need it (directly or not); the others run
    on. ``fail_fast``: the first failure is raised at once. ``on_abort()``: called when the
    run is stopped (Ctrl-C, SIGTERM) with steps running. ``on_failure(step, error)``: called
    when a step fails and the run goes on, at once rather than at the end. Returns the
    :class:`Outcome`."""
    outcome, done = Outcome(), set()
    pending = list(steps)

    def unblocked():
        for step in list(pending):
            bad = [n for n in step.needs if n in outcome.failed or n in outcome.blocked]
            if bad:
                outcome.blocked[step.key] = bad[0]
                pending.remove(step)
                logger.info("%s not run: it needs %s", step.key, bad[0])
        return [s for s in pending if all(n in done or n not in keys for n in s.needs)]

    keys = {step.key for step in steps}
    if jobs <= 1:
        while pending:
            ready = unblocked()
            if not ready:
                break
            step = ready[0]
            pending.remove(step)
            try:
                run(step, 1)
            except Exception as exc:
                if fail_fast:
                    raise
                outcome.failed[step.key] = exc
                if on_failure:
                    on_failure(step, exc)
            else:
                done.add(step.key)
        return outcome
    running, free, results = 0, list(range(1, jobs + 1)), queue.Queue()

    def work(step, slot):
        try:
            run(step, slot)
            results.put((step, slot, None))
        except Exception as exc:
            results.put((step, slot, exc))

    try:
        while True:
            for step in unblocked()[: len(free)]:
                pending.remove(step)
                slot = free.pop(0)
                # daemon threads: a stopped chain does not wait for its steps
                threading.Thread(target=work, args=(step, slot), daemon=True).start()
                running += 1
            if not running:
                break
            step, slot, exc = results.get()  # Ctrl-C and SIGTERM arrive here
            running -= 1
            free = sorted(free + [slot])
            if exc is None:
                done.add(step.key)
            else:
                outcome.failed[step.key] = exc
                if on_failure:
                    on_failure(step, exc)
    except BaseException:
        if on_abort:
            on_abort()
        raise
    return outcome
