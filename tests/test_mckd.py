"""Collaborative multi-stage relabelling: the seeded split, the swap of the halves, the
merged data, the label scores, resuming, K = 1, and what is refused."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from evokd.chain.stage import StageTrainer
from evokd.core.devices import Devices
from evokd.distill import seqkd as dd
from evokd.errors import EvokdError
from evokd.methods.mckd import relabel as mckd
from tests import utils

ARCH = "transformer_evokd_tiny_student"
SEED = 3
MICRO = {
    "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 2000,
    "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1, "num-workers": 0,
    "log-format": "json", "log-interval": 10,
    "encoder-layers": 2, "decoder-layers": 2, "encoder-embed-dim": 32, "decoder-embed-dim": 32,
    "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64,
    "encoder-attention-heads": 2, "decoder-attention-heads": 2,
}  # fmt: skip
DECODING = {"beam": 1, "max_len_a": 0.5, "max_len_b": 5}
EVALUATE = {"beam": 1, "max_len_b": 20}
COPIED = ["dict.de.txt", "dict.en.txt"] + [
    f"{s}.de-en.{lang}.{ext}" for s in ("valid", "test") for lang in ("de", "en")
    for ext in ("bin", "idx")
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread(teacher_ckpt):
    """One intra-op thread here and in fairseq-train (the session teacher is trained first)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


def run(teacher, data, out, stages=2, **changes):
    args = dict(stages=stages, arch=ARCH, max_epoch=1, seed=SEED, train_flags=MICRO)
    args.update(devices=Devices(gpus=0), evaluate_args=EVALUATE, **DECODING)
    return mckd.run_mckd(teacher, data, out, **{**args, **changes})


def strings(folder, lang="en", bpe=None):
    """The training subset's side ``lang`` as text, in dataset order."""
    from fairseq.data import Dictionary, data_utils

    vocab = Dictionary.load(str(Path(folder) / f"dict.{lang}.txt"))
    items = data_utils.load_indexed_dataset(str(Path(folder) / f"train.de-en.{lang}"), vocab)
    return [vocab.string(item, bpe_symbol=bpe) for item in items]


def checkpoint(out, name):
    return out / "checkpoints" / "mckd" / name / "checkpoint_best.pt"


def ids_file(folder):
    return [int(line) for line in (folder / mckd.IDS).read_text().split()]


@pytest.fixture(scope="module")
def finished(data_bin, teacher_ckpt, tmp_path_factory):
    """K = 2, killed while B_2 relabels half A (the 4th translation), then rerun."""
    out = tmp_path_factory.mktemp("mckd") / "run"
    with pytest.MonkeyPatch.context() as patch:
        utils.interrupt_on_call(patch, mckd, "distill_data", 4)
        with pytest.raises(KeyboardInterrupt):
            run(teacher_ckpt, data_bin, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*.pt")}
    calls = SimpleNamespace(distill=[], train=[])
    real_distill, real_train = mckd.distill_data, StageTrainer.train

    def distill(*args, **kwargs):
        calls.distill.append(Path(args[2]))
        return real_distill(*args, **kwargs)

    def train(trainer, stage):
        calls.train.append(stage.name)
        return real_train(trainer, stage)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mckd, "distill_data", distill)
        patch.setattr(StageTrainer, "train", train)
        report = run(teacher_ckpt, data_bin, out)
    return SimpleNamespace(out=out, report=report, calls=calls, stamps=stamps)


def test_halves_are_the_seeded_split(finished, data_bin):
    out = finished.out
    split = json.loads((out / "split.json").read_text())
    # numpy's default_rng(3).permutation(200), written down once
    assert split["A"][:12] == [142, 117, 119, 99, 128, 6, 84, 135, 190, 81, 131, 186]
    assert split["B"][:12] == [2, 75, 138, 15, 72, 12, 31, 121, 113, 164, 67, 68]
    assert len(split["A"]) == len(split["B"]) == 100 and sum(split["A"]) == 10578
    assert not set(split["A"]) & set(split["B"])
    assert sorted(split["A"] + split["B"]) == list(range(200))
    assert [len(h) for h in mckd.split_ids(7, SEED)] == [4, 3]  # A gets ceil(n / 2)
    sources, teacher = strings(data_bin, "de"), strings(out / "labels" / "teacher")
    assert teacher != strings(data_bin)  # the teacher's labels, not the references
    for half in ("A", "B"):
        ids = split[half]
        for k in (1, 2, 3):
            folder = out / "labels" / f"stage{k}" / half
            assert ids_file(folder) == ids
            for name in COPIED:  # validation (which picks checkpoint_best.pt) and test: real
                assert (folder / name).read_bytes() == (data_bin / name).read_bytes()
        folder = out / "labels" / "stage1" / half
        assert strings(folder, "de") == [sources[i] for i in ids]
        assert strings(folder) == [teacher[i] for i in ids]


def test_each_half_is_relabelled_by_the_other_halfs_student(finished, tmp_path):
    out, labels = finished.out, finished.out / "labels"
    for k in (1, 2):
        for half, other in (("A", "B"), ("B", "A")):
            info = json.loads((labels / f"stage{k + 1}" / half / "distill.json").read_text())
            assert info["teacher"] == str(checkpoint(out, f"student_{other}{k}"))
            assert info["data"] == str(labels / f"stage{k}" / half)
            assert info["decoding"]["beam"] == 1 and info["examples"] == 100
            sources = strings(labels / f"stage{k + 1}" / half, "de")
            assert sources == strings(labels / f"stage{k}" / half, "de")
    # By hand: B_1 translating half A's sources gives half A's labels of stage 2; A_1 does not.
    by_b1, by_a1 = tmp_path / "b1", tmp_path / "a1"
    dd.distill_data(checkpoint(out, "student_B1"), labels / "stage1" / "A", by_b1, **DECODING)
    dd.distill_data(checkpoint(out, "student_A1"), labels / "stage1" / "A", by_a1, **DECODING)
    assert strings(by_b1) == strings(labels / "stage2" / "A")
    assert strings(by_a1) != strings(labels / "stage2" / "A")
    # each student trained on its own half, chosen on the real validation set
    for name, half in (("student_A1", "A"), ("student_B2", "B")):
        record = json.loads((checkpoint(out, name).parent / "evokd_stage.json").read_text())
        stage = 1 if name.endswith("1") else 2
        assert record["data"] == str(labels / f"stage{stage}" / half) and record["finished"]


def test_final_data_holds_every_source_once_with_its_last_labels(finished, data_bin):
    out, labels = finished.out, finished.out / "labels"
    final = labels / "final"
    assert strings(final, "de") == strings(data_bin, "de")  # by id: DATA's order
    split = json.loads((out / "split.json").read_text())
    expected = [None] * 200
    for half in ("A", "B"):
        for i, label in zip(split[half], strings(labels / "stage3" / half)):
            expected[i] = label
    assert strings(final) == expected
    for name in COPIED:
        assert (final / name).read_bytes() == (data_bin / name).read_bytes()
    record = json.loads((checkpoint(out, "final_student").parent / "evokd_stage.json").read_text())
    assert record["data"] == str(final) and record["finished"]
    log = (checkpoint(out, "final_student").parent / "train.log").read_text()
    assert "train de-en 200 examples" in log


def test_report_scores_match_a_recomputation(finished, data_bin):
    from sacrebleu.metrics import BLEU, CHRF

    out, report = finished.out, finished.report
    assert json.loads((out / "mckd.json").read_text()) == report
    references = strings(data_bin, bpe="@@ ")
    split = json.loads((out / "split.json").read_text())
    assert [row["stage"] for row in report["labels"]] == [1, 2, 3]
    assert report["labels"][0]["made_by"] == "teacher"
    assert "student_B2 (half A)" in report["labels"][2]["made_by"]
    table = (out / "mckd.md").read_text()
    for row in report["labels"]:
        hyps = [None] * 200
        halves = {}
        for half in ("A", "B"):
            halves[half] = strings(out / "labels" / f"stage{row['stage']}" / half, bpe="@@ ")
            for i, label in zip(split[half], halves[half]):
                hyps[i] = label
        assert row["pairs"] == 200 and row["seconds"] > 0
        assert row["chrf"] == pytest.approx(CHRF().corpus_score(hyps, [references]).score)
        bleu = BLEU(tokenize="none").corpus_score(hyps, [references]).score
        assert row["bleu"] == pytest.approx(bleu)
        refs_a = [references[i] for i in split["A"]]
        assert row["chrf_A"] == pytest.approx(CHRF().corpus_score(halves["A"], [refs_a]).score)
        assert f"| stage {row['stage']} | {row['made_by']} | 200 | {row['chrf']:.2f} |" in table
    assert [s["student"] for s in report["students"]] == [
        "student_A1", "student_B1", "student_A2", "student_B2",
    ]  # fmt: skip
    assert all(s["pairs"] == 100 and s["updates"] > 0 for s in report["students"])
    final = report["final"]
    assert final["pairs"] == 200 and final["test"]["n_sentences"] == 40
    assert final["test"]["bleu"] is not None and final["test"]["beam"] == 1
    assert all(isinstance(step["seconds"], float) for step in report["steps"])


def test_killed_run_resumes_without_redoing_finished_steps(finished):
    out, labels = finished.out, finished.out / "labels"
    assert finished.calls.distill == [labels / "stage3" / "A", labels / "stage3" / "B"]
    assert finished.calls.train == ["final_student"]
    for path, stamp in finished.stamps.items():  # the four students were not touched
        assert path.stat().st_mtime_ns == stamp
    ran = [step["step"] for step in finished.report["steps"] if step["ran_now"]]
    assert ran == [
        "relabel half A with student_B2", "relabel half B with student_A2",
        "merge the halves", "train final_student",
    ]  # fmt: skip
    assert not list(out.rglob("*.partial"))


def _cli_args(finished, data_bin, teacher_ckpt, plan, *changes):
    return [
        "mckd", "--teacher", teacher_ckpt, "--data", data_bin, "--out", finished.out,
        "--arch", ARCH, "--stages", "2", "--max-epoch", "1", "--seed", str(SEED),
        "--plan", plan, "--gpus", "0", "--beam", "1", "--max-len-a", "0.5", "--max-len-b", "5",
        *changes,
    ]  # fmt: skip


@pytest.fixture
def cli_plan(tmp_path):
    """A plan file whose train: and evaluate: sections are the settings of ``run``."""
    plan = {"data": "unused", "train": MICRO, "evaluate": {"max_len_b": 20}}
    plan["stages"] = [{"name": "s", "arch": ARCH, "max_epoch": 1}]
    path = tmp_path / "plan.yaml"
    path.write_text(json.dumps(plan))
    return path


def test_cli_rerun_skips_every_step(finished, data_bin, teacher_ckpt, cli_plan, evokd_main):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished step was run again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mckd, "distill_data", refuse)
        patch.setattr(StageTrainer, "train", refuse)
        code, out, err = evokd_main(*_cli_args(finished, data_bin, teacher_ckpt, cli_plan))
    assert code == 0, err
    assert "| stage 1 | teacher | 200 |" in out and "final_student" in out
    report = json.loads((finished.out / "mckd.json").read_text())
    assert not any(step["ran_now"] for step in report["steps"])


def test_other_settings_are_refused(finished, data_bin, teacher_ckpt, cli_plan, evokd_main):
    before = sorted(finished.out.rglob("*"))
    args = _cli_args(finished, data_bin, teacher_ckpt, cli_plan, "--stages", "3", "--seed", "4")
    code, _, err = evokd_main(*args)
    assert code == 2
    assert "made with other settings" in err
    assert "seed: 3 there, 4 now" in err and "stages: 2 there, 3 now" in err
    assert sorted(finished.out.rglob("*")) == before


def test_one_stage(data_bin, teacher_ckpt, tmp_path):
    out = tmp_path / "k1"
    report = run(teacher_ckpt, data_bin, out, stages=1, evaluate=False)
    assert [row["stage"] for row in report["labels"]] == [1, 2]
    assert [s["student"] for s in report["students"]] == ["student_A1", "student_B1"]
    assert report["final"]["test"] is None and checkpoint(out, "final_student").is_file()
    split = json.loads((out / "split.json").read_text())
    expected = [None] * 200
    for half in ("A", "B"):
        for i, label in zip(split[half], strings(out / "labels" / "stage2" / half)):
            expected[i] = label
    assert strings(out / "labels" / "final") == expected
    assert not (out / "labels" / "stage3").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher": "none.pt"}, "--teacher none.pt: no such file"),
        ({"data": "absent"}, "--data absent: no such folder"),
        ({"stages": 0}, "--stages 0: expected a whole number >= 1"),
        ({"max_epoch": None}, "--max-epoch: give the epochs"),
        ({"arch": "transformer_nonexistent"}, "--arch transformer_nonexistent: not an arch"),
        ({"max_len_b": 0}, "--max-len-b 0"),
        ({"beam": 0}, "--beam 0"),
    ],
)
def test_bad_inputs_are_refused_before_any_work(data_bin, teacher_ckpt, tmp_path, change, message):
    args = {"teacher": teacher_ckpt, "data": data_bin, "out": tmp_path / "out", **change}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths name missing files
    try:
        with pytest.raises(EvokdError, match=message):
            run(args.pop("teacher"), args.pop("data"), args.pop("out"), **args)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "out").exists()


def test_a_folder_not_made_by_mckd_is_refused(data_bin, teacher_ckpt, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(EvokdError, match="not an evokd mckd folder"):
        run(teacher_ckpt, data_bin, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
