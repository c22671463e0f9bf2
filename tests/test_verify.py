"""Nothing trusted that was not verified: a damaged teacher cache or distilled dataset is
refused by what reads it (training, the builder's rerun, ``evokd verify``), naming the file;
``distill-data`` refuses to overwrite validation references or its own input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evokd.distill import cache as tc
from evokd.distill import seqkd as dd
from evokd.errors import EvokdError
from evokd.files import PAYLOAD
from evokd.teachers.cache import PARTS
from tests import utils

STUDENT = ["--arch", "transformer_evokd_tiny_student", "--task", "evokd_translation"]
STUDENT += ["--criterion", "word_kd", "--kd-alpha", "0.5", "--kd-topk", "4"]
GREEDY = {"beam": 1, "max_len_a": 0.0, "max_len_b": 12, "cpu": True}
GREEDY_FLAGS = ["--beam", "1", "--max-len-a", "0", "--max-len-b", "12", "--cpu"]


def cache_argv(data_bin, teacher, out):
    return ["cache-teacher", "--teacher", teacher, "--data", data_bin, "--topk", "4", "--out", out,
            "--cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def cache(data_bin, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "cache"
    tc.build_cache(str(teacher_ckpt), str(data_bin), out, k=4, cpu=True)
    return out


@pytest.fixture(scope="module")
def distilled(data_bin, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "kd"
    dd.distill_data(str(teacher_ckpt), str(data_bin), out, **GREEDY)
    return out


def damage(path):
    """Change 8 bytes in the middle of ``path`` in place: the same size, other content."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    size = path.stat().st_size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def train_setup(data_bin, cache):
    return utils.build_task_model_criterion(data_bin, STUDENT + ["--teacher-cache", str(cache)])


def test_a_good_cache_and_dataset_verify(cache, distilled, evokd_main):
    meta = json.loads((cache / "cache.json").read_text())
    assert sorted(meta[PAYLOAD]) == sorted(
        [f"{p}.{e}" for p in PARTS for e in ("bin", "idx")] + ["order.npy"]
    )
    code, out, _ = evokd_main("verify", cache)
    assert code == 0 and "teacher cache intact: 7 files" in out
    n_files = sum(1 for p in distilled.rglob("*") if p.is_file()) - 1  # all but distill.json
    code, out, _ = evokd_main("verify", distilled)
    assert code == 0 and f"distilled dataset intact: {n_files} files" in out
    code, _, err = evokd_main("verify", cache.parent)
    assert code == 2 and "not a teacher cache or a distilled dataset" in err


def test_cache_with_bytes_changed_in_place_is_refused(
    cache, data_bin, teacher_ckpt, tmp_path, evokd_main
):
    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    damage(out / "topk_lprobs.bin")  # log-probabilities: no other check could see it
    named = rf"{out}/topk_lprobs.bin is damaged .*remove it and rebuild it with evokd cache-teacher"
    with pytest.raises(EvokdError, match=named):
        train_setup(data_bin, out)
    code, stdout, err = evokd_main(*cache_argv(data_bin, teacher_ckpt, out))
    assert code == 2 and "nothing to do" not in stdout
    assert f"--out {out}: {out}/topk_lprobs.bin is damaged" in err
    code, _, err = evokd_main("verify", out)
    assert code == 2 and f"{out}/topk_lprobs.bin is damaged" in err


def test_cache_with_ids_outside_the_vocabulary_is_refused(cache, data_bin, teacher_ckpt, tmp_path):
    """Even in a cache recorded without checksums (as built before them)."""
    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    meta = json.loads((out / "cache.json").read_text())
    vocab = meta["vocab_size"]
    ids = np.memmap(out / "topk_index.bin", dtype=np.uint16, mode="r+")
    ids[len(ids) // 2] = vocab  # the first id outside 0..vocab-1
    ids.flush()
    del ids
    with pytest.raises(EvokdError, match=r"topk_index.bin is damaged"):  # with its checksum
        train_setup(data_bin, out)
    del meta[PAYLOAD]
    (out / "cache.json").write_text(json.dumps(meta))
    outside = rf"{out}/topk_index.bin holds token ids from \d+ to {vocab}, outside the target "
    with pytest.raises(EvokdError, match=rf"--teacher-cache {out}: {outside}"):
        train_setup(data_bin, out)
    with pytest.raises(EvokdError, match=rf"--out {out}: {outside}"):
        tc.build_cache(str(teacher_ckpt), str(data_bin), out, k=4, cpu=True)


def test_damaged_distilled_data_is_refused(distilled, data_bin, teacher_ckpt, tmp_path, evokd_main):
    out = tmp_path / "kd"
    shutil.copytree(distilled, out)
    target = out / "train.de-en.en.bin"
    damage(target)
    named = rf"{target} is damaged .*remove it and rebuild it with evokd distill-data"
    with pytest.raises(EvokdError, match=named):  # the rerun, as the chain and mckd run it
        dd.distill_data(str(teacher_ckpt), str(data_bin), out, **GREEDY)
    argv = ["distill-data", "--teacher", teacher_ckpt, "--data", data_bin, "--out", out]
    code, stdout, err = evokd_main(*argv, *GREEDY_FLAGS, "--engine", "fairseq")  # as built
    assert code == 2 and "nothing to do" not in stdout and f"{target} is damaged" in err
    code, _, err = evokd_main("verify", out)
    assert code == 2 and f"{target} is damaged" in err


def _targets(folder, subset):
    from fairseq.data import data_utils

    items = data_utils.load_indexed_dataset(str(folder / f"{subset}.de-en.en"), None)
    return [items[i].tolist() for i in range(len(items))]


def test_distilling_the_validation_subset_needs_force(data_bin, teacher_ckpt, tmp_path, evokd_main):
    out = tmp_path / "kd"
    argv = ["distill-data", "--teacher", teacher_ckpt, "--data", data_bin, "--out", out]
    argv += ["--subset", "valid", *GREEDY_FLAGS]
    code, _, err = evokd_main(*argv)
    assert code == 2 and not out.exists()
    assert "--subset valid: the references of 'valid'" in err and "give --force" in err
    code, _, err = evokd_main(*argv, "--force")
    assert code == 0 and "--subset valid --force: the references of 'valid'" in err
    assert _targets(out, "train") == _targets(data_bin, "train")  # copied unchanged
    real, replaced = _targets(data_bin, "valid"), _targets(out, "valid")
    assert len(replaced) == len(real) == 40 and replaced != real


def test_out_equal_to_or_inside_data_is_refused(distilled, teacher_ckpt, evokd_main):
    before = sorted(p.relative_to(distilled) for p in distilled.rglob("*"))
    for out, how in ((distilled, "is"), (distilled / "again", "is inside")):
        argv = ["distill-data", "--teacher", teacher_ckpt, "--data", distilled, "--out", out]
        code, _, err = evokd_main(*argv, *GREEDY_FLAGS)
        assert code == 2 and f"--out {out}: {how} the input --data {distilled}" in err
        assert "give another --out" in err and "remove it to rebuild" not in err
    assert sorted(p.relative_to(distilled) for p in distilled.rglob("*")) == before


def test_damaged_mckd_halves_and_merge_are_refused(data_bin, tmp_path):
    """The halves of MCKD's first stage carry their digests in split.json, the merged labels
    theirs in merge.json; a rerun verifies them before a student trains on them. The other
    label folders are distill-data's."""
    from evokd.methods.mckd.relabel import Relabelling

    out = tmp_path / "mckd"
    shutil.copytree(data_bin, out / "labels" / "teacher")  # as if the teacher relabelled
    settings = {"teacher": "unused.pt", "data": str(data_bin), "source_lang": "de",
                "target_lang": "en", "pair": "de-en", "seed": 1}  # fmt: skip
    ids = Relabelling(out, settings, devices=None).split(200)
    assert Relabelling(out, settings, devices=None).split(200) == ids  # intact: verified
    target = out / "labels" / "stage1" / "A" / "train.de-en.en.bin"
    damage(target)
    named = rf"mckd: {out}/labels/stage1/A: {target} is damaged .*rerun to split again"
    with pytest.raises(EvokdError, match=named):
        Relabelling(out, settings, devices=None).split(200)
    shutil.rmtree(target.parent)  # split again: then merge the halves into labels/final
    (out / "split.json").unlink()
    run = Relabelling(out, settings, devices=None)
    run.merge(1, run.split(200))
    run.merge(1, ids)  # intact: verified
    merged = out / "labels" / "final" / "train.de-en.de.bin"
    damage(merged)
    with pytest.raises(
        EvokdError, match=rf"mckd: {merged.parent}: {merged} is damaged .*merge again"
    ):
        run.merge(1, ids)


def test_a_chain_refuses_its_damaged_distilled_data(distilled, tmp_path):
    """A sequence-level KD stage whose distilled folder exists is checked before it trains."""
    from evokd.chain.plan import load_plan
    from evokd.chain.runner import Chain
    from evokd.core.devices import Devices

    data = tmp_path / "data"
    shutil.copytree(distilled, data)  # any binarized folder serves as the plan's data
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        f"name: v\ndata: {data}\nstages:\n"
        "  - {name: teacher, arch: transformer_evokd_tiny_senior, max_epoch: 1}\n"
        "  - {name: student, arch: transformer_evokd_tiny_student, max_epoch: 1,\n"
        "     seqkd: {teacher: teacher}}\n",
        encoding="utf-8",
    )
    plan = load_plan(str(plan_file))
    chain = Chain(plan, checkpoints=tmp_path / "ck", results=tmp_path / "res",
                  devices=Devices(gpus=0), progress=lambda line: None)  # fmt: skip
    stage = plan.stage("student")
    out = Path(chain.layout.stage_data(stage))
    shutil.copytree(distilled, out)
    chain.distill(stage)  # intact: accepted without rebuilding
    target = out / "train.de-en.en.bin"
    damage(target)
    with pytest.raises(EvokdError, match=rf"stage student: .*{target} is damaged"):
        chain.distill(stage)
