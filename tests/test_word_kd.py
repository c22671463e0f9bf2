"""The word_kd criterion against exact numbers."""

import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from evokd.criterions.word_kd import WordKDCriterion, kd_divergence, word_kd_loss
from evokd.errors import EvokdError
from evokd.teachers.live import TeacherOutput
from tests import utils

# ---------------------------------------------------------------------------------------
# The divergences on hand-made distributions.

P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.4, 0.4, 0.2]  # student


def _log(p):
    return torch.tensor(p, dtype=torch.float64).log()


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_forward_kl_by_hand():
    got = kd_divergence(_log(P_T), _log(P_S), "forward_kl")
    assert got.item() == pytest.approx(_kl(P_T, P_S), rel=1e-12)


def test_reverse_kl_by_hand():
    got = kd_divergence(_log(P_T), _log(P_S), "reverse_kl")
    assert got.item() == pytest.approx(_kl(P_S, P_T), rel=1e-12)
    assert got.item() != pytest.approx(_kl(P_T, P_S), rel=1e-3)  # really the other way


def test_jsd_by_hand():
    m = [(a + b) / 2 for a, b in zip(P_T, P_S)]
    expected = 0.5 * _kl(P_T, m) + 0.5 * _kl(P_S, m)
    got = kd_divergence(_log(P_T), _log(P_S), "jsd")
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert 0 < got.item() <= math.log(2)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_identical_distributions_give_zero(kind):
    assert kd_divergence(_log(P_T), _log(P_T), kind).item() == 0.0


def _random_case(n=6, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = F.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 2, -1)
    teacher = F.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 2, -1)
    return student, teacher


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_topk_with_k_equal_vocabulary_equals_full(kind, temperature):
    student, teacher = _random_case()
    full = word_kd_loss(student, TeacherOutput(lprobs=teacher), kind, temperature, topk=0)
    top_v = word_kd_loss(student, TeacherOutput(lprobs=teacher), kind, temperature, topk=11)
    torch.testing.assert_close(top_v, full, rtol=1e-10, atol=1e-12)


def test_topk_renormalises_teacher_by_hand():
    # Teacher top 2 of [0.7, 0.2, 0.1] renormalised: [0.7/0.9, 0.2/0.9] on tokens 0 and 1.
    student, teacher = _log(P_S).unsqueeze(0), _log(P_T).unsqueeze(0)
    got = word_kd_loss(student, TeacherOutput(lprobs=teacher), "forward_kl", topk=2)
    q = [0.7 / 0.9, 0.2 / 0.9]
    expected = sum(a * (math.log(a) - math.log(b)) for a, b in zip(q, P_S[:2]))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # reverse KL renormalises the student over the same two tokens
    got = word_kd_loss(student, TeacherOutput(lprobs=teacher), "reverse_kl", topk=2)
    r = [0.4 / 0.8, 0.4 / 0.8]
    assert got.item() == pytest.approx(_kl(r, q), rel=1e-12)


def test_topk_from_cache_equals_topk_from_full_distribution():
    student, teacher = _random_case()
    values, index = teacher.topk(5, dim=-1)
    cached = TeacherOutput(topk_lprobs=values.half().double(), topk_index=index)
    online = TeacherOutput(lprobs=teacher)
    a = word_kd_loss(student, online, "forward_kl", 2.0, topk=4)
    b = word_kd_loss(student, cached, "forward_kl", 2.0, topk=4)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # fp16 storage of the cache


def test_temperature_softens_both_sides_by_hand():
    t = 3.0
    z_s = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    z_t = torch.tensor([[0.0, 1.5, 0.3]], dtype=torch.float64)
    got = word_kd_loss(
        F.log_softmax(z_s, -1), TeacherOutput(lprobs=F.log_softmax(z_t, -1)), "forward_kl", t
    )

    def softmax(z):
        e = [math.exp(x / t) for x in z]
        return [x / sum(e) for x in e]

    expected = _kl(softmax(z_t[0].tolist()), softmax(z_s[0].tolist()))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_full_kd_needs_full_teacher_distribution():
    student, teacher = _random_case()
    values, index = teacher.topk(4, dim=-1)
    with pytest.raises(EvokdError, match="--kd-topk"):
        word_kd_loss(student, TeacherOutput(topk_lprobs=values, topk_index=index), "forward_kl")


# ---------------------------------------------------------------------------------------
# The criterion on real batches of a tiny model.

STUDENT = ["--arch", "transformer_evokd_tiny_student", "--dropout", "0"]


@pytest.fixture(scope="module")
def kd_setup(data_bin, teacher_ckpt):
    extra = STUDENT + ["--task", "evokd_translation", "--teacher-path", str(teacher_ckpt)]
    extra += ["--criterion", "word_kd", "--kd-alpha", "0.5"]
    cfg, task, model, criterion = utils.build_task_model_criterion(data_bin, extra)
    model.eval()  # dropout off: losses are deterministic
    return task, model, criterion


def _criterion(task, **overrides):
    kwargs = dict(sentence_avg=False, label_smoothing=0.1)
    kwargs.update(overrides)
    return WordKDCriterion(task, **kwargs)


def _sample(task, model, indices=range(8)):
    sample = utils.batch(task, list(indices))
    sample["teacher"] = task.teacher(sample, model)
    return sample


def test_alpha_zero_equals_label_smoothed_cross_entropy_exactly(kd_setup):
    task, model, _ = kd_setup
    sample = _sample(task, model)
    plain = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    expected, _, expected_log = plain(model, sample)
    got, _, log = _criterion(task, kd_alpha=0.0)(model, sample)
    assert torch.equal(got, expected)
    assert torch.equal(log["nll_loss"], expected_log["nll_loss"])
    assert "kd_loss" not in log


def test_kd_loss_combines_terms(kd_setup):
    task, model, _ = kd_setup
    sample = _sample(task, model)
    plain, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample)
    for alpha, temperature in ((0.5, 1.0), (0.3, 2.0)):
        crit = _criterion(task, kd_alpha=alpha, kd_temperature=temperature)
        loss, _, log = crit(model, sample)
        expected = (1 - alpha) * plain + alpha * temperature**2 * log["kd_loss"]
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
        assert log["kd_loss"] > 0
        assert log["teacher_nll_loss"] > 0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_equal_to_student_gives_zero_kd(kd_setup, kind, temperature):
    task, model, _ = kd_setup
    sample = utils.batch(task, list(range(8)))
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    sample["teacher"] = TeacherOutput(lprobs=lprobs.float())
    crit = _criterion(task, kd_alpha=0.5, kd_temperature=temperature, kd_loss=kind)
    loss, _, log = crit(model, sample)
    assert log["kd_loss"].item() == 0.0
    plain, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample)
    torch.testing.assert_close(loss, 0.5 * plain, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("topk", [0, 5])
def test_padding_changes_nothing(kd_setup, kind, topk):
    task, model, _ = kd_setup
    crit = _criterion(task, kd_alpha=0.7, kd_temperature=2.0, kd_loss=kind, kd_topk=topk)
    indices = [0, 1, 2, 3, 4, 5]
    sizes = [task.dataset("train").tgt_sizes[i] for i in indices]
    assert len(set(sizes)) > 1, "the batch must be padded"
    batched = _sample(task, model, indices)
    total, _, log = crit(model, batched)
    singles = [crit(model, _sample(task, model, [i])) for i in indices]
    torch.testing.assert_close(total, sum(s[0] for s in singles), rtol=1e-5, atol=1e-4)
    kd_sum = sum(s[2]["kd_loss"] for s in singles)
    torch.testing.assert_close(log["kd_loss"], kd_sum, rtol=1e-5, atol=1e-4)

    # Garbage in the teacher's padded positions changes nothing at all.
    pad = batched["target"].eq(task.target_dictionary.pad())
    noisy = dict(batched)
    lprobs = batched["teacher"].lprobs.clone()
    lprobs[pad] = F.log_softmax(torch.randn_like(lprobs[pad]) * 5, -1)
    noisy["teacher"] = TeacherOutput(lprobs=lprobs)
    again, _, _ = crit(model, noisy)
    assert torch.equal(again, total)


def test_unreduced_loss_sums_to_reduced(kd_setup):
    task, model, _ = kd_setup
    crit = _criterion(task, kd_alpha=0.5)
    sample = _sample(task, model)
    reduced, _, _ = crit(model, sample, reduce=True)
    unreduced, _, _ = crit(model, sample, reduce=False)
    torch.testing.assert_close(unreduced.sum(), reduced, rtol=1e-5, atol=1e-4)


def test_validation_reports_the_students_own_loss(kd_setup):
    task, model, criterion = kd_setup
    sample = utils.batch(task, list(range(8)))  # no teacher attached, as in valid_step
    loss, _, log = task.valid_step(sample, model, criterion)
    plain, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample)
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    assert "kd_loss" not in log and "teacher_nll_loss" not in log


def test_reduce_metrics_logs_base_two(kd_setup):
    from fairseq.logging import metrics

    task, model, _ = kd_setup
    crit = _criterion(task, kd_alpha=0.5)
    _, sample_size, log = crit(model, _sample(task, model))
    with metrics.aggregate() as agg:
        WordKDCriterion.reduce_metrics([log, log])
    stats = agg.get_smoothed_values()
    expected = 2 * log["kd_loss"].item() / (2 * sample_size) / math.log(2)
    assert stats["kd_loss"] == pytest.approx(expected, abs=1e-3)
    nll = 2 * log["teacher_nll_loss"].item() / (2 * log["ntokens"]) / math.log(2)
    assert stats["teacher_nll_loss"] == pytest.approx(nll, abs=1e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(kd_alpha=1.5), "--kd-alpha"),
        (dict(kd_alpha=-0.1), "--kd-alpha"),
        (dict(kd_temperature=0.0), "--kd-temperature"),
        (dict(kd_topk=-1), "--kd-topk"),
    ],
)
def test_bad_flags_are_rejected(kd_setup, overrides, message):
    task, _, _ = kd_setup
    with pytest.raises(EvokdError, match=message):
        _criterion(task, **overrides)
