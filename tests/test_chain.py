"""The chain: a micro plan end to end, kill and resume, the decisions (commands, folders,
skip, resume, settings checks) taken in-process, bad plans, and the bin/ recipes."""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sacrebleu.metrics import BLEU

from evokd import cli
from tests import faults, utils

REPO = Path(__file__).resolve().parents[1]
MICRO_DIMS = {
    "encoder-layers": 2, "decoder-layers": 2, "encoder-embed-dim": 32, "decoder-embed-dim": 32,
    "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64,
    "encoder-attention-heads": 2, "decoder-attention-heads": 2,
}  # fmt: skip
WIDE = {"encoder-embed-dim": 48, "decoder-embed-dim": 48}


def micro_plan(tmp, name="micro", senior_epochs=1, **edits):
    """A plan with the EKD and TAKD shape at test size: 300 pairs, one epoch a stage."""
    stages = [
        {"name": "junior_teacher", "arch": "transformer_evokd_tiny_junior", "max_epoch": 1},
        {"name": "senior_teacher", "arch": "transformer_evokd_tiny_senior",
         "max_epoch": senior_epochs, "flags": WIDE},
        {"name": "junior_student", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "junior_teacher", "kd": {"kd-temperature": 2}},
        {"name": "master_student", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "senior_teacher", "init_from": "junior_student"},
    ]  # fmt: skip
    plan = {
        "name": name,
        "data": "data-bin/micro.de-en",
        "prepare": {"corpus": "multi30k", "train-size": 300, "eval-size": 30, "vocab-size": 400},
        "train": {
            "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 2000,
            "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1,
            "num-workers": 0, "log-format": "json", "log-interval": 1, **MICRO_DIMS,
            # validation BLEU picks checkpoint_best.pt, as in the shipped plans
            "eval-bleu": True, "eval-bleu-args": {"beam": 2, "max_len_a": 1.2, "max_len_b": 5},
            "eval-bleu-detok": "moses", "eval-bleu-remove-bpe": True,
            "best-checkpoint-metric": "bleu", "maximize-best-checkpoint-metric": True,
        },
        "kd": {"kd-alpha": 0.5},
        "evaluate": {"beam": 2, "max_len_b": 20},
        "stages": stages,
    }  # fmt: skip
    plan.update(edits)
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(json.dumps(plan, indent=1))  # JSON is YAML
    return path


def chain(root, plan, *extra, check=True):
    """``evokd chain --plan PLAN EXTRA`` in-process from ``root``: (exit code, output)."""
    return utils.evokd_in_process(["chain", "--plan", plan, *extra], cwd=root, check=check)


def recipe(name, *args, cwd=None, check=True):
    """``bin/NAME.sh ARGS`` as the script runs it (``evokd recipe NAME ARGS``), in-process."""
    return utils.evokd_in_process(["recipe", name, *args], cwd=cwd, check=check)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The micro plan run once, uninterrupted: (root, plan, output)."""
    root = tmp_path_factory.mktemp("chain")
    plan = micro_plan(root, senior_epochs=3)
    _, out = chain(root, plan)
    return root, plan, out


def results(root, run="micro"):
    with open(Path(root) / "results" / run / "results.json", encoding="utf-8") as f:
        return {row["stage"]: row for row in json.load(f)["rows"]}


def test_micro_plan_end_to_end(finished):
    root, plan, out = finished
    for name in ("results.json", "results.md", "results.png"):
        assert (root / "results" / "micro" / name).stat().st_size > 100
    rows = results(root)
    assert list(rows) == ["junior_teacher", "senior_teacher", "junior_student", "master_student"]
    # one epoch of the same data and batch size is the same number of updates; three, three
    # times as many
    one = rows["junior_teacher"]["updates"]
    assert [r["updates"] for r in rows.values()] == [one, 3 * one, one, one] and one >= 1
    for name, row in rows.items():
        best = root / "checkpoints" / "micro" / name / "checkpoint_best.pt"
        state = torch.load(best, map_location="cpu", weights_only=False)
        weights = [t for k, t in state["model"].items() if not k.endswith(".version")]
        assert row["parameters"] == sum(t.numel() for t in weights), name
        # the tokenized BLEU of the row is sacrebleu's on the files it wrote
        hyps, refs = (
            (root / row[k]).read_text().splitlines() for k in ("hypotheses_tok", "references")
        )
        own = BLEU(tokenize="none", force=True).corpus_score(hyps, [refs]).score
        assert row["bleu"] == pytest.approx(own, abs=1e-6), name
    assert rows["senior_teacher"]["parameters"] > rows["junior_teacher"]["parameters"]
    assert rows["master_student"]["teacher"] == "senior_teacher"
    table = (root / "results" / "micro" / "results.md").read_text()
    assert "master_student" in table and "senior_teacher" in table
    # the table is printed at the end: the file's rows, in the order of the plan
    printed = [line for line in out.splitlines() if line.startswith("| ")]
    for name in rows:
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row in printed, (row, printed)
    stages = [line.split(" | ")[0][2:] for line in printed]
    assert [name for name in stages if name in rows] == list(rows)
    # every stage in its own folder, each recording what it is
    for name in rows:
        record = json.loads(
            (root / "checkpoints" / "micro" / name / "evokd_stage.json").read_text()
        )
        assert record["stage"] == name and record["finished"]
    # the master student started from the junior student's weights
    master = (root / "checkpoints" / "micro" / "master_student" / "train.log").read_text()
    assert "student initialised from" in master and "junior_student" in master


def test_rerun_skips_finished_stages(finished, monkeypatch):
    root, plan, _ = finished
    from evokd.chain.stage import StageTrainer

    monkeypatch.setattr(StageTrainer, "train", lambda *a: pytest.fail("a finished stage trained"))
    stamps = {p: p.stat().st_mtime_ns for p in (root / "checkpoints").rglob("*.pt")}
    _, out = chain(root, plan, "--no-evaluate")
    assert out.count("finished earlier, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in (root / "checkpoints").rglob("*.pt")} == stamps


def test_killed_chain_resumes_and_matches(finished, tmp_path):
    """The plan's first two stages, killed in the senior teacher's second epoch, its
    checkpoint_last.pt then cut to half (as a kill in fairseq's copy of a save leaves it), and
    rerun, score exactly as in the uninterrupted run."""
    ref_root, ref_plan, _ = finished
    first_two = json.loads(ref_plan.read_text())["stages"][:2]
    plan = micro_plan(tmp_path, senior_epochs=3, stages=first_two)
    shutil.copytree(ref_root / "data-bin", tmp_path / "data-bin")  # prepared alike
    pid = faults.started(["chain", "--plan", plan], tmp_path)  # a fork of this process
    senior = tmp_path / "checkpoints" / "micro" / "senior_teacher"
    deadline = time.time() + 300
    last = senior / "checkpoint_last.pt"  # the first epoch saved (its last copy begun)
    while not last.exists() and time.time() < deadline:
        assert faults.running(pid), "the chain ended before it could be killed"
        time.sleep(0.05)
    faults.kill(pid)
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    record = json.loads((senior / "evokd_stage.json").read_text())
    assert not record["finished"]
    done = {
        name: sha(tmp_path / "checkpoints" / "micro" / name / "checkpoint_best.pt")
        for name in ("junior_teacher",)
    }
    time.sleep(0.5)  # the training process dies with the chain and frees the stage lock
    _, out = chain(tmp_path, plan)
    assert out.count("finished earlier, skipped") == 1
    assert "resuming" in out
    for name, digest in done.items():
        assert sha(tmp_path / "checkpoints" / "micro" / name / "checkpoint_best.pt") == digest
    log = (senior / "train.log").read_text()
    assert "Loaded checkpoint" in log
    assert "checkpoint_last.pt was truncated" in out
    ours, reference = results(tmp_path), results(ref_root)
    assert list(ours) == ["junior_teacher", "senior_teacher"]
    for name, row in ours.items():
        for key in ("bleu", "sacrebleu", "chrf", "updates"):
            assert reference[name][key] == row[key], (name, key)


def test_a_save_cut_short_is_mended_from_the_save_it_copied(tmp_path):
    """fairseq renames a save's first file into place and copies it to checkpoint_best.pt
    and checkpoint_last.pt: a truncated copy is replaced by the newest whole checkpoint, a
    whole one is left alone, and a truncated one with nothing to mend it from is removed."""
    from evokd.core.checkpoint import repair_interrupted_save

    def save(name, value, age):
        path = tmp_path / name
        torch.save({"epoch": value, "weights": torch.full((256,), float(value))}, path)
        os.utime(path, ns=(time.time_ns() - age * 10**9,) * 2)
        return path

    save("checkpoint1.pt", 1, age=30)
    best = save("checkpoint_best.pt", 1, age=29)
    newest = save("checkpoint2.pt", 2, age=20)
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(newest.read_bytes()[:700])
    before = sha(best)
    assert repair_interrupted_save(tmp_path) == ["checkpoint_last.pt"]
    assert sha(last) == sha(newest) and sha(best) == before
    assert torch.load(last)["epoch"] == 2
    assert repair_interrupted_save(tmp_path) == []
    legacy = tmp_path / "checkpoint_best.pt"  # torch's older format is no zip, and whole
    torch.save({"epoch": 1}, legacy, _use_new_zipfile_serialization=False)
    before = sha(legacy)
    assert repair_interrupted_save(tmp_path) == [] and sha(legacy) == before

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "checkpoint_last.pt").write_bytes(newest.read_bytes()[:700])
    assert repair_interrupted_save(alone) == ["checkpoint_last.pt"]
    assert not (alone / "checkpoint_last.pt").exists()


# ---------------------------------------------------------------------------------------
# The decisions, in-process: commands, folders, skip, resume, settings checks. No stage
# trains here: StageTrainer.train is replaced by a fake that records what it was asked.


@pytest.fixture
def decisions(tmp_path, monkeypatch):
    """The micro plan on a stand-in data folder, and a chain whose training is recorded:
    (chain, trained stage names, progress lines, a function writing a stage's record)."""
    from evokd.chain.plan import load_plan
    from evokd.chain.runner import Chain
    from evokd.chain.stage import StageTrainer
    from evokd.core.devices import Devices

    data = tmp_path / "data"
    data.mkdir()
    for lang in ("de", "en"):
        (data / f"dict.{lang}.txt").write_text("a 1\n")
    plan = load_plan(str(micro_plan(tmp_path, prepare=None, data=str(data))))
    lines, trained = [], []
    chain = Chain(plan, checkpoints=tmp_path / "ck", results=tmp_path / "res",
                  devices=Devices(gpus=0), progress=lines.append)  # fmt: skip

    def finish(name, **changes):
        stage = plan.stage(name)
        folder = chain.layout.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint_best.pt").touch()
        (folder / "checkpoint_last.pt").touch()
        record = {**chain.trainer.identity(stage), "budget": chain.trainer.budget(stage)}
        record.update(finished=True, settings=chain.trainer.settings(stage), updates=10)
        record.update(changes)
        (folder / "evokd_stage.json").write_text(json.dumps(record))

    def train(trainer, stage):
        trained.append(stage.name)
        finish(stage.name)
        return trainer.stage_record(stage)

    monkeypatch.setattr(StageTrainer, "train", train)
    return SimpleNamespace(chain=chain, plan=plan, trained=trained, lines=lines, finish=finish)


def test_commands_of_the_stages(decisions):
    chain, plan = decisions.chain, decisions.plan
    ck = decisions.chain.layout.checkpoints
    cmd = {s.name: chain.trainer.train_command(s) for s in plan.stages}

    def value(name, flag):
        return cmd[name][cmd[name].index(flag) + 1]

    for name in cmd:
        assert value(name, "--save-dir") == str(ck / name) and cmd[name][-1] == "--cpu"
        assert value(name, "--task") == "evokd_translation"
    assert "--teacher-path" not in cmd["junior_teacher"]
    assert value("junior_teacher", "--criterion") == "label_smoothed_cross_entropy"
    assert value("junior_student", "--teacher-path") == str(
        ck / "junior_teacher" / "checkpoint_best.pt"
    )
    assert value("junior_student", "--criterion") == "word_kd"
    # the stage's kd over the plan's over WordKDConfig's defaults (temperature 1, alpha 0.5)
    assert value("junior_student", "--kd-temperature") == "2"
    assert value("master_student", "--kd-temperature") == "1.0"
    assert value("master_student", "--kd-alpha") == "0.5"
    assert value("master_student", "--init-student-from") == str(
        ck / "junior_student" / "checkpoint_best.pt"
    )
    assert value("senior_teacher", "--encoder-embed-dim") == "48"


def test_an_unfinished_prerequisite_is_refused_with_its_reason(decisions):
    """The refusal says why the teacher is not usable: never trained, stopped mid-way (its
    checkpoint_best.pt exists but is not the end of training), or trained for another
    budget; a finished teacher passes."""
    from evokd.errors import EvokdError

    chain, student = decisions.chain, decisions.plan.stage("junior_student")

    def refusal():
        with pytest.raises(EvokdError) as error:
            chain.check_prerequisites(student)
        return str(error.value)

    assert "(never trained: " in refusal()
    decisions.finish("junior_teacher", finished=False)
    assert "(its training stopped before the end (" in refusal()
    decisions.finish("junior_teacher", budget={"max_epoch": 9, "max_update": None})
    assert "trained for {'max_epoch': 9, 'max_update': None}, the plan asks" in refusal()
    decisions.finish("junior_teacher")
    chain.check_prerequisites(student)


def test_two_processes_split_the_batch(decisions):
    from evokd.chain.stage import StageTrainer
    from evokd.core.devices import Devices

    chain = decisions.chain
    trainer = StageTrainer(chain.plan, chain.layout, Devices(gpus=2, environ={}))
    cmd = trainer.train_command(chain.plan.stage("junior_teacher"))
    assert cmd[1:5] == ["--nproc-per-node", "2", "--master-port", "29500"]
    assert cmd[cmd.index("--max-tokens") + 1] == "1000"  # 2000 for one process
    assert cmd[cmd.index("--distributed-world-size") + 1] == "2"


def test_finished_stages_are_skipped_and_an_interrupted_one_resumed(decisions):
    for name in ("junior_teacher", "senior_teacher"):
        decisions.finish(name)
    decisions.finish("junior_student", finished=False)  # killed: no record of its end
    decisions.chain.run(evaluate=False)
    assert decisions.trained == ["junior_student", "master_student"]
    lines = decisions.lines
    assert "[1/4] junior_teacher: finished earlier, skipped" in lines
    assert "[2/4] senior_teacher: finished earlier, skipped" in lines
    assert any(line.startswith("[3/4] junior_student: resuming, 1 epoch, KD") for line in lines)
    assert any(line.startswith("[4/4] master_student: training, 1 epoch") for line in lines)


def test_a_bigger_budget_trains_a_finished_stage_on(decisions):
    decisions.finish("junior_teacher", budget={"max_epoch": 0, "max_update": None})
    decisions.chain.run(only=["junior_teacher"], evaluate=False)
    assert decisions.trained == ["junior_teacher"]


def test_folder_of_another_stage_or_other_settings_is_refused(decisions):
    from evokd.errors import EvokdError

    decisions.finish("junior_teacher", stage="senior_teacher")
    with pytest.raises(EvokdError, match="holds checkpoints of another stage"):
        decisions.chain.run(evaluate=False)
    decisions.finish("junior_teacher", settings="--lr 1")
    with pytest.raises(EvokdError, match="made with other settings") as found:
        decisions.chain.run(evaluate=False)
    assert "--lr 1" in str(found.value) and "--lr 0.001" in str(found.value)
    assert decisions.trained == []


def test_a_stage_needs_its_teacher_first(decisions):
    from evokd.errors import EvokdError

    with pytest.raises(EvokdError, match="master_student needs its teacher senior_teacher") as e:
        decisions.chain.run(only=["master_student"], evaluate=False)
    assert "--stage senior_teacher first" in str(e.value) and decisions.trained == []


def test_teacher_steps_come_before_the_stage(decisions, monkeypatch):
    from evokd.chain.runner import Chain

    chain = decisions.chain
    chain.plan.stage("junior_student").kd["cache"] = {"topk": 4}
    decisions.finish("junior_teacher")
    built = []
    monkeypatch.setattr(
        Chain, "build_cache", lambda self, s: built.append((s.name, decisions.trained[:]))
    )
    chain.run(only=["junior_student"], evaluate=False)
    assert built == [("junior_student", [])] and decisions.trained == ["junior_student"]
    cmd = chain.trainer.train_command(chain.plan.stage("junior_student"))
    cache = cmd[cmd.index("--teacher-cache") + 1]
    assert cache == str(chain.layout.checkpoints / "caches" / "junior_teacher.data.top4")
    assert cmd[cmd.index("--kd-topk") + 1] == "4"


# ---------------------------------------------------------------------------------------
# Bad plans and missing prerequisites.


def _rejected(tmp_path, capsys, plan, message):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(["chain", "--plan", str(plan)])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert not (tmp_path / "checkpoints").exists()  # rejected before any training
    return err


def _stages_with(change):
    stages = [
        {"name": "teacher", "arch": "transformer_evokd_tiny_senior", "max_epoch": 1},
        {"name": "student", "arch": "transformer_evokd_tiny_student", "max_epoch": 1,
         "teacher": "teacher"},
    ]  # fmt: skip
    change(stages)
    return stages


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s[1].update(teacher="nobody"), "stage student: teacher 'nobody'"),
        (lambda s: s[0].update(teacher="student"), "depend on each other (a cycle)"),
        (lambda s: s[1].update(arch="transformer_nonexistent"), "stage student: architecture"),
        (lambda s: s[1].update(init_from="teacher"), "stage student (transformer_evokd_tiny"),
        (lambda s: s[1].update(max_epoch=0), "stage student: max_epoch 0"),
        (lambda s: s[1].update(epochs=3), "stage student: unknown keys ['epochs']"),
        (lambda s: s.append(dict(s[0])), "two stages are named 'teacher'"),
    ],
)
def test_bad_plans_are_rejected(tmp_path, capsys, change, message):
    plan = micro_plan(tmp_path, stages=_stages_with(change))
    _rejected(tmp_path, capsys, plan, message)


@pytest.mark.parametrize("name", ["..", ".", "-x", "a/b", "../up", "/abs", "a b"])
@pytest.mark.parametrize("where", ["stage", "plan", "run"])
def test_names_that_are_paths_are_refused(tmp_path, capsys, name, where):
    stages = _stages_with(lambda s: None)
    if where == "stage":
        stages[0]["name"], stages[1]["teacher"] = name, name
    plan = micro_plan(tmp_path, stages=stages)
    if where == "plan":
        plan.write_text(json.dumps({**json.loads(plan.read_text()), "name": name}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(
            ["chain", "--plan", str(plan)] + ([f"--run={name}"] if where == "run" else [])
        )
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "not starting with '-', and not '.' or '..'" in err, err
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results").exists()


def test_the_chain_writes_only_inside_its_folders(finished):
    """Every file of the run is in its run's folders, or in the prepared data beside it."""
    root, plan, _ = finished
    inside = [root / "checkpoints" / "micro", root / "results" / "micro", root / "data-bin"]
    written = [p for p in root.rglob("*") if p.is_file() and p != plan]
    assert written
    outside = [p for p in written if not any(p.resolve().is_relative_to(d) for d in inside)]
    assert outside == []
    folders = {p.relative_to(root / "checkpoints" / "micro").parts[0] for p in written
              if p.is_relative_to(root / "checkpoints" / "micro")}  # fmt: skip
    assert {s["name"] for s in json.loads(plan.read_text())["stages"]} <= folders


def test_missing_data_is_rejected(tmp_path, capsys):
    plan = micro_plan(tmp_path, prepare=None, data="data-bin/absent")
    err = _rejected(tmp_path, capsys, plan, "data-bin/absent holds no binarized data")
    assert "evokd prepare" in err


def test_recipe_needs_its_teacher_first(finished, tmp_path):
    root, plan, _ = finished
    code, out = recipe(
        "junior_student", root, "29500", "0", "--preset", plan, "--save-dir", tmp_path / "js",
        "--data", "data-bin/nope", check=False,
    )  # fmt: skip
    assert code == 2 and "holds no binarized data" in out
    fresh = micro_plan(tmp_path, name="fresh")
    utils.run(["cp", "-r", str(root / "data-bin"), str(tmp_path)])
    code, out = recipe("master_student", tmp_path, "29500", "0", "--preset", fresh, check=False)
    assert code == 2
    assert "master_student needs its teacher senior_teacher" in out
    assert "run bin/senior_teacher.sh first" in out
    assert not (
        tmp_path / "checkpoints" / "fresh" / "master_student" / "checkpoint_last.pt"
    ).exists()


def test_recipe_reads_relative_flags_from_the_callers_folder(finished, tmp_path):
    root, plan, _ = finished
    here = tmp_path / "here"
    here.mkdir()
    utils.run(["cp", "-r", str(root / "data-bin" / "micro.de-en"), str(here / "mine")])
    (here / "my-plan.yaml").write_text(plan.read_text())
    _, out = recipe(
        "junior_student", root, "29500", "0", "--preset", "my-plan.yaml", "--data", "mine",
        "--save-dir", "js", "--dry-run", cwd=here,
    )  # fmt: skip
    command = out.strip().splitlines()[-1].split()
    assert command[command.index("--user-dir") - 1] == str(here / "mine")
    assert command[command.index("--save-dir") + 1] == str(here / "js")


def test_stage_folder_of_another_stage_is_refused(finished):
    root, plan, _ = finished
    other = root / "checkpoints" / "micro" / "master_student"
    code, out = recipe(
        "junior_student", root, "29500", "0", "--preset", plan, "--save-dir", other, check=False
    )
    assert code == 2 and "holds checkpoints of another stage" in out


# ---------------------------------------------------------------------------------------
# The recipes: --help, the positional form, and a two-process CPU run.

RECIPES = [
    "student_model", "junior_teacher", "senior_teacher", "junior_student", "senior_student",
    "master_student", "TAKD_assistant_teacher", "TAKD_student",
]  # fmt: skip


@pytest.mark.parametrize("name", RECIPES + ["eval_model", "run_chain"])
def test_recipe_help(name):
    code, out = utils.run(["bash", str(REPO / "bin" / f"{name}.sh"), "--help"])
    assert code == 0 and "usage:" in out.lower() and f"bin/{name}.sh" in out


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_positional_form_parses(name, tmp_path):
    code, out = recipe(
        name, tmp_path, "29533", "2", "--preset", "paper", "--max-epoch", "7", "--dry-run",
        "--", "--patience", "3",
    )  # fmt: skip
    command = out.strip().splitlines()[-1]
    assert "--nproc-per-node 2 --master-port 29533 -m evokd.train" in command
    assert f"--save-dir checkpoints/paper/{name} " in command
    assert "--max-epoch 7" in command and command.endswith("--patience 3")
    assert "--max-tokens 2048" in command  # 4096 split between the two processes
    assert "--distributed-backend gloo" in command or "--ddp-backend pytorch_ddp" in command
    if "student" in name and name != "student_model":
        assert "--criterion word_kd" in command and "--kd-alpha 0.5" in command


def test_two_process_kd_stage_through_the_recipe(finished, tmp_path):
    root, plan, _ = finished
    save = tmp_path / "junior_student_ddp"
    # what bin/junior_student.sh runs (the script's own forms: test_recipe_positional_form_*)
    _, out = recipe("junior_student", root, "29534", "2", "--preset", plan, "--save-dir", save)
    assert "distributed init (rank 1)" in (save / "train.log").read_text()
    record = json.loads((save / "evokd_stage.json").read_text())
    assert record["finished"] and record["updates"] >= 1
    assert "--ddp-backend legacy_ddp" in " ".join(record["command"])


SHIPPED_PLANS = sorted((REPO / "evokd" / "plans").glob("*.yaml")) + sorted(
    (REPO / "examples" / "plans").glob("*.yaml")
)


@pytest.mark.parametrize("path", SHIPPED_PLANS, ids=lambda p: p.parent.name + "/" + p.name)
def test_shipped_plans_are_valid(path):
    from fairseq.models import ARCH_MODEL_REGISTRY

    from evokd.chain.plan import load_plan, ordered, validate

    plan = load_plan(str(path))
    assert sorted(s.name for s in ordered(plan)) == sorted(plan.stage_names)
    for stage in plan.stages:
        assert stage.arch in ARCH_MODEL_REGISTRY, (stage.name, stage.arch)
        for key, ref in stage.references():  # a stage of the plan, or a run's checkpoint
            assert ref in plan.stage_names or ref.startswith("checkpoints/"), (stage.name, key)
    if path.parent.parent.name == "evokd":  # the presets refer only to their own stages
        validate(plan, data_required=False)


def test_dry_run_of_the_presets(tmp_path, monkeypatch):
    """The tiny plan's dry run lists its steps in the order they run; the paper plan's says
    that its data is missing and would be downloaded."""
    monkeypatch.setenv("EVOKD_CACHE", str(tmp_path / "no-cache"))
    _, out = chain(tmp_path, "tiny", "--dry-run")
    steps = [line for line in out.splitlines() if line.startswith("# ")]
    assert steps[0] == (
        "# data data-bin/multi30k.tiny.de-en: to prepare: multi30k, from the Multi30k shipped "
        "with evokd; no network"
    )
    from evokd.chain.plan import load_plan, ordered

    order = [s.name for s in ordered(load_plan("tiny"))]
    heads = [line.split(":")[0].split("] ")[1] for line in steps if line.startswith("# [")]
    assert (
        heads == order
        and steps[-2].startswith("# evaluation")
        and steps[-1].startswith("# report: results/tiny/results.md")
    )
    first = [i for i, line in enumerate(steps) if "teacher cache" in line][0]
    assert "junior_student" in steps[first + 1]  # its cache just before the stage that reads it
    assert len([line for line in out.splitlines() if "fairseq-train " in line]) == len(order)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    _, out = chain(tmp_path, "paper", "--dry-run")
    data_line = out.split("\n# [1/")[0].splitlines()[-1]
    assert data_line.startswith("# data data-bin/iwslt14.tokenized.de-en: to prepare: iwslt14")
    assert f"downloaded to {tmp_path / 'no-cache' / 'de-en.tgz'}: needs the network" in data_line


def test_stage_list_may_hold_its_own_prerequisites(tmp_path):
    """`--stage A --stage B` with B distilled from A: A trains first, so the dry run passes;
    B alone is refused with the command that trains A, the seed included with --seeds."""
    code, out = chain(tmp_path, "tiny", "--stage", "junior_teacher", "--stage", "junior_student",
                      "--dry-run")  # fmt: skip
    heads = [line for line in out.splitlines() if line.startswith("# [")]
    assert code == 0 and [h.split("] ")[1].split(":")[0] for h in heads] == [
        "junior_teacher", "junior_student"]  # fmt: skip
    code, out = chain(tmp_path, "tiny", "--seeds", "2", "--stage", "junior_student", "--dry-run",
                      check=False)  # fmt: skip
    assert code == 2 and "needs its teacher junior_teacher, which is not finished (never" in out
    assert "--seeds 2 --stage junior_teacher first" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stage_folder_held_by_another_process_waits_then_is_refused(tmp_path):
    """A stopped Slurm job's process may still hold the stage's lock as its rerun starts:
    the rerun waits for it to end, and refuses only after the wait, naming the folder."""
    import fcntl
    import threading

    from evokd.errors import EvokdError
    from evokd.processes import take_lock

    path = tmp_path / ".lock"
    held = open(path, "w")
    fcntl.flock(held, fcntl.LOCK_EX)
    with open(path, "w") as mine:
        start = time.monotonic()
        with pytest.raises(EvokdError, match=r"stage s: F is being trained by another process"):
            take_lock(mine, "stage s: F", wait=0.6)
        assert time.monotonic() - start >= 0.6
        threading.Timer(0.3, held.close).start()  # the other process ends
        take_lock(mine, "stage s: F", wait=10)
        assert time.monotonic() - start < 5
