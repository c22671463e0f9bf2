"""The teacher cache: exactness against the live teacher, fingerprints, resumable builds."""

import json

import pytest
import torch

from evokd import cli
from evokd.errors import EvokdError
from evokd.teachers.cache import PARTS, TeacherCache
from tests import utils

STUDENT = ["--arch", "transformer_evokd_tiny_student", "--dropout", "0"]


def build(data_bin, teacher, out, *extra):
    code = cli.main(
        ["cache-teacher", "--teacher", str(teacher), "--data", str(data_bin), "--topk", "8"]
        + ["--out", str(out), "--cpu", *extra]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def cache(data_bin, teacher_ckpt, tmp_path_factory):
    return build(data_bin, teacher_ckpt, tmp_path_factory.mktemp("cache") / "top8")


def test_cache_layout_and_size(cache, data_bin):
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["examples"] == 200 and meta["fingerprint"]["topk"] == 8
    assert meta["bytes_per_token"] == 8 * 4 + 2  # uint16 ids + fp16 log-probs, + target
    data_bytes = sum((cache / f"{p}.bin").stat().st_size for p in PARTS)
    assert data_bytes == meta["target_tokens"] * meta["bytes_per_token"]
    assert not (cache.parent / "top8.partial").exists()


def _setup(data_bin, extra):
    cfg, task, model, criterion = utils.build_task_model_criterion(
        data_bin, STUDENT + ["--task", "evokd_translation", "--criterion", "word_kd"] + extra
    )
    model.eval()
    return task, model, criterion


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("topk", [1, 4, 8])
def test_cached_kd_equals_online_kd(cache, data_bin, teacher_ckpt, kind, topk):
    flags = ["--kd-topk", str(topk), "--kd-loss", kind, "--kd-temperature", "2"]
    task_live, model, crit_live = _setup(data_bin, ["--teacher-path", str(teacher_ckpt)] + flags)
    task_cache, _, crit_cache = _setup(
        data_bin, ["--teacher-cache", str(cache), "--teacher-path", str(teacher_ckpt)] + flags
    )
    assert isinstance(task_cache.teacher, TeacherCache)
    for start in (0, 40, 120):
        sample = utils.batch(task_live, range(start, start + 16))
        live = dict(sample, teacher=task_live.teacher(sample, model))
        cached = dict(sample, teacher=task_cache.teacher(sample, model))
        a, _, log_a = crit_live(model, live)
        b, _, log_b = crit_cache(model, cached)
        torch.testing.assert_close(b, a, rtol=1e-3, atol=0)
        torch.testing.assert_close(log_b["kd_loss"], log_a["kd_loss"], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(
            log_b["teacher_nll_loss"], log_a["teacher_nll_loss"], rtol=1e-3, atol=0
        )


def test_training_from_the_cache_through_the_cli(cache, data_bin, tmp_path):
    flags = ["--task", "evokd_translation", "--teacher-cache", str(cache)]
    flags += ["--criterion", "word_kd", "--kd-alpha", "0.5", "--kd-topk", "8"]
    records, out = utils.train(data_bin, tmp_path, STUDENT[1], extra=flags)
    train = [r for r in records if r["_tag"] == "train"][-1]
    assert float(train["train_kd_loss"]) > 0
    assert "teacher " not in out  # no live teacher was loaded


def test_mismatches_are_errors_before_training(cache, data_bin, teacher_ckpt, tmp_path):
    base = ["--teacher-cache", str(cache), "--kd-alpha", "0.5"]
    with pytest.raises(EvokdError, match="holds the teacher's top 8 tokens, but --kd-topk is 16"):
        _setup(data_bin, base + ["--kd-topk", "16"])
    with pytest.raises(EvokdError, match="--kd-topk is 0"):
        _setup(data_bin, base + ["--kd-topk", "0"])
    other_teacher = tmp_path / "other.pt"
    state = torch.load(teacher_ckpt, weights_only=True)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, other_teacher)
    with pytest.raises(EvokdError, match="built from another teacher"):
        _setup(data_bin, base + ["--kd-topk", "8", "--teacher-path", str(other_teacher)])
    other_data = utils.make_data_bin(tmp_path / "other", n_train=150, n_valid=20)
    (other_data / "dict.de.txt").write_text((data_bin / "dict.de.txt").read_text())
    (other_data / "dict.en.txt").write_text((data_bin / "dict.en.txt").read_text())
    with pytest.raises(EvokdError, match="built for other data"):
        _setup(other_data, base + ["--kd-topk", "8"])
    with pytest.raises(EvokdError, match="not a finished teacher cache"):
        _setup(data_bin, ["--teacher-cache", str(tmp_path / "nothing"), "--kd-topk", "8"])
