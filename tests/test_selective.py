"""Selective word-level KD (Wang et al., 2021): which tokens get the KD term."""

import math

import pytest
import torch

from evokd.criterions.selective import TokenSelector, threshold
from evokd.criterions.word_kd import WordKDCriterion, word_kd_loss
from evokd.errors import EvokdError
from evokd.teachers.live import TeacherOutput
from tests import utils


def test_threshold_is_the_ceil_rate_largest():
    values = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.1])
    assert threshold(values, 0.5).item() == 1.0  # ceil(2.5) = 3rd largest
    assert threshold(values, 0.2).item() == 3.0
    assert threshold(values, 1.0).item() == pytest.approx(0.1)


def test_batch_selection_by_hand():
    ce = torch.tensor([0.5, 2.0, 1.0, 3.0, 9.0, 0.7])
    valid = torch.tensor([True, True, True, True, False, True])  # 9.0 is padding
    mask = TokenSelector("batch", 0.4)(ce, valid)  # 5 real tokens: the 2 highest
    assert mask.tolist() == [False, True, False, True, False, False]
    assert TokenSelector("batch", 1.0)(ce, valid).tolist() == valid.tolist()
    assert TokenSelector("none", 0.1)(ce, valid).tolist() == valid.tolist()


def test_global_queue_threshold_by_hand():
    sel = TokenSelector("global", 0.5, queue_size=5)
    everything = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
    # queue [1, 2, 3]: the ceil(1.5) = 2nd largest is 2
    assert sel(torch.tensor([1.0, 2.0, 3.0]), everything(3)).tolist() == [False, True, True]
    # queue [2, 3, 4, 5, 6] (1 fell out): 3rd largest is 4
    assert sel(torch.tensor([4.0, 5.0, 6.0]), everything(3)).tolist() == [True, True, True]
    assert list(sel.queue) == [2.0, 3.0, 4.0, 5.0, 6.0]
    # queue [4, 5, 6, 0.5, 3.5]: 3rd largest is 4, nothing of this batch reaches it
    assert sel(torch.tensor([0.5, 3.5]), everything(2)).tolist() == [False, False]
    # only real tokens enter the queue
    sel(torch.tensor([7.0, 100.0]), torch.tensor([True, False]))
    assert list(sel.queue) == [5.0, 6.0, 0.5, 3.5, 7.0]


@pytest.fixture(scope="module")
def kd_setup(data_bin, teacher_ckpt):
    extra = ["--arch", "transformer_evokd_tiny_student", "--dropout", "0"]
    extra += ["--task", "evokd_translation", "--teacher-path", str(teacher_ckpt)]
    extra += ["--criterion", "word_kd"]
    _, task, model, _ = utils.build_task_model_criterion(data_bin, extra)
    model.eval()
    sample = utils.batch(task, range(16))
    sample["teacher"] = task.teacher(sample, model)
    return task, model, sample


def _crit(task, **kw):
    return WordKDCriterion(task, False, 0.1, kd_alpha=0.5, kd_temperature=2.0, **kw)


@pytest.mark.parametrize("mode", ["batch", "global"])
def test_rate_one_equals_plain_word_kd(kd_setup, mode):
    task, model, sample = kd_setup
    plain, _, plain_log = _crit(task)(model, sample)
    selective, _, log = _crit(task, kd_selection=mode, kd_rate=1.0)(model, sample)
    assert torch.equal(selective, plain)
    assert log["kd_tokens"] == plain_log["kd_tokens"] == sample["ntokens"]


def test_batch_selection_on_a_real_batch(kd_setup):
    task, model, sample = kd_setup
    crit = _crit(task, kd_selection="batch", kd_rate=0.3)
    loss, _, log = crit(model, sample)
    # recompute by hand: per-token KD and CE, keep the ceil(0.3 n) highest-CE tokens
    with torch.no_grad():
        lprobs, target = crit.get_lprobs_and_target(model, model(**sample["net_input"]), sample)
        flat = TeacherOutput(lprobs=sample["teacher"].lprobs.reshape(-1, lprobs.size(-1)))
        kd = word_kd_loss(lprobs, flat, "forward_kl", 2.0)
        ce = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    real = target.ne(task.target_dictionary.pad())
    k = math.ceil(0.3 * int(real.sum()))
    chosen = ce[real].topk(k).indices
    expected = kd[real][chosen].sum()
    assert log["kd_tokens"] == k
    torch.testing.assert_close(log["kd_loss"], expected, rtol=1e-5, atol=1e-6)


def test_selection_flags_are_checked(kd_setup):
    task, _, _ = kd_setup
    with pytest.raises(EvokdError, match="--kd-rate"):
        _crit(task, kd_selection="batch", kd_rate=0.0)
    with pytest.raises(EvokdError, match="--kd-queue-size"):
        _crit(task, kd_selection="global", kd_queue_size=0)


def test_selected_fraction_is_in_the_training_log(data_bin, teacher_ckpt, tmp_path):
    extra = ["--task", "evokd_translation", "--teacher-path", str(teacher_ckpt)]
    extra += ["--criterion", "word_kd", "--kd-selection", "batch", "--kd-rate", "0.3"]
    records, _ = utils.train(data_bin, tmp_path, "transformer_evokd_tiny_student", extra=extra)
    inner = [r["kd_selected"] for r in records if r["_tag"] == "train_inner"]
    epoch = [r["train_kd_selected"] for r in records if r["_tag"] == "train"]
    assert inner and epoch
    # ceil(0.3 n) of the n target tokens of every batch (n is over a thousand here)
    assert all(0.3 <= float(value) <= 0.302 for value in inner + epoch), (inner, epoch)
    valid = [r for r in records if r["_tag"] == "valid"]
    assert valid and all("valid_kd_selected" not in r for r in valid)
