"""Nothing silently wrong: resumed and multi-process builds equal an uninterrupted one,
incomplete outputs are refused, and bad flags fail before any work."""

import filecmp
import json
import shutil

import numpy as np
import pytest

from evokd import cli
from evokd.distill import cache as tc
from evokd.errors import EvokdError
from evokd.files import PAYLOAD
from evokd.teachers.cache import PARTS, TeacherCache
from tests import faults

CHUNK = "32"  # 200 pairs: 7 chunks


def cache_argv(data_bin, teacher, out, *extra):
    return ["cache-teacher", "--teacher", teacher, "--data", data_bin, "--topk", "4"] + [
        "--out", out, "--cpu", "--chunk-size", CHUNK, "--max-tokens", "400", *extra
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference_cache(data_bin, teacher_ckpt, tmp_path_factory):
    """Built once, uninterrupted, in one process."""
    out = tmp_path_factory.mktemp("ref") / "cache"
    assert cli.main([str(a) for a in cache_argv(data_bin, teacher_ckpt, out)]) == 0
    return out


def assert_same_cache(a, b):
    """Bit for bit: every data file, the order and the metadata; no build files left."""
    names = [f"{p}.{e}" for p in PARTS for e in ("bin", "idx")] + ["order.npy", "cache.json"]
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert sorted(p.name for p in b.iterdir()) == sorted(names)
    one, two = TeacherCache(a), TeacherCache(b)
    for example in range(len(one.order)):  # and example by example, through the reader
        for part in PARTS:
            x = one.parts[part][int(one.order[example])]
            y = two.parts[part][int(two.order[example])]
            assert np.array_equal(x.numpy(), y.numpy()), (example, part)


def test_killed_cache_build_resumes_to_the_same_cache(
    data_bin, teacher_ckpt, reference_cache, tmp_path
):
    """Killed after its first chunk, resumed by two processes: the cache of one
    uninterrupted process (every other kill point: tests/test_build.py)."""
    out = tmp_path / "cache"
    argv = cache_argv(data_bin, teacher_ckpt, out)
    faults.killed_run(argv, "evokd.core.build:save_chunk", 1)
    assert not out.exists() and (tmp_path / "cache.partial" / "chunks" / "chunk00000").is_dir()
    assert cli.main([str(a) for a in argv + ["--processes", "2"]]) == 0
    assert not (tmp_path / "cache.partial").exists()
    assert_same_cache(reference_cache, out)


def test_rerun_on_a_finished_cache(data_bin, teacher_ckpt, reference_cache, tmp_path, capsys):
    out = tmp_path / "cache"
    shutil.copytree(reference_cache, out)
    argv = [str(a) for a in cache_argv(data_bin, teacher_ckpt, out)]
    capsys.readouterr()
    assert cli.main(argv) == 0  # same settings: done, exit 0
    assert "nothing to do" in capsys.readouterr().out
    assert_same_cache(reference_cache, out)
    with pytest.raises(EvokdError, match=r"--out .*cache: made with other settings \(topk: 4 "):
        tc.build_cache(str(teacher_ckpt), str(data_bin), out, k=3, chunk_size=32, cpu=True)
    assert_same_cache(reference_cache, out)  # nothing changed


def test_incomplete_cache_index_is_refused(reference_cache, tmp_path):
    """Also in a cache recorded without checksums (with them, the digest of order.npy
    refuses it first: tests/test_verify.py)."""
    out = tmp_path / "cache"
    shutil.copytree(reference_cache, out)
    meta = json.loads((out / "cache.json").read_text())
    del meta[PAYLOAD]
    (out / "cache.json").write_text(json.dumps(meta))
    order = np.load(out / "order.npy")
    order[17] = -1
    np.save(out / "order.npy", order)
    with pytest.raises(EvokdError, match=r"incomplete index \(1 examples missing"):
        TeacherCache(out)
    order[17] = order[18]
    np.save(out / "order.npy", order)
    with pytest.raises(EvokdError, match="more than once"):
        TeacherCache(out)
    meta = json.loads((out / "cache.json").read_text())
    (out / "cache.json").write_text(json.dumps(dict(meta, examples=201)))
    with pytest.raises(EvokdError, match="incomplete index"):
        TeacherCache(out)


def test_kd_topk_above_the_vocabulary_fails_before_training(data_bin, teacher_ckpt):
    from tests import utils

    flags = ["--arch", "transformer_evokd_tiny_student", "--task", "evokd_translation"]
    flags += ["--criterion", "word_kd", "--teacher-path", str(teacher_ckpt)]
    with pytest.raises(EvokdError, match=r"--kd-topk 100000: larger than the target vocabulary"):
        utils.build_task_model_criterion(data_bin, flags + ["--kd-topk", "100000"])
