"""Chains that teach cheaply and report honestly: a teacher cache built once as a step of
the chain, the training state carried between stages, early stopping, seeds, and plans
whose every command is checked by fairseq's parser before the first stage trains."""

import json
from pathlib import Path

import pytest

from evokd import cli
from tests import faults, utils
from tests.test_chain import MICRO_DIMS, chain

TRAIN = {
    "seed": 1, "optimizer": "adam", "lr": 1e-3, "lr-scheduler": "inverse_sqrt",
    "warmup-updates": 10, "max-tokens": 2000, "criterion": "label_smoothed_cross_entropy",
    "label-smoothing": 0.1, "num-workers": 0, "log-format": "json", "log-interval": 1,
    **MICRO_DIMS,
}  # fmt: skip
TEACHER = {"name": "teacher", "arch": "transformer_evokd_tiny_senior", "max_epoch": 1}


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    """300 Multi30k pairs prepared once (sentencepiece BPE, binarized)."""
    out = tmp_path_factory.mktemp("data") / "micro.de-en"
    argv = ["prepare", "multi30k", "--out", str(out), "--train-size", "300"]
    assert cli.main(argv + ["--eval-size", "30", "--vocab-size", "400"]) == 0
    return out


def write_plan(root, data, stages, name="teach", **extra):
    plan = {"name": name, "data": str(data), "train": dict(TRAIN), "kd": {"kd-alpha": 0.5}}
    plan.update(stages=stages, evaluate={"beam": 1, "max_len_b": 20}, **extra)
    path = Path(root) / f"{name}.yaml"
    path.write_text(json.dumps(plan, indent=1))
    return path


def stage_log(root, run, stage):
    return utils.parse_json_log(
        (Path(root) / "checkpoints" / run / stage / "train.log").read_text()
    )


def record(root, run, stage):
    return json.loads((Path(root) / "checkpoints" / run / stage / "evokd_stage.json").read_text())


def test_teacher_cache_is_built_once_and_read_by_two_stages(micro_data, tmp_path):
    students = [
        {"name": f"s{i}", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "teacher", "kd": {"cache": {"topk": 4}}}
        for i in (1, 2)
    ]  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER] + students)
    _, out = chain(tmp_path, plan, "--no-evaluate")
    caches = tmp_path / "checkpoints" / "teach" / "caches"
    (cache,) = list(caches.iterdir())  # one cache for the (teacher, data) pair
    assert json.loads((cache / "cache.json").read_text())["fingerprint"]["topk"] == 4
    assert out.count(f"teacher cache {cache.name}: done") == 1
    (step,) = list((tmp_path / "checkpoints" / "teach" / "steps").glob("cache-*.json"))
    step = json.loads(step.read_text())  # what the chain's report counts as the teacher's cost
    assert step["name"] == cache.name and step["data"] == str(micro_data)
    assert step["teacher"] == str(Path("checkpoints/teach/teacher/checkpoint_best.pt"))
    assert step["bytes"] == json.loads((cache / "cache.json").read_text())["bytes"]
    for name in ("s1", "s2"):
        command = record(tmp_path, "teach", name)["command"]
        assert command[command.index("--teacher-cache") + 1] == str(
            Path("checkpoints/teach/caches") / cache.name
        )
        assert command[command.index("--kd-topk") + 1] == "4"
        log = (tmp_path / "checkpoints" / "teach" / name / "train.log").read_text()
        assert "frozen" not in log  # the live teacher was never loaded
        train = [r for r in utils.parse_json_log(log) if r["_tag"] == "train"][-1]
        assert float(train["train_kd_loss"]) > 0
    # fairseq's output went to the logs only: the chain printed its own short story
    assert "train_inner" not in out and "[3/3] s2: done in" in out
    # the built cache is checked before training, in the dry run as in the run: a new stage
    # asking it for more than it holds is refused, naming it
    more = {**students[0], "name": "s3", "kd": {"cache": {"topk": 4}, "kd-topk": 8}}
    plan = write_plan(tmp_path, micro_data, [TEACHER] + students + [more])
    for dry in (["--dry-run"], []):
        code, out = chain(tmp_path, plan, "--no-evaluate", *dry, check=False)
        assert code == 2 and f"--teacher-cache {Path('checkpoints/teach/caches') / cache.name}: " \
            "holds the teacher's top 4 tokens, but --kd-topk is 8" in out, out  # fmt: skip
    assert not (tmp_path / "checkpoints" / "teach" / "s3").exists()


def test_training_state_carries_the_lr_schedule(micro_data, tmp_path):
    source = {"name": "a", "arch": "transformer_evokd_tiny_student", "max_update": 12}
    weights = {"name": "b", "arch": "transformer_evokd_tiny_student", "max_update": 6,
               "init_from": "a"}  # fmt: skip
    training = dict(weights, name="c", init_from_state="training")
    plan = write_plan(tmp_path, micro_data, [source, weights, training])
    chain(tmp_path, plan, "--no-evaluate")
    inner = {n: [r for r in stage_log(tmp_path, "teach", n) if r["_tag"] == "train_inner"]
             for n in "abc"}  # fmt: skip
    lr = {n: [float(r["lr"]) for r in records] for n, records in inner.items()}
    # weights only: a fresh optimizer and the warm-up again, from update 1
    assert [int(r["num_updates"]) for r in inner["b"]] == list(range(1, 7))
    assert lr["b"][0] == pytest.approx(lr["a"][0])
    # the training state: updates and the inverse_sqrt schedule continue from a's 12
    assert [int(r["num_updates"]) for r in inner["c"]] == list(range(13, 19))
    assert lr["c"][0] == pytest.approx(1e-3 * (10 / 13) ** 0.5, rel=1e-3)
    assert record(tmp_path, "teach", "c")["updates"] == 6
    assert record(tmp_path, "teach", "c")["start_updates"] == 12


def test_early_stopping_ends_a_stage_as_finished(micro_data, tmp_path):
    stage = {"name": "s", "arch": "transformer_evokd_tiny_student", "max_epoch": 30,
             "flags": {"patience": 1, "lr": 1e-12}}  # fmt: skip  # validation never improves
    plan = write_plan(tmp_path, micro_data, [stage])
    chain(tmp_path, plan, "--no-evaluate")
    done = record(tmp_path, "teach", "s")
    assert done["finished"] and done["epochs"] < 30
    stamp = (tmp_path / "checkpoints" / "teach" / "s" / "checkpoint_last.pt").stat().st_mtime_ns
    _, out = chain(tmp_path, plan, "--no-evaluate")
    assert "[1/1] s: finished earlier, skipped" in out
    # the same finished stage under other settings is refused, naming them, not skipped
    changed = write_plan(tmp_path, micro_data, [dict(stage, flags={"patience": 1, "lr": 1e-3})])
    code, out = chain(tmp_path, changed, "--no-evaluate", check=False)
    assert code == 2 and "stage s: " in out and "made with other settings" in out
    assert "--lr 1e-12" in out and "--lr 0.001" in out
    assert (tmp_path / "checkpoints" / "teach" / "s" / "checkpoint_last.pt").stat().st_mtime_ns == (
        stamp
    )


def test_seeds_run_into_their_own_folders_and_share_the_teacher(micro_data, tmp_path):
    student = {"name": "student_model", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
               "teacher": "teacher"}  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER, student], shared=["teacher"])
    _, out = chain(tmp_path, plan, "--seeds", "1", "2")
    runs = tmp_path / "checkpoints" / "teach"
    assert (runs / "shared" / "teacher" / "checkpoint_best.pt").is_file()
    assert not (runs / "seed1" / "teacher").exists()
    assert out.count("[1/2] teacher: finished earlier, skipped") == 1  # trained for seed 1
    rows = {}
    for seed in (1, 2):
        command = record(tmp_path, f"teach/seed{seed}", "student_model")["command"]
        assert command[command.index("--seed") + 1] == str(seed)
        report = json.loads(
            (tmp_path / "results" / "teach" / f"seed{seed}" / "results.json").read_text()
        )
        rows[seed] = {r["stage"]: r for r in report["rows"]}
    pooled = json.loads((tmp_path / "results" / "teach" / "results.json").read_text())
    by_stage = {r["stage"]: r for r in pooled["rows"]}
    values = [rows[1]["student_model"]["bleu"], rows[2]["student_model"]["bleu"]]
    assert by_stage["student_model"]["bleu_mean"] == pytest.approx(sum(values) / 2)
    assert by_stage["student_model"]["bleu_std"] == pytest.approx(
        abs(values[0] - values[1]) / 2**0.5
    )
    assert by_stage["teacher"]["bleu_std"] == 0  # one shared teacher, scored alike
    assert "± " in (tmp_path / "results" / "teach" / "results.md").read_text()


# ---------------------------------------------------------------------------------------
# Every command parsed before the first stage trains.


def _rejected(tmp_path, plan, *extra):
    code, out = chain(tmp_path, plan, *extra, check=False)
    assert code == 2, out
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written
    return out


@pytest.mark.parametrize("dry", [True, False])
def test_unknown_flag_in_a_late_stage_fails_before_training(micro_data, tmp_path, dry):
    late = {"name": "late", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
            "teacher": "teacher", "flags": {"no-such-flag": 1}}  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER, late])
    out = _rejected(tmp_path, plan, *(["--dry-run"] if dry else []))
    assert "stage late: fairseq-train rejects its command" in out
    assert "unrecognized arguments: --no-such-flag 1" in out


def test_misplaced_kd_key_names_the_stage(micro_data, tmp_path):
    late = {"name": "late", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
            "teacher": "teacher", "kd": {"max-epochs": 3}}  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER, late])
    out = _rejected(tmp_path, plan, "--dry-run")
    assert "stage late" in out and "--max-epochs" in out


def test_no_budget_and_seed_twice_are_errors(micro_data, tmp_path):
    plan = write_plan(tmp_path, micro_data, [TEACHER])
    out = _rejected(tmp_path, plan, "--", "--max-epoch", "0")
    assert "stage teacher: max_epoch and max_update are both 0" in out
    out = _rejected(tmp_path, plan, "--seeds", "1", "2", "--", "--seed", "3")
    assert "stage teacher: a seed is given twice" in out


def test_bad_cache_spec_names_the_stage(micro_data, tmp_path):
    student = {"name": "s", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
               "teacher": "teacher", "kd": {"cache": {"topk": 0}}}  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER, student])
    out = _rejected(tmp_path, plan, "--dry-run")
    assert "stage s: kd: cache: expected {topk: K}" in out


def test_cpu_controls_repeats_the_cpu_plan():
    """cpu_controls runs in the cpu plan's folders after it: its first stages must be the
    cpu plan's, with the same data and flags, or it would retrain (or refuse) them."""
    from evokd.chain.plan import load_plan

    cpu, controls = load_plan("cpu"), load_plan("cpu_controls")
    assert controls.name == cpu.name and controls.data == cpu.data
    assert (controls.train, controls.kd, controls.evaluate) == (cpu.train, cpu.kd, cpu.evaluate)
    assert controls.stages[: len(cpu.stages)] == cpu.stages
    assert len(controls.stages) > len(cpu.stages)


def test_progress_line_names_how_the_teacher_is_read(micro_data, tmp_path):
    """A stage's progress line says online, the chain's cache, or the cache folder the plan
    gives (a plan naming its own ``teacher-cache`` is not online KD)."""
    from evokd.chain.plan import load_plan
    from evokd.chain.progress import Progress
    from evokd.chain.runner import Chain

    kd = dict(arch="transformer_evokd_tiny_student", teacher="teacher", max_epoch=2)
    stages = [
        dict(name="o", **kd),
        dict(name="c", kd={"cache": {"topk": 8}}, **kd),
        dict(name="g", flags={"teacher-cache": "cache/t_top8"}, **kd),
    ]
    plan = load_plan(str(write_plan(tmp_path, micro_data, [TEACHER] + stages)))
    chain = Chain(plan, checkpoints=tmp_path / "checkpoints")
    progress = Progress(chain.trainer, plan.stages)
    assert [progress.describe(plan.stage(n)) for n in "ocg"] == [
        "training, 2 epochs, KD from teacher (online)",
        "training, 2 epochs, KD from teacher (cache)",
        "training, 2 epochs, KD from teacher (cache cache/t_top8)",
    ]
    (tmp_path / "checkpoints" / "teach" / "o").mkdir(parents=True)
    (tmp_path / "checkpoints" / "teach" / "o" / "checkpoint_last.pt").touch()
    assert progress.describe(plan.stage("o")).startswith("resuming, 2 epochs")


def test_training_left_counts_a_stage_on_a_clock_at_most_its_time(micro_data, tmp_path):
    """After a stage of 100 updates in 50 s (0.5 s each): a stage of 10 updates is 5 s, one
    of 40 epochs whose epoch size is not known yet but with --stop-time-hours 0.01 at most
    36 s, and a stage of 1,000 updates with the plan's 0.02 hours 72 s, not 500."""
    from evokd.chain.plan import load_plan
    from evokd.chain.progress import Progress
    from evokd.chain.runner import Chain

    arch = "transformer_evokd_tiny_student"
    stages = [
        dict(name="a", arch=arch, max_update=100),
        dict(name="b", arch=arch, max_update=10),
        dict(name="c", arch=arch, max_epoch=40, flags={"stop-time-hours": 0.01}),
        dict(name="d", arch=arch, max_update=1000),
    ]
    train = {**TRAIN, "stop-time-hours": 0.02}  # the plan's, for every stage without its own
    plan = load_plan(str(write_plan(tmp_path, micro_data, stages, train=train)))
    progress = Progress(Chain(plan, checkpoints=tmp_path / "checkpoints").trainer, plan.stages)
    line = progress.finished(plan.stage("a"), {"updates": 100, "wall_seconds": 50.0}, 50.0)
    assert line.startswith("done in 50s, 100 updates (0.50 s/update)")
    assert line.endswith(", about 1m53s of training left")  # 5 + 36 + 72 = 113 s
    # the stage without a clock of its own takes the plan's: 5 + 72 + 72 = 149 s
    plan.stages[2].flags.clear()
    line = progress.finished(plan.stage("a"), {"updates": 100, "wall_seconds": 50.0}, 50.0)
    assert line.endswith(", about 2m29s of training left")
    # with no clock at all, a stage whose epoch size is not known leaves the estimate out
    del plan.train["stop-time-hours"]
    line = progress.finished(plan.stage("a"), {"updates": 100, "wall_seconds": 50.0}, 50.0)
    assert "of training left" not in line


# ---------------------------------------------------------------------------------------
# The dry run checks what a real run checks before training, and lists every step.


def test_dry_run_lists_every_step_in_order(micro_data, tmp_path):
    seqkd = {"name": "s", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
             "teacher": "teacher", "seqkd": {"teacher": "teacher"},
             "kd": {"cache": {"topk": 4}}}  # fmt: skip
    plan = write_plan(tmp_path, micro_data, [TEACHER, seqkd])
    _, out = chain(tmp_path, plan, "--dry-run")
    steps = [line for line in out.splitlines() if line.startswith("#")]
    commands = [line for line in out.splitlines() if "fairseq-train" in line.split(" ")[0]]
    ck = tmp_path / "checkpoints" / "teach"
    seqkd_data = f"{micro_data}.seqkd-teach-teacher.ctranslate2-float32"  # where installed
    assert [line.split(":")[0] for line in steps] == [
        f"# data {micro_data}",
        "# [1/2] teacher",
        f"#   sequence-level KD data {seqkd_data} (to build)",
        f"#   teacher cache {ck.relative_to(tmp_path)}/caches/teacher.{Path(seqkd_data).name}"
        ".top4 (to build)",
        "# [2/2] s",
        "# evaluation",
        "# report",
    ]
    assert steps[0] == f"# data {micro_data}: prepared"
    assert len(commands) == 2 and "--save-dir checkpoints/teach/s " in commands[1]
    assert f"{seqkd_data} --user-dir" in commands[1]
    assert not (tmp_path / "checkpoints").exists() and not Path(seqkd_data).exists()


def test_dry_run_fails_on_an_unreadable_teacher_and_on_other_dictionaries(
    micro_data, teacher_ckpt, tmp_path
):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint\n" * 10)
    for teacher, message in [
        (broken, f"stage s: teacher {broken}: not a readable fairseq checkpoint"),
        # trained on other data: another dictionary
        (teacher_ckpt, f"stage s: teacher {teacher_ckpt}: its encoder embeddings have"),
    ]:
        student = {"name": "s", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
                   "teacher": str(teacher)}  # fmt: skip
        plan = write_plan(tmp_path, micro_data, [student])
        for dry in (["--dry-run"], []):  # the real run fails alike, before training
            out = _rejected(tmp_path, plan, *dry)
            assert message in out, out


def test_dry_run_fails_on_unprepared_data(tmp_path):
    data = tmp_path / "data-bin" / "empty"
    data.mkdir(parents=True)
    plan = write_plan(tmp_path, data, [TEACHER])
    out = _rejected(tmp_path, plan, "--dry-run")
    assert f"data folder {data} holds no binarized data (dict.*.txt)" in out


def test_a_failed_stage_shows_its_own_error_line_then_its_log(micro_data, tmp_path):
    missing = tmp_path / "nope.pt"
    stage = {**TEACHER, "flags": {"init-student-from": str(missing)}}
    plan = write_plan(tmp_path, micro_data, [stage])
    code, out = chain(tmp_path, plan, "--no-evaluate", check=False)
    assert code == 2
    log = Path("checkpoints") / "teach" / "teacher" / "train.log"
    error = (
        f"evokd chain: error: stage teacher: evokd.core.checkpoint.CheckpointError: "
        f"--init-student-from {missing}: no such file (expected a fairseq checkpoint .pt)\n"
        f"training failed (exit status 1); see {log}\n"
    )
    assert out.endswith(error), out[-2000:]


@pytest.mark.parametrize(
    "log, line",
    [
        ("$ old\nTraceback (most recent call last):\n  x\nValueError: old\n$ cmd\nall well\n"
         "epoch 1 | loss 3\n", "epoch 1 | loss 3"),
        ("$ cmd\nTraceback (most recent call last):\n  File x\n    y\nKeyError: 'a'\n\n"
         "During handling of the above exception, another exception occurred:\n\n"
         "Traceback (most recent call last):\n  File z\nRuntimeError: second\n",
         "RuntimeError: second"),
        # torchrun: the evokd error of a rank, then torchrun's own traceback
        ("$ cmd\n[rank1]: x\nTraceback (most recent call last):\n  File a\n"
         "evokd.errors.EvokdError: --data d: bad\nTraceback (most recent call last):\n"
         "  File b\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
         "====\n", "evokd.errors.EvokdError: --data d: bad"),
        ("$ cmd\n", "(nothing logged)"),
    ],
)  # fmt: skip
def test_failure_line(tmp_path, log, line):
    from evokd.chain.stage import failure_line

    (tmp_path / "train.log").write_text(log)
    assert failure_line(tmp_path / "train.log") == line
    assert failure_line(tmp_path / "absent.log") == "(no log)"


# ---------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: one line that says how to resume, the training process gone with it.


@pytest.mark.parametrize("signum, code, said", [
    (2, 130, "interrupted (Ctrl-C)"), (15, 143, "terminated (SIGTERM)"),
])  # fmt: skip
def test_a_signal_ends_the_chain_with_the_resume_line(micro_data, tmp_path, signum, code, said):
    import signal
    import subprocess
    import threading
    import time

    stage = {**TEACHER, "max_epoch": 2}
    plan = write_plan(tmp_path, micro_data, [stage])
    argv = ["chain", "--plan", str(plan), "--no-evaluate"]
    # as from a terminal: a shell's background job (`make test &`, nohup) ignores SIGINT,
    # and a process that starts with SIGINT ignored keeps ignoring it
    proc = subprocess.Popen(
        utils.fairseq_script("evokd") + argv, cwd=tmp_path, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    trainer = (str(micro_data), "--save-dir checkpoints/teach/teacher ")  # fairseq-train's
    deadline = time.time() + 300
    while not (
        any(line.startswith("[1/1] teacher: training") for line in lines)
        and faults.processes_naming(*trainer)
    ):
        assert proc.poll() is None and time.time() < deadline, "".join(lines)
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    reader.join(timeout=10)
    resume = f"evokd chain: {said}; finished work is kept: 'evokd {' '.join(argv)}' resumes\n"
    assert lines[-1] == resume and not any("Traceback" in line for line in lines), lines
    deadline = time.time() + 10
    while faults.processes_naming(*trainer) and time.time() < deadline:
        time.sleep(0.1)
    assert faults.processes_naming(*trainer) == []  # fairseq-train went with it
    assert not record(tmp_path, "teach", "teacher")["finished"]
    _, out = chain(tmp_path, plan, "--no-evaluate")
    assert record(tmp_path, "teach", "teacher")["finished"]
    assert "[1/1] teacher: training, 2 epochs" in out or "resuming" in out
