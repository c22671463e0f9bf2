"""Nothing silently wrong, for the steps that translate: `distill-data`, the translation step
of `patch` and the relabelling of `mckd`. Each is killed (SIGKILL) at several points and
resumed, or built with 2 processes, and must equal the uninterrupted 1-process output
example by example and byte for byte; incomplete outputs are refused; a rerun on finished
output is done (exit 0) with the same settings and refused, naming them, with others."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evokd import cli
from evokd import files as steps
from evokd.core.devices import Devices
from evokd.distill import seqkd as dd
from evokd.errors import EvokdError
from evokd.methods.mckd import relabel as mckd
from evokd.methods.patch.workspace import read_jsonl
from tests import faults

DECODING = ["--beam", "2", "--max-len-a", "0", "--max-len-b", "6", "--max-tokens", "300"]
CHUNK = "40"  # 200 pairs in batches of ~20: 5 or 6 chunks


def main(argv):
    return cli.main([str(a) for a in argv])


def files(folder):
    """Every file under ``folder`` by relative path."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def strings(folder, lang="en", subset="train"):
    """A side of the subset as fairseq reads it, one string per example."""
    from fairseq.data import Dictionary, data_utils

    vocab = Dictionary.load(str(Path(folder) / f"dict.{lang}.txt"))
    items = data_utils.load_indexed_dataset(str(Path(folder) / f"{subset}.de-en.{lang}"), vocab)
    return [vocab.string(item) for item in items]


# --- distill-data ---------------------------------------------------------------------------


def dd_argv(data_bin, teacher, out, *extra):
    return ["distill-data", "--teacher", teacher, "--data", data_bin, "--out", out, "--cpu"] + [
        *DECODING, "--chunk-size", CHUNK, *extra
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference_distilled(data_bin, teacher_ckpt, tmp_path_factory):
    """Built once, uninterrupted, in one process."""
    out = tmp_path_factory.mktemp("ref") / "kd"
    assert main(dd_argv(data_bin, teacher_ckpt, out)) == 0
    return out


RUN_DEPENDENT = ("wall_seconds", "translate_seconds", "processes")  # in distill.json


def assert_same_distilled(a, b):
    """Byte for byte (distill.json but for its timings), example by example, and no build
    files left."""
    assert files(a) == files(b)
    for name in files(a):
        if name != dd.META:
            assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
    one, two = (
        {k: v for k, v in steps.read_json(Path(f) / dd.META).items() if k not in RUN_DEPENDENT}
        for f in (a, b)
    )
    for info in (one, two):  # the CTranslate2 model: converted by the first run, then reused
        info.get("ct2_model", {}).pop("convert_seconds", None)
    assert one == two
    assert strings(a) == strings(b) and strings(a, "de") == strings(b, "de")
    assert not steps.partial_path(b).exists()


def test_killed_distill_data_resumes_to_the_same_dataset(
    data_bin, teacher_ckpt, reference_distilled, tmp_path
):
    """Killed after its first chunk, resumed by two processes: the dataset of one
    uninterrupted process (every other kill point: tests/test_build.py)."""
    out = tmp_path / "kd"
    argv = dd_argv(data_bin, teacher_ckpt, out)
    faults.killed_run(argv, "evokd.core.build:save_chunk", 1)
    assert not out.exists() and (tmp_path / "kd.partial" / "chunks" / "chunk00000").is_dir()
    assert main(argv + ["--processes", "2"]) == 0
    assert_same_distilled(reference_distilled, out)


def test_the_plan_does_not_depend_on_the_global_rng(data_bin, teacher_ckpt):
    """fairseq's ordered_indices() shuffles ties with numpy's RNG: under the fixed seed the
    batches are the same whatever state the global RNG is in."""
    from evokd.core.inference import Translator

    translator = Translator(teacher_ckpt, data_bin, "train", {"beam": 2}, dd.choose_device(True))
    plans = []
    for seed in (0, 1):
        np.random.seed(seed)
        plans.append([b.tolist() for b in translator.plan_batches(300)])
    assert plans[0] == plans[1] and len(plans[0]) > 5
    assert sorted(i for b in plans[0] for i in b) == list(range(200))


def test_distill_rerun_on_finished_output(
    data_bin, teacher_ckpt, reference_distilled, tmp_path, capsys
):
    out = tmp_path / "kd"
    shutil.copytree(reference_distilled, out)
    capsys.readouterr()
    assert main(dd_argv(data_bin, teacher_ckpt, out)) == 0  # same settings: done
    assert "nothing to do" in capsys.readouterr().out
    assert main(dd_argv(data_bin, teacher_ckpt, out, "--chunk-size", "16")) == 0  # same output
    assert_same_distilled(reference_distilled, out)
    argv = dd_argv(data_bin, teacher_ckpt, out, "--beam", "3", "--keep-references")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: made with other settings" in err
    assert "beam: 2 there, 3 now" in err and "keep_references: False there, True now" in err
    assert_same_distilled(reference_distilled, out)  # nothing changed


def test_incomplete_distilled_dataset_is_refused(reference_distilled, tmp_path):
    out = tmp_path / "kd"
    shutil.copytree(reference_distilled, out)
    assert dd.open_distilled(out)["examples"] == 200
    info = steps.read_json(out / dd.META)
    steps.write_json(out / dd.META, dict(info, training_pairs=201))
    with pytest.raises(EvokdError, match=r"train.de-en.de: holds 200 sentences where 201"):
        dd.open_distilled(out)
    steps.write_json(out / dd.META, info)
    text = out / "text" / "train.distilled.en"
    text.write_text("".join(text.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(EvokdError, match=r"train.distilled.en: holds 199 lines where 200"):
        dd.open_distilled(out)


# --- patch translate ------------------------------------------------------------------------


def patch_argv(data_bin, teacher, out, *extra):
    # The teacher plays the student too: what is tested is the step, not the models.
    return ["patch", "translate", "--student", teacher, "--teacher", teacher, "--data", data_bin,
            "--out", out, "--cpu", *DECODING, "--chunk-size", CHUNK, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference_patch(data_bin, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "patch"
    assert main(patch_argv(data_bin, teacher_ckpt, out)) == 0
    return out


def assert_same_translations(a, b):
    name = "translations.jsonl"
    assert (a / name).read_bytes() == (b / name).read_bytes()  # byte for byte
    assert [r["id"] for r in read_jsonl(b / name)] == list(range(200))
    assert not steps.partial_path(b / name).exists()
    one, two = (steps.read_json(f / "steps" / "translate.json") for f in (a, b))
    assert one["finished"] and two["finished"] and one["key"] == two["key"]


def test_killed_patch_translate_resumes_to_the_same_rows(
    data_bin, teacher_ckpt, reference_patch, tmp_path
):
    """Killed after its first chunk: the same rows, byte for byte (every other kill point:
    tests/test_build.py)."""
    out = tmp_path / "patch"
    argv = patch_argv(data_bin, teacher_ckpt, out)
    faults.killed_run(argv, "evokd.core.build:save_chunk", 1)
    assert not (out / "translations.jsonl").exists()  # complete, or not there
    assert (out / "translations.jsonl.partial" / "chunks" / "chunk00000").is_dir()
    assert main(argv) == 0
    assert_same_translations(reference_patch, out)


def test_patch_translate_rerun_on_finished_output(
    data_bin, teacher_ckpt, reference_patch, tmp_path, capsys
):
    out = tmp_path / "patch"
    shutil.copytree(reference_patch, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(patch_argv(data_bin, teacher_ckpt, out)) == 0
    assert "step translate: finished earlier, skipped" in capsys.readouterr().err
    assert main(patch_argv(data_bin, teacher_ckpt, out, "--beam", "3", "--max-tokens", "200")) == 2
    err = capsys.readouterr().err
    assert "step translate was run with other settings or inputs" in err
    assert "beam: 2 there, 3 now" in err and "max_tokens: 300 there, 200 now" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- mckd relabelling -------------------------------------------------------------------------

MCKD_DECODING = {"beam": 1, "max_len_a": 0.5, "max_len_b": 5}
MICRO = {
    "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 2000,
    "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1, "num-workers": 0,
    "encoder-layers": 2, "decoder-layers": 2, "encoder-embed-dim": 32, "decoder-embed-dim": 32,
    "encoder-ffn-embed-dim": 64, "decoder-ffn-embed-dim": 64,
    "encoder-attention-heads": 2, "decoder-attention-heads": 2,
}  # fmt: skip


def mckd_argv(data_bin, teacher, out, plan, *extra):
    return ["mckd", "--teacher", teacher, "--data", data_bin, "--out", out, "--plan", plan,
            "--arch", "transformer_evokd_tiny_student", "--stages", "1", "--max-epoch", "1",
            "--seed", "3", "--gpus", "0", "--no-evaluate", "--beam", "1", "--max-len-a", "0.5",
            "--max-len-b", "5", *extra]  # fmt: skip


def test_killed_mckd_relabelling_resumes_to_the_same_labels(
    data_bin, teacher_ckpt, tmp_path, capsys
):
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"data": "unused", "train": MICRO, "evaluate": {},
                                "stages": [{"name": "s", "arch": "transformer_evokd_tiny_student",
                                            "max_epoch": 1}]}))  # fmt: skip
    out = tmp_path / "run"
    labels = out / "labels"
    argv = mckd_argv(data_bin, teacher_ckpt, out, plan)
    # The teacher's labels: killed after its chunk is written, then in the split (half A
    # written, not renamed; publish #1 is the teacher's dataset).
    faults.killed_run(argv, "evokd.core.build:save_chunk", 1)
    assert not (labels / "teacher").exists() and (labels / "teacher.partial").is_dir()
    faults.killed_run(argv, "evokd.files:publish", 2, "before")
    assert (labels / "teacher").is_dir() and (labels / "stage1" / "A.partial").is_dir()
    assert not (labels / "stage1" / "A").exists()
    # Both students trained, then killed while B_1 relabels half A (its chunk written).
    faults.killed_run(argv, "evokd.core.build:save_chunk", 1)
    assert (labels / "stage2" / "A.partial").is_dir()
    # Killed in the merge: half A's labels finished (#1), half B's chunk and dataset (#2, #3),
    # the merged folder written, not renamed (#4).
    faults.killed_run(argv, "evokd.files:publish", 4, "before")
    assert (labels / "final.partial").is_dir() and not (labels / "final").exists()
    assert main(argv) == 0
    assert not list(out.rglob("*.partial"))

    # Each relabelling equals an uninterrupted distill-data of the same model and data.
    reference = tmp_path / "reference"
    settings = dict(cpu=True, **MCKD_DECODING)
    dd.distill_data(teacher_ckpt, data_bin, reference / "teacher", **settings)
    best = out / "checkpoints" / "mckd" / "student_B1" / "checkpoint_best.pt"
    dd.distill_data(best, labels / "stage1" / "A", reference / "A2", **settings)
    target = ["train.de-en.en.bin", "train.de-en.en.idx", "text/train.distilled.en"]
    for ours, theirs in ((labels / "teacher", reference / "teacher"),
                         (labels / "stage2" / "A", reference / "A2")):  # fmt: skip
        for name in target:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), (ours, name)
    # The halves and the merged labels, example by example.
    split = steps.read_json(out / "split.json")
    teacher = strings(reference / "teacher")
    final = [None] * 200
    for half in mckd.HALVES:
        assert strings(labels / "stage1" / half) == [teacher[i] for i in split[half]]
        for i, label in zip(split[half], strings(labels / "stage2" / half)):
            final[i] = label
    assert strings(labels / "final") == final
    assert strings(labels / "final", "de") == strings(data_bin, "de")

    # A rerun: nothing to do, exit 0; other settings: refused, naming them, nothing changed.
    before = {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(argv) == 0
    assert "every step finished earlier with the same settings: nothing to do" in (
        capsys.readouterr().out
    )
    assert main(mckd_argv(data_bin, teacher_ckpt, out, plan, "--beam", "2")) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "beam: 1 there, 2 now" in err
    assert {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()} == before


def test_mckd_half_cut_short_is_refused(data_bin, teacher_ckpt, tmp_path):
    """A half folder whose pairs are not the ids split.json gives it is refused when read."""
    settings = {"teacher": str(teacher_ckpt), "data": str(data_bin)}
    settings.update(source_lang="de", target_lang="en", pair="de-en")
    run = mckd.Relabelling(tmp_path, settings, Devices(gpus=0))
    folder = tmp_path / "labels" / "stage1" / "A"
    shutil.copytree(data_bin, folder)
    (folder / mckd.IDS).write_text("".join(f"{i}\n" for i in range(200)))
    run.check_half(1, "A", list(range(200)))
    with pytest.raises(EvokdError, match=r"mckd_ids.txt: other ids than split.json gives half A"):
        run.check_half(1, "A", list(range(199)))
    (folder / mckd.IDS).write_text("".join(f"{i}\n" for i in range(201)))
    with pytest.raises(EvokdError, match=r"stage1/A: holds 200 entries where 201 are expected"):
        run.check_half(1, "A", list(range(201)))
