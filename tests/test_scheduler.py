"""Chains on a scheduler: the step graph, ready steps up to N at a time (``--jobs``), the
machine divided between jobs, and every step a job of a real one-node Slurm cluster
(``--launcher slurm``; tests/slurm_cluster.py)."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from evokd.chain.plan import load_plan, slurm_resources
from evokd.chain.schedule import Step, run_steps, steps_of
from evokd.core.devices import Devices
from evokd.errors import EvokdError
from tests import faults, slurm_cluster, utils
from tests.test_chain import MICRO_DIMS, micro_plan

TRAIN = {
    "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 2000,
    "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1, "num-workers": 0,
    "log-format": "json", "log-interval": 1, "no-epoch-checkpoints": True, **MICRO_DIMS,
}  # fmt: skip
# two independent stages, then one that needs the first; the second is long enough to be
# killed between two of its checkpoints
STAGES = [
    {"name": "junior_teacher", "arch": "transformer_evokd_tiny_junior", "max_update": 3},
    {"name": "senior_teacher", "arch": "transformer_evokd_tiny_junior", "max_update": 24,
     "flags": {"seed": 2, "save-interval-updates": 3}},
    {"name": "junior_student", "arch": "transformer_evokd_tiny_student", "max_update": 3,
     "teacher": "junior_teacher"},
]  # fmt: skip
NAMES = [s["name"] for s in STAGES]


def sched_plan(root, **edits):
    return micro_plan(root, name="sched", **{"train": TRAIN, "stages": STAGES, **edits})


def chain(root, *args, check=True):
    return utils.evokd_in_process(["chain", "--plan", root / "sched.yaml", *args], root, check)


def weights(root, run, stage):
    path = Path(root) / "checkpoints" / run / stage / "checkpoint_last.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def job_record(root, run, stage):
    path = Path(root) / "checkpoints" / run / "jobs" / f"stage-{stage}.json"
    return json.loads(path.read_text())


def stage_record(root, run, stage):
    path = Path(root) / "checkpoints" / run / stage / "evokd_stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------
# The step graph, the scheduler and the division of the machine: no training.


def test_step_graph_of_teacher_steps(tmp_path):
    from evokd.chain.layout import Layout

    stages = [
        {"name": "teacher", "arch": "transformer_evokd_tiny_junior", "max_epoch": 1},
        {"name": "cached", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "teacher", "kd": {"cache": {"topk": 4}}},
        {"name": "seqkd", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "teacher", "seqkd": {"teacher": "teacher"}, "kd": {"cache": {"topk": 4}}},
        {"name": "master", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "init_from": "cached", "teacher": "teacher", "kd": {"cache": {"topk": 4}}},
    ]  # fmt: skip
    plan = load_plan(str(micro_plan(tmp_path, stages=stages)))
    layout = Layout(plan, checkpoints=tmp_path / "checkpoints")
    graph = {s.key: set(s.needs) for s in steps_of(layout, plan.stages)}
    cache = "cache:teacher.micro.de-en.top4"
    distill = "distill:micro.de-en.seqkd-micro-teacher.ctranslate2-float32"
    seqkd_cache = "cache:teacher.micro.de-en.seqkd-micro-teacher.ctranslate2-float32.top4"
    assert graph == {
        "stage:teacher": set(),
        cache: {"stage:teacher"},  # built once, read by cached and master
        "stage:cached": {"stage:teacher", cache},
        distill: {"stage:teacher"},
        seqkd_cache: {"stage:teacher", distill},  # a cache over the distilled data
        "stage:seqkd": {"stage:teacher", distill, seqkd_cache},
        "stage:master": {"stage:teacher", "stage:cached", cache},
    }
    # a finished stage reads nothing again: no teacher step for it
    finished = {"cached", "master"}
    keys = [s.key for s in steps_of(layout, plan.stages, lambda s: s.name in finished)]
    assert cache not in keys and distill in keys and "stage:master" in keys


def _graph():
    """a and b independent; c needs a; d needs c; e needs b."""
    needs = {"a": (), "b": (), "c": ("stage:a",), "d": ("stage:c",), "e": ("stage:b",)}
    return [Step("stage", k, None, v) for k, v in needs.items()]


def test_a_failed_step_stops_only_its_dependants():
    ran = []

    def run(step, slot):
        ran.append(step.name)
        if step.name == "a":
            raise EvokdError("a broke")

    reported = []
    outcome = run_steps(_graph(), 2, run, on_failure=lambda s, e: reported.append((s.key, str(e))))
    assert sorted(ran) == ["a", "b", "e"] and reported == [("stage:a", "a broke")]
    assert list(outcome.failed) == ["stage:a"] and str(outcome.failed["stage:a"]) == "a broke"
    assert outcome.blocked == {"stage:c": "stage:a", "stage:d": "stage:c"}
    assert not outcome and "stage:d not run: it needs stage:c" in outcome.describe()
    # one job: the first failure stops the run at once, as a chain always did
    ran.clear()
    with pytest.raises(EvokdError, match="a broke"):
        run_steps(_graph(), 1, run, fail_fast=True)
    assert ran == ["a"]


def test_ready_steps_run_at_once_in_their_own_slots():
    import threading

    both = threading.Barrier(2, timeout=10)  # a and b must be running at the same time
    slots = {}

    def run(step, slot):
        slots[step.name] = slot
        if step.name in ("a", "b"):
            both.wait()

    assert run_steps(_graph(), 2, run)
    assert {slots["a"], slots["b"]} == {1, 2} and set(slots) == set("abcde")


def test_the_machine_is_divided_between_jobs():
    cpu = Devices(gpus=0, environ={})
    cores = os.cpu_count()
    shares = cpu.split(2)
    assert [d.threads for d in shares] == [max(1, cores // 2)] * 2
    assert len({d.master_port for d in shares}) == 2
    assert shares[0].launcher()[:3] == ["env", f"OMP_NUM_THREADS={shares[0].threads}",
                                         f"MKL_NUM_THREADS={shares[0].threads}"]  # fmt: skip
    assert cpu.split(1) == [cpu] and cpu.launcher()[0].endswith("fairseq-train")
    assert [d.threads for d in Devices(gpus=0, environ={}, threads=3).split(4)] == [3] * 4
    gpus = Devices(gpus=0, environ={})
    gpus.cuda, gpus.visible, gpus.gpus_asked = True, [0, 1, 2, 3], None
    assert [d.visible for d in gpus.split(2)] == [[0, 1], [2, 3]]
    assert gpus.split(2)[1].environment() == {"CUDA_VISIBLE_DEVICES": "2,3"}
    gpus.gpus_asked = 1
    assert [d.visible for d in gpus.split(3)] == [[0], [1], [2]]
    with pytest.raises(EvokdError, match="--jobs 5 .* 4 visible"):
        gpus.split(5)


def test_teacher_steps_of_two_jobs_set_fairseq_up_at_once(data_bin, monkeypatch):
    """Two jobs' teacher steps run in threads of one process and both set up fairseq, which
    composes its config through Hydra's one global instance (a chain's cache step failed
    with "GlobalHydra is already initialized" this way). Hydra's step is slowed so that the
    two calls overlap every time."""
    import threading

    from fairseq.dataclass import utils as fairseq_config

    from evokd.core.runtime import parse_config

    compose = fairseq_config.compose  # called while Hydra's global instance is set up

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return compose(*args, **kwargs)

    monkeypatch.setattr(fairseq_config, "compose", slow)
    errors, tasks = [], []

    def set_up():
        try:
            tasks.append(parse_config([data_bin, "--task", "translation"], parser="generation"))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=set_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and [cfg.task.data for cfg in tasks] == [str(data_bin)] * 2


def test_slurm_resources_are_checked_and_merged(tmp_path):
    slurm = {"partition": "gpu", "time": "2:00:00", "gpus": 1, "options": ["--account=x"]}
    stages = [dict(STAGES[0], slurm={"gpus": 4, "options": ["--qos=long"]}), STAGES[1]]
    plan = load_plan(str(sched_plan(tmp_path, slurm=slurm, stages=stages, jobs=2)))
    assert plan.jobs == 2
    first, second = plan.stages
    assert slurm_resources(plan, first) == {
        "partition": "gpu",
        "time": "2:00:00",
        "gpus": 4,
        "options": ["--account=x", "--qos=long"],
    }
    assert slurm_resources(plan, second)["gpus"] == 1
    for bad, message in [
        ({"gpu": 1}, "unknown keys \\['gpu'\\]"),
        ({"cpus": 0}, "cpus 0 must be a whole number >= 1"),
        ({"time": "two hours"}, "time 'two hours'"),
        ({"options": ["account=x"]}, "options must be a list"),
    ]:
        with pytest.raises(EvokdError, match=message):
            load_plan(str(sched_plan(tmp_path, slurm=bad)))
    with pytest.raises(EvokdError, match="jobs 0"):
        load_plan(str(sched_plan(tmp_path, jobs=0)))


def test_dry_run_prints_the_sbatch_scripts(tmp_path):
    slurm = {"partition": "gpu", "time": 30, "cpus": 2, "mem": "4G"}
    sched_plan(tmp_path, slurm=slurm)
    _, out = chain(tmp_path, "--launcher", "slurm", "--dry-run")
    scripts = dict(re.findall(r"^# (\S+)\n(#!/bin/bash\n.*?)(?=^# |\Z)", out, re.M | re.S))
    assert list(scripts) == [f"stage:{n}" for n in NAMES] + ["report"]
    student = scripts["stage:junior_student"]
    assert "#SBATCH --dependency=afterok:<stage-junior_teacher>\n" in student
    for line in ("--partition=gpu", "--time=30", "--cpus-per-task=2", "--mem=4G"):
        assert f"#SBATCH {line}\n" in student
    assert re.search(
        r"^exec \S*evokd chain --plan \S+ .*--step stage:junior_student$", student, re.M
    )
    assert "--dependency" not in scripts["stage:senior_teacher"]
    deps = re.search(r"--dependency=afterok:(\S+)", scripts["report"]).group(1).split(":")
    assert deps == [f"<stage-{n}>" for n in NAMES]
    assert not (tmp_path / "checkpoints" / "sched" / "jobs").exists()  # nothing written


def test_a_stage_the_seeds_share_is_one_job(tmp_path):
    stages = [STAGES[0], dict(STAGES[1], flags={}), STAGES[2]]  # the seed from --seeds
    sched_plan(tmp_path, seeds=[1, 2], shared=["junior_teacher"], stages=stages)
    _, out = chain(tmp_path, "--launcher", "slurm", "--dry-run")
    blocks = re.findall(r"^# (\S+)\n(#!/bin/bash\n.*?)(?=^# |\Z)", out, re.M | re.S)
    keys = [key for key, _ in blocks]
    assert keys.count("stage:junior_teacher") == 1
    assert keys.count("stage:senior_teacher") == 2 and keys.count("report") == 2
    # the second seed's student waits for the first seed's job of the shared teacher
    students = [text for key, text in blocks if key == "stage:junior_student"]
    for seed, text in zip((1, 2), students, strict=True):
        assert "#SBATCH --dependency=afterok:<stage-junior_teacher>\n" in text
        assert f" --seeds {seed} " in text


# ---------------------------------------------------------------------------------------
# Several jobs at once on this machine.


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The plan with one job (``one``) and with two (``two``), one thread each."""
    root = tmp_path_factory.mktemp("sched")
    sched_plan(root)
    for run, jobs in (("one", "1"), ("two", "2")):
        chain(root, "--run", run, "--jobs", jobs, "--threads", "1", "--no-evaluate")
    return root


def test_two_jobs_overlap_and_give_the_same_checkpoints(local):
    a, b = (job_record(local, "two", n) for n in ("junior_teacher", "senior_teacher"))
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"])  # side by side
    assert {a["slot"], b["slot"]} == {1, 2}
    student = job_record(local, "two", "junior_student")
    assert student["started"] >= a["ended"]  # after its teacher
    one = [job_record(local, "one", n) for n in NAMES]
    for before, after in zip(one, one[1:]):
        assert after["started"] >= before["ended"]  # one job: one after the other
    for name in NAMES:
        assert same_weights(weights(local, "one", name), weights(local, "two", name)), name
        assert (
            stage_record(local, "two", name)["updates"]
            == stage_record(local, "one", name)["updates"]
        )


def test_sigterm_stops_every_job_and_the_rerun_finishes(local):
    import subprocess
    import threading

    argv = ["chain", "--plan", "sched.yaml", "--run", "stopped", "--jobs", "2", "--threads", "1"]
    argv.append("--no-evaluate")
    proc = subprocess.Popen(
        utils.fairseq_script("evokd") + argv, cwd=local, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    trainers = "--save-dir checkpoints/stopped/"
    wait_for(
        lambda: (
            len(faults.processes_naming("fairseq-train", trainers, cwd=local)) == 2 or proc.poll()
        )
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, "".join(lines)
    wait_for(lambda: not faults.processes_naming("fairseq-train", trainers, cwd=local), timeout=15)
    assert not any(stage_record(local, "stopped", n).get("finished") for n in NAMES)
    chain(local, *argv[3:])
    for name in NAMES:
        assert same_weights(weights(local, "one", name), weights(local, "stopped", name)), name


def test_progress_lines_of_jobs_reporting_at_once_stay_whole(monkeypatch):
    """Jobs report from their own threads: each line arrives whole, never glued to another
    (``print`` writes a line and its newline in two calls, which threads can interleave)."""
    import threading
    import time

    from evokd.cli.chain import _progress

    class Slow:
        def __init__(self):
            self.parts = []

        def write(self, text):
            time.sleep(0.002)  # a window between two writes of one print
            self.parts.append(text)

        def flush(self):
            pass

    stream = Slow()
    monkeypatch.setattr("sys.stderr", stream)
    lines = [f"[{n}/8] stage{n} (job {n % 2 + 1}): training" for n in range(8)]
    threads = [threading.Thread(target=_progress, args=(line,)) for line in lines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted("".join(stream.parts).splitlines()) == sorted(lines)


# ---------------------------------------------------------------------------------------
# A real Slurm.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lacking = slurm_cluster.missing()
    if lacking:
        pytest.skip(
            f"no Slurm here ({', '.join(lacking)} missing: apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd runs jobs as root: run the tests as root")
    with slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    return cluster


def dependencies(cluster, job):
    text = cluster.run("scontrol", "show", "job", str(job)).stdout
    found = re.search(r"Dependency=(\S+)", text).group(1)
    return sorted(re.findall(r"afterok:(\d+)", found))


def wait_for(condition, timeout=120, poll=0.3):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


def test_a_plan_error_submits_nothing(on_cluster, tmp_path):
    broken = [dict(STAGES[0]), dict(STAGES[2], teacher="no_such_stage")]
    sched_plan(tmp_path, stages=broken)
    code, out = chain(tmp_path, "--launcher", "slurm", check=False)
    assert code != 0 and "no_such_stage" in out
    assert on_cluster.run("squeue", "-h", "-o", "%i").stdout.strip() == ""
    assert not (tmp_path / "checkpoints" / "sched" / "jobs").exists()


def test_slurm_chain_with_a_killed_job(on_cluster, local):
    root, jobs_dir = local, local / "checkpoints" / "slurm" / "jobs"
    _, out = chain(root, "--run", "slurm", "--launcher", "slurm", "--threads", "1")
    ids = json.loads((jobs_dir / "slurm.json").read_text())
    assert list(ids) == [f"stage:{n}" for n in NAMES] + ["report"]
    # the jobs' dependencies are the plan's graph, as Slurm holds them
    expected = {
        "stage:junior_teacher": [],
        "stage:senior_teacher": [],
        "stage:junior_student": [ids["stage:junior_teacher"]],
        "report": sorted(ids[f"stage:{n}"] for n in NAMES),
    }
    for key, after in expected.items():
        if after:
            assert dependencies(on_cluster, ids[key]) == sorted(after), key
    # cancel the long stage's job after its first checkpoint: the report (which needs it) is
    # cancelled with it, the others finish. Its fairseq-train is stopped first (SIGSTOP), so
    # that it cannot finish its 24 updates before the cancel reaches it; Slurm's cancel sends
    # every process of the job SIGCONT, then SIGTERM.
    senior = root / "checkpoints" / "slurm" / "senior_teacher"
    trainer = ("fairseq-train", "--save-dir checkpoints/slurm/senior_teacher ")
    wait_for(
        lambda: (
            (senior / "checkpoint_last.pt").is_file()
            and faults.processes_naming(*trainer, cwd=root)
        ),
        poll=0.05,
    )
    for pid in faults.processes_naming(*trainer, cwd=root):
        os.kill(pid, signal.SIGSTOP)
    on_cluster.run("scancel", ids["stage:senior_teacher"])
    on_cluster.wait_idle()
    assert stage_record(root, "slurm", "junior_student").get("finished")
    assert not stage_record(root, "slurm", "senior_teacher").get("finished")
    _, status = chain(root, "--run", "slurm", "--launcher", "slurm", "--status")
    assert re.search(r"stage:senior_teacher +\d+ +CANCELLED", status)
    assert re.search(r"stage:junior_student +\d+ +finished \(COMPLETED\)", status)
    # a rerun submits only what is not finished, and the stage resumes from its checkpoint
    _, out = chain(root, "--run", "slurm", "--launcher", "slurm", "--threads", "1")
    assert re.findall(r"^(\S+): job", out, re.M) == ["stage:senior_teacher", "report"]
    on_cluster.wait_idle()
    log = (senior / "train.log").read_text()
    assert re.search(
        r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ [1-9]\d* updates\)", log
    )
    # the same checkpoints as the local runs, and every stage in the report
    for name in NAMES:
        assert stage_record(root, "slurm", name).get("finished"), name
        assert same_weights(weights(root, "one", name), weights(root, "slurm", name)), name
    rows = json.loads((root / "results" / "slurm" / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == NAMES
    assert [r["updates"] for r in rows] == [3, 24, 3]


def test_a_requeued_job_resumes_from_its_checkpoint(on_cluster, local):
    """Preemption, as Slurm does it: the job is requeued mid-stage and starts again."""
    root, run = local, "requeued"
    args = ["--run", run, "--launcher", "slurm", "--threads", "1", "--no-evaluate"]
    _, out = chain(root, *args, "--requeue", "--stage", "senior_teacher")
    jobs_dir = root / "checkpoints" / run / "jobs"
    job = json.loads((jobs_dir / "slurm.json").read_text())["stage:senior_teacher"]
    assert list(json.loads((jobs_dir / "slurm.json").read_text())) == ["stage:senior_teacher"]
    script = (jobs_dir / "stage-senior_teacher.sbatch").read_text()
    assert "#SBATCH --requeue\n" in script and "scontrol requeue" in script
    folder = root / "checkpoints" / run / "senior_teacher"
    wait_for(lambda: (folder / "checkpoint_last.pt").is_file())
    # requeued as a preempted job (21 updates still to go): back in the queue for
    # cred_expire seconds, then it starts again
    on_cluster.run("scontrol", "requeue", job)
    on_cluster.wait_idle()
    log = (folder / "train.log").read_text()
    assert re.search(
        r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ [1-9]\d* updates\)", log
    )
    assert stage_record(root, run, "senior_teacher")["updates"] == 24
    one = weights(root, "one", "senior_teacher")
    assert same_weights(one, weights(root, run, "senior_teacher"))
