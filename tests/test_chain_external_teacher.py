"""A chain stage whose sequence-level KD teacher has its own vocabulary: a CTranslate2 model
folder (built as tests/test_teachers.py builds it: a random 1+1-layer Marian model with its
sentencepiece tokenizer, converted with CTranslate2's own converter). Its data is built by
the chain through the path `evokd distill-data` takes for it, the dry run prints that
command, and a word-level stage with such a teacher, or a seqkd: key that its kind does not
take, is refused before any training."""

import json
import shlex
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from evokd.chain.layout import Layout  # noqa: E402
from evokd.chain.plan import load_plan  # noqa: E402
from evokd.data.folder import load_side  # noqa: E402
from evokd.data.prepare import prepare  # noqa: E402
from evokd.errors import EvokdError  # noqa: E402
from tests import utils  # noqa: E402
from tests.test_chain_teaching import TEACHER, write_plan  # noqa: E402
from tests.test_teachers import convert, marian  # noqa: E402

N_TRAIN = 48
SEQKD = {"beam": 2, "max-len-a": 0.5, "max-len-b": 4, "batch_size": 4, "on-bad-output": "reference"}
STUDENT = {"name": "student", "arch": "transformer_evokd_tiny_student", "max_epoch": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder made by `evokd prepare` (48 training pairs) and a CTranslate2 teacher that
    stops early (``ct2``)."""
    root = tmp_path_factory.mktemp("external")
    data = root / "data" / "tiny.de-en"
    prepare("multi30k", data, train_size=N_TRAIN, eval_size=8, vocab_size=300)
    return {"root": root, "data": data, "ct2": convert(marian(root / "stops", 2.0), root / "ct2")}


def column(folder, lang):
    return [side.tolist() for side in load_side(folder, "train", "de-en", lang)]


def test_a_seqkd_stage_trains_on_a_ctranslate2_teachers_translations(world, tmp_path):
    ct2, data = str(world["ct2"]), world["data"]
    student = {**STUDENT, "seqkd": {"teacher": ct2, **SEQKD}}
    plan = write_plan(tmp_path, data, [student], name="ext")
    # The dry run names the teacher and prints the distill-data command of the step.
    _, out = utils.evokd_in_process(["chain", "--plan", plan, "--dry-run"], cwd=tmp_path)
    lines = out.splitlines()
    (command,) = [shlex.split(line) for line in lines if line.startswith("evokd distill-data")]
    distilled = Path(command[command.index("--out") + 1])
    assert distilled.parent == data.parent
    assert distilled.name.startswith("tiny.de-en.seqkd-ext-ct2-")  # the folder, then a digest
    step = lines[lines.index(shlex.join(command)) - 1]
    assert step == (
        f"#   sequence-level KD data {distilled} (to build): the ctranslate2 teacher {ct2} "
        f"translates the raw training source of {data}"
    )
    assert command[command.index("--teacher") + 1] == ct2
    for flag in ("--beam 2", "--max-len-a 0.5", "--max-len-b 4", "--batch-size 4"):
        assert f" {flag} " in f" {shlex.join(command)} ", flag
    assert "--on-bad-output reference" in shlex.join(command) and command[-1] == "--cpu"
    assert not distilled.exists()

    _, out = utils.evokd_in_process(["chain", "--plan", plan, "--no-evaluate"], cwd=tmp_path)
    assert f"the ctranslate2 teacher {ct2} translates the training set" in out

    # The chain's data is what the printed command builds into another folder.
    by_hand = tmp_path / "by-hand"
    command[command.index("--out") + 1] = str(by_hand)
    utils.evokd_in_process(command[1:], cwd=tmp_path)
    for name in ("train.de-en.en.bin", "train.de-en.en.idx", "text/train.distilled.en"):
        assert (distilled / name).read_bytes() == (by_hand / name).read_bytes(), name
    info = json.loads((distilled / "distill.json").read_text(encoding="utf-8"))
    assert info["teacher"] == ct2 and info["fingerprint"]["teacher"]["kind"] == "ctranslate2"
    assert info["fingerprint"]["teacher"]["beam"] == 2 and info["on_bad_output"] == "reference"
    # every pair kept (bad outputs keep their reference), most of them the teacher's
    assert info["examples"] == N_TRAIN and column(distilled, "de") == column(data, "de")
    references, targets = column(data, "en"), column(distilled, "en")
    changed = sum(t != r for t, r in zip(targets, references))
    assert changed == N_TRAIN - info["counts"]["references_kept"] > N_TRAIN // 2
    raw = (distilled / "text" / "train.teacher.en").read_text(encoding="utf-8").splitlines()
    bpe = (distilled / "text" / "train.distilled.en").read_text(encoding="utf-8").splitlines()
    for i, (line, target) in enumerate(zip(bpe, targets)):
        if target != references[i]:  # the teacher's output, lowercased and tokenized
            assert line.replace("@@ ", "") == " ".join(raw[i].lower().split()), i

    # The student trained on that folder; the step's record names the teacher.
    run = tmp_path / "checkpoints" / "ext"
    record = json.loads((run / "student" / "evokd_stage.json").read_text())
    assert record["finished"] and record["updates"] >= 1
    assert record["data"] == str(distilled.resolve()) and str(distilled) in record["command"]
    step = json.loads((run / "steps" / f"distill-{distilled.name}.json").read_text())
    assert (step["teacher"], step["kind"]) == (ct2, "ctranslate2")


def test_a_word_level_stage_with_a_ctranslate2_teacher_is_refused(world, tmp_path):
    ct2 = str(world["ct2"])
    plan = write_plan(tmp_path, world["data"], [TEACHER, {**STUDENT, "teacher": ct2}])
    for dry in (["--dry-run"], []):
        code, out = utils.evokd_in_process(
            ["chain", "--plan", plan, *dry], cwd=tmp_path, check=False
        )
        assert code == 2, out
        assert f"stage student: teacher {ct2}: a ctranslate2 teacher has its own vocabulary" in out
        assert f"{world['data']}/dict.de.txt" in out and "word-level KD needs a fairseq" in out
        assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_seqkd_keys_are_those_of_the_teachers_kind(world, tmp_path):
    ct2 = str(world["ct2"])
    for teacher, key, kind in [(ct2, "lenpen", "ctranslate2"), ("teacher", "prompt", "fairseq")]:
        student = {**STUDENT, "seqkd": {"teacher": teacher, "beam": 2, key: 1}}
        plan = write_plan(tmp_path, world["data"], [TEACHER, student])
        with pytest.raises(EvokdError) as exc:
            load_plan(str(plan))
        message = str(exc.value)
        assert f"stage student: seqkd: unknown keys ['{key}'] (allowed for a {kind} teacher:" in (
            message
        )
        assert "teacher, beam, max-len-a" in message
    # the external path's options, written either way, are those of a model folder
    student = {**STUDENT, "seqkd": {"teacher": ct2, "teacher_tokenizer": "x", "on-bad-output": 1}}
    plan = load_plan(str(write_plan(tmp_path, world["data"], [student])))
    assert set(plan.stages[0].seqkd) == {"teacher", "teacher-tokenizer", "on-bad-output"}


def test_distilled_folders_differ_per_external_teacher(world, tmp_path):
    """Two model folders of the same name, and one server with two models: four folders."""
    names = []
    for folder in (tmp_path / "a" / "ct2", tmp_path / "b" / "ct2"):
        folder.mkdir(parents=True)
        (folder / "model.bin").touch()
        names.append({"teacher": str(folder)})
    url = "http://127.0.0.1:8000/v1"
    names += [{"teacher": url, "teacher-model": m} for m in ("Qwen/Qwen2.5-7B", "llama 3")]
    stages = [{**STUDENT, "name": f"s{i}", "seqkd": spec} for i, spec in enumerate(names)]
    plan = load_plan(str(write_plan(tmp_path, world["data"], stages)))
    layout = Layout(plan)
    folders = [Path(layout.stage_data(stage)).name for stage in plan.stages]
    assert len(set(folders)) == 4
    assert folders[0].startswith("tiny.de-en.seqkd-teach-ct2-")
    assert folders[2].startswith("tiny.de-en.seqkd-teach-127.0.0.1-8000-Qwen-Qwen2.5-7B-")
    assert folders[3].startswith("tiny.de-en.seqkd-teach-127.0.0.1-8000-llama-3-")
    from evokd.files import check_name

    for name in folders:
        check_name("folder", name)


def test_checkpoint_of_a_stage_still_training_is_refused(
    data_bin, teacher_ckpt, evokd_main, tmp_path
):
    """A teacher given by path whose folder is a stage that has not finished (its record
    says so) is refused by the dry run and the real run; once finished it is read."""
    folder = tmp_path / "other" / "senior_teacher"
    folder.mkdir(parents=True)
    shutil.copy(teacher_ckpt, folder / "checkpoint_best.pt")
    (folder / "evokd_stage.json").write_text(json.dumps({"stage": "senior_teacher"}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"name: p\ndata: {data_bin}\nstages:\n"
        "  - name: student\n    arch: transformer_evokd_tiny_student\n"
        f"    teacher: {folder / 'checkpoint_best.pt'}\n    max_epoch: 1\n"
    )
    where = ["--checkpoints", tmp_path / "ck", "--results", tmp_path / "res"]
    for extra in (["--dry-run"], ["--no-evaluate"]):
        code, _, err = evokd_main("chain", "--plan", plan, *where, *extra)
        assert code == 2 and "stage student: teacher" in err
        assert "its stage has not finished training" in err and "evokd_stage.json" in err
    assert not (tmp_path / "ck").exists()
    (folder / "evokd_stage.json").write_text(json.dumps({"finished": True}))
    code, out, _ = evokd_main("chain", "--plan", plan, *where, "--dry-run")
    assert code == 0 and "fairseq-train" in out
