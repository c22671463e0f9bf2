"""A chain on a Slurm cluster: every step (stage, teacher cache, distilled data) a batch
job with ``afterok`` dependencies on the steps it needs, then the report as a job that
depends on them all (``evokd chain --launcher slurm``).

Each job runs ``evokd chain ... --step KIND:NAME``: the same code, and the same folders,
as a local run, so a job that is killed, preempted or timed out is resumed like a local
run, from the stage's ``checkpoint_last.pt``, by its requeue (``--requeue``) or by
submitting again. Submitting again submits only the steps that are neither finished (their
records) nor queued or running (the job ids in ``jobs/slurm.json``).

sbatch directly, not submitit: a job here is one command line, not a pickled Python
function, so the scripts are plain text that ``--dry-run`` prints and anyone can read,
edit or resubmit by hand; nothing but Slurm's own client is needed where the chain is
submitted; and job states come from Slurm's own ``squeue``/``scontrol``/``sacct``.

Resources (``slurm:`` in the plan, and over it in a stage): ``partition``, ``time``,
``gpus`` (per node), ``cpus`` (per task), ``mem``, ``nodes``, ``options`` (more sbatch
options). A job of several nodes starts one task per node under ``srun``, each with
torchrun's NNODES, NODE_RANK and MASTER_ADDR; the GPUs of a node go to torchrun.
"""

import logging
import os
import shlex
import shutil
import subprocess

from evokd import files
from evokd.chain import schedule
from evokd.chain.plan import slurm_resources
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

# job states in which a job will still run (or is running): not submitted again
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD"}
LIVE |= {"REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
REQUEUE_SIGNAL = "B:USR1@120"  # two minutes before the time limit: requeue the job
REPORT = "report"


def slurm_command(name):
    """The path of a Slurm client command; an error saying so when it is missing."""
    path = shutil.which(name)
    if not path:
        raise EvokdError(
            f"{name} not found: --launcher slurm needs Slurm's client commands (sbatch, "
            "squeue, scontrol) on PATH"
        )
    return path


class SlurmChain:
    """Submits the steps of ``chain`` (a :class:`evokd.chain.runner.Chain`).

    ``command(key, gpus)``: the ``evokd chain`` command line that runs step ``key`` (the
    report for ``"report"``) with ``gpus`` processes; ``requeue``: a preempted job, or one
    reaching its time limit, is requeued and resumes.
    """

    def __init__(self, chain, command, requeue=False, only=None):
        self.chain, self.command, self.requeue = chain, command, requeue
        self.layout = chain.layout
        self.only = only

    def steps(self, finished=None):
        """The steps of the stages to run (``only``: those named), each after its needs."""
        stages = self.chain.stages(self.only)
        return schedule.steps_of(self.layout, stages, finished or self.chain.trainer.is_finished)

    def done(self, step):
        return self.chain.step_done(step)

    # --- the job scripts ---------------------------------------------------------------

    def resources(self, step):
        """A step's resources: its stage's (a teacher step: the stage that reads it); the
        report: the plan's."""
        if step is None:
            plan = self.chain.plan.slurm
            return {**plan, "nodes": 1, "options": list(plan.get("options", []))}
        return slurm_resources(self.chain.plan, step.stage)

    def script(self, key, step, after):
        """The sbatch script of ``step`` (None: the report) named ``key``, after the job
        ids (or, unsubmitted, the keys) in ``after``."""
        res = self.resources(step)
        nodes = int(res.get("nodes") or 1)
        gpus = res.get("gpus")
        run = self.layout.run_name.replace("/", "-")
        lines = ["#!/bin/bash", f"#SBATCH --job-name=evokd-{run}-{key.replace(':', '-')}"]
        lines += [f"#SBATCH --output={self.layout.job_path(key, '.log').resolve()}"]
        lines += ["#SBATCH --open-mode=append", f"#SBATCH --chdir={os.getcwd()}"]
        lines += [f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1"]
        for key_, flag in (("partition", "partition"), ("time", "time"), ("mem", "mem")):
            if res.get(key_) is not None:
                lines.append(f"#SBATCH --{flag}={res[key_]}")
        if res.get("cpus"):
            lines.append(f"#SBATCH --cpus-per-task={res['cpus']}")
        if gpus:
            lines.append(f"#SBATCH --gpus-per-node={gpus}")
        if self.requeue:
            lines += ["#SBATCH --requeue", f"#SBATCH --signal={REQUEUE_SIGNAL}"]
        else:
            lines.append("#SBATCH --no-requeue")
        if after:
            lines.append(f"#SBATCH --dependency=afterok:{':'.join(str(a) for a in after)}")
            lines.append("#SBATCH --kill-on-invalid-dep=yes")  # a failed need cancels it
        lines += [f"#SBATCH {option}" for option in res.get("options", [])]
        lines += ["set -euo pipefail", "export PYTHONUNBUFFERED=1"]
        command = shlex.join(self.command(key, gpus))
        if nodes > 1:
            lines.append('export NNODES="$SLURM_JOB_NUM_NODES"')
            lines.append(
                'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
            )
            inner = shlex.quote(f'export NODE_RANK="$SLURM_NODEID"; exec {command}')
            command = f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {inner}"
        if self.requeue:
            lines.append("trap 'scontrol requeue \"$SLURM_JOB_ID\"' USR1")
            lines += [f"{command} &", 'wait "$!"']
        else:
            lines.append(f"exec {command}")
        return "\n".join(lines) + "\n"

    # --- submitting ----------------------------------------------------------------------

    def recorded(self):
        path = self.layout.slurm_jobs_path
        return files.read_json(path) if path.is_file() else {}

    def submit(self, dry_run=False, out=print, report=True, elsewhere=None):
        """Submit every step that is neither finished nor queued, each after the jobs of
        the steps it needs, then (``report``) the report after them all; returns {key: job
        id} of the jobs submitted. ``dry_run``: print the scripts, submit nothing.
        ``elsewhere``: {stage folder: job id} of the runs submitted before this one (the
        seeds of a plan share some stages), updated with this run's."""
        steps = self.steps()
        jobs = self.recorded()
        states = {} if dry_run else job_states(list(jobs.values()))
        live = {k: j for k, j in jobs.items() if states.get(str(j)) in LIVE}
        submitted, waiting = {}, {}
        elsewhere = {} if elsewhere is None else elsewhere
        for step in steps:
            if self.done(step):
                continue
            folder = str(self.layout.stage_dir(step.stage)) if step.kind == "stage" else None
            if folder in elsewhere:  # trained by another run's job
                waiting[step.key] = elsewhere[folder]
                continue
            if step.key in live:
                waiting[step.key] = live[step.key]
                logger.info("%s: job %s is %s", step.key, live[step.key], states[live[step.key]])
            else:
                after = [waiting[n] for n in step.needs if n in waiting]
                waiting[step.key] = self._submit(step.key, step, after, dry_run, out)
                submitted[step.key] = waiting[step.key]
            if folder:
                elsewhere[folder] = waiting[step.key]
        if report and (submitted or REPORT not in live):
            if REPORT in live:
                subprocess.run([slurm_command("scancel"), str(live[REPORT])], check=False)
            submitted[REPORT] = self._submit(REPORT, None, list(waiting.values()), dry_run, out)
        if not dry_run:
            self.layout.jobs_dir.mkdir(parents=True, exist_ok=True)
            files.write_json(self.layout.slurm_jobs_path, {**jobs, **submitted})
        return submitted

    def _submit(self, key, step, after, dry_run, out):
        text = self.script(key, step, after)
        if dry_run:
            out(f"# {key}\n{text}")
            return f"<{key.replace(':', '-')}>"  # the job id to come
        path = self.layout.job_path(key, ".sbatch")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [slurm_command("sbatch"), "--parsable", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise EvokdError(f"sbatch {path} failed: {done.stderr.strip() or done.stdout.strip()}")
        job = done.stdout.strip().split(";")[0]
        out(f"{key}: job {job}" + (f" after {', '.join(map(str, after))}" if after else ""))
        return job

    # --- status --------------------------------------------------------------------------

    def status(self):
        """(step, job id or "", state) of every step and the report: a finished step says
        so, a submitted one says its job's state."""
        jobs = self.recorded()
        states = job_states(list(jobs.values()))
        rows = []
        for step in self.steps(finished=lambda stage: False):
            job = jobs.get(step.key, "")
            state = states.get(str(job), "") if job else "not submitted"
            if self.done(step):
                state = "finished" + (f" ({state})" if job and state else "")
            rows.append((step.key, str(job), state))
        if REPORT in jobs:
            rows.append((REPORT, str(jobs[REPORT]), states.get(str(jobs[REPORT]), "")))
        return rows


def job_states(ids):
    """{job id: state} from squeue, then scontrol (jobs ended a few minutes ago), then
    sacct (with accounting); a job none of them knows is left out."""
    ids = [str(i) for i in ids if i]
    if not ids:
        return {}
    found = {}
    out = _quiet(["squeue", "-h", "-o", "%i %T", "--jobs", ",".join(ids)])
    for line in out.splitlines():
        job, _, state = line.strip().partition(" ")
        found[job] = state
    for job in [i for i in ids if i not in found]:
        text = _quiet(["scontrol", "show", "job", job])
        for word in text.split():
            if word.startswith("JobState="):
                found[job] = word.split("=", 1)[1]
    missing = [i for i in ids if i not in found]
    if missing:
        out = _quiet(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(missing)])
        for line in out.splitlines():
            job, _, state = line.partition("|")
            if job in missing and state:
                found[job] = state.split()[0]
    return found


def _quiet(cmd):
    """The output of a Slurm query; empty when it fails (an id it no longer knows)."""
    path = shutil.which(cmd[0])
    if not path:
        return ""
    done = subprocess.run([path, *cmd[1:]], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""
