"""Word-level knowledge distillation loss."""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from evokd.criterions.selective import TokenSelector
from evokd.errors import EvokdError

KD_LOSSES = ChoiceEnum(["forward_kl", "reverse_kl", "jsd"])
KD_SELECTIONS = ChoiceEnum(["none", "batch", "global"])


@dataclass
class WordKDConfig(LabelSmoothedCrossEntropyCriterionConfig):
    kd_alpha: float = field(
        default=0.5,
        metadata={
            "help": "weight of the KD term in [0, 1]: loss = (1 - alpha) * label-smoothed NLL "
            "+ alpha * T^2 * D(teacher || student). 0 is plain label-smoothed cross-entropy "
            "(no teacher forward); 1 is pure distillation"
        },
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={
            "help": "softmax temperature T > 0 applied to both teacher and student; the KD "
            "term is scaled by T^2 so its gradient keeps its size"
        },
    )
    kd_loss: KD_LOSSES = field(
        default="forward_kl",
        metadata={
            "help": "divergence D: forward_kl = KL(teacher || student), the classic word-level "
            "KD; reverse_kl = KL(student || teacher); jsd = Jensen-Shannon divergence"
        },
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "0 = the teacher's full distribution; K > 0 = only the teacher's K most "
            "likely tokens per position, renormalised. forward_kl then uses the student's "
            "full-vocabulary log-probabilities of those K tokens; reverse_kl and jsd "
            "renormalise the student over the same K tokens"
        },
    )
    kd_selection: KD_SELECTIONS = field(
        default="none",
        metadata={
            "help": "selective KD (Wang et al., 2021): none = every target token gets the KD "
            "term; batch = the --kd-rate fraction of the batch's tokens where the student's "
            "cross-entropy is highest; global = tokens whose cross-entropy reaches the same "
            "quantile of a FIFO queue of the last --kd-queue-size tokens. The label-smoothed "
            "term always covers every token"
        },
    )
    kd_rate: float = field(
        default=0.5,
        metadata={"help": "fraction r in (0, 1] of tokens selected by --kd-selection"},
    )
    kd_queue_size: int = field(
        default=30000,
        metadata={"help": "tokens in the global selection queue (per process, not saved)"},
    )


def kd_divergence(teacher_lprobs, student_lprobs, kind):
    """Per-position divergence in nats between two distributions given as log-probs (... x V)."""
    if kind == "forward_kl":  # sum p_t (log p_t - log p_s)
        return F.kl_div(student_lprobs, teacher_lprobs, reduction="none", log_target=True).sum(-1)
    if kind == "reverse_kl":  # sum p_s (log p_s - log p_t)
        return F.kl_div(teacher_lprobs, student_lprobs, reduction="none", log_target=True).sum(-1)
    if kind == "jsd":  # (KL(p_t || m) + KL(p_s || m)) / 2 with m = (p_t + p_s) / 2
        # log m = max + log((1 + exp(-|d|)) / 2): no overflow, and exactly log p when p == q
        gap = (teacher_lprobs - student_lprobs).abs()
        log_m = torch.maximum(teacher_lprobs, student_lprobs) + torch.log1p(torch.expm1(-gap) / 2)
        kl_t = F.kl_div(log_m, teacher_lprobs, reduction="none", log_target=True)
        kl_s = F.kl_div(log_m, student_lprobs, reduction="none", log_target=True)
        return 0.5 * (kl_t + kl_s).sum(-1)
    raise ValueError(f"unknown --kd-loss {kind!r}")


def word_kd_loss(student_lprobs, teacher, kind, temperature=1.0, topk=0):
    """Per-position KD divergence (N) for flattened positions.

    student_lprobs: N x V log-probabilities at temperature 1. teacher: a
    :class:`~evokd.teachers.live.TeacherOutput` flattened to N positions. Both sides are
    re-normalised at ``temperature``; with ``topk`` > 0 the teacher keeps its top K.
    """
    student_t = student_lprobs
    if temperature != 1.0:
        student_t = F.log_softmax(student_lprobs / temperature, dim=-1)
    if topk > 0:
        t_lprobs, index = teacher.topk(topk)  # N x K
        teacher_t = F.log_softmax(t_lprobs.to(student_t.dtype) / temperature, dim=-1)
        student_k = student_t.gather(-1, index)  # N x K
        if kind != "forward_kl":  # a distribution over the same K tokens
            student_k = F.log_softmax(student_k, dim=-1)
        return kd_divergence(teacher_t, student_k, kind)
    if teacher.lprobs is None:
        raise EvokdError(
            f"--kd-topk 0 needs the teacher's full distribution, but the teacher output "
            f"holds only its top {teacher.k}: pass --kd-topk K with K <= {teacher.k}"
        )
    teacher_t = teacher.lprobs
    if temperature != 1.0:
        teacher_t = F.log_softmax(teacher_t / temperature, dim=-1)
    return kd_divergence(teacher_t, student_t, kind)


@register_criterion("word_kd", dataclass=WordKDConfig)
class WordKDCriterion(LabelSmoothedCrossEntropyCriterion):
    """Word-level KD: label-smoothed cross-entropy on the reference interpolated with a
    divergence from the teacher's per-token distribution under teacher forcing.

    ``(1 - alpha) * label_smoothed_nll + alpha * T^2 * D(p_teacher^T, p_student^T)`` per
    target token, padding masked, summed over tokens (Hinton et al., 2015; Kim and Rush,
    2016), as used by Evolving KD (arXiv 2605.09924) with alpha 0.5 and T 1. The teacher's
    predictions arrive in ``sample["teacher"]`` (a :class:`~evokd.teachers.live.TeacherOutput`),
    attached by the ``evokd_translation`` task on training batches only, so validation
    reports the student's own label-smoothed loss and NLL.
    """

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_alpha=0.5,
        kd_temperature=1.0,
        kd_loss="forward_kl",
        kd_topk=0,
        kd_selection="none",
        kd_rate=0.5,
        kd_queue_size=30000,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not 0.0 <= kd_alpha <= 1.0:
            raise EvokdError(f"--kd-alpha {kd_alpha}: expected a weight in [0, 1]")
        if not kd_temperature > 0:
            raise EvokdError(f"--kd-temperature {kd_temperature}: expected a value > 0")
        if kd_topk < 0:
            raise EvokdError(f"--kd-topk {kd_topk}: expected 0 (full vocabulary) or K > 0")
        if str(kd_selection) != "none" and not 0.0 < kd_rate <= 1.0:
            raise EvokdError(f"--kd-rate {kd_rate}: expected a fraction in (0, 1]")
        if kd_queue_size < 1:
            raise EvokdError(f"--kd-queue-size {kd_queue_size}: expected Q >= 1")
        if kd_alpha > 0 and not getattr(task, "has_teacher", False):
            raise EvokdError(
                f"--criterion word_kd with --kd-alpha {kd_alpha} needs a teacher: use "
                "--task evokd_translation with --teacher-path CHECKPOINT (or --kd-alpha 0)"
            )
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        self.kd_loss = str(kd_loss)
        self.kd_topk = kd_topk
        self.selector = TokenSelector(str(kd_selection), kd_rate, kd_queue_size)

    @property
    def needs_teacher(self):
        return self.kd_alpha > 0

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)  # N x V, N
        loss, nll_loss = self._label_smoothed(lprobs, target, reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        teacher = sample.get("teacher")
        if teacher is not None and self.kd_alpha > 0:
            kd, teacher_nll, selected = self.compute_kd_loss(lprobs, target, teacher, reduce)
            if not reduce:  # per-position losses have the label-smoothed loss's shape
                kd, teacher_nll = kd.view_as(loss), teacher_nll.view_as(loss)
            alpha, temp = self.kd_alpha, self.kd_temperature
            loss = (1.0 - alpha) * loss + alpha * temp * temp * kd
            logging_output["loss"] = loss.data
            logging_output["kd_loss"] = kd.data
            logging_output["teacher_nll_loss"] = teacher_nll.data
            logging_output["kd_tokens"] = selected
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = n_correct.item()
            logging_output["total"] = total.item()
        return loss, sample_size, logging_output

    def _label_smoothed(self, lprobs, target, reduce):
        return label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=reduce
        )

    def _flatten_teacher(self, teacher):
        """Apply the criterion's prefix cut and flatten B x T x ... to N x ..."""

        def flat(x):
            if x is None:
                return None
            if self.ignore_prefix_size > 0:
                x = x[:, self.ignore_prefix_size :]
            return x.reshape(-1, *x.shape[2:])

        return type(teacher)(
            lprobs=flat(teacher.lprobs),
            topk_lprobs=flat(teacher.topk_lprobs),
            topk_index=flat(teacher.topk_index),
            target_lprobs=flat(teacher.target_lprobs),
        )

    def compute_kd_loss(self, lprobs, target, teacher, reduce=True):
        """KD divergence (on the selected tokens), the teacher's own NLL (on every token),
        per token or summed, and the number of tokens that got the KD term."""
        teacher = self._flatten_teacher(teacher)
        kd = word_kd_loss(lprobs, teacher, self.kd_loss, self.kd_temperature, self.kd_topk)  # N
        teacher_nll = teacher.target_nll(target).float()  # N
        pad_mask = target.eq(self.padding_idx)
        kd_mask = ~pad_mask
        if self.selector.active:  # the student's cross-entropy on the reference ranks tokens
            ce = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            kd_mask = self.selector(ce, kd_mask)
        kd = kd.masked_fill(~kd_mask, 0.0)
        teacher_nll = teacher_nll.masked_fill(pad_mask, 0.0)
        selected = int(kd_mask.sum())
        if reduce:
            return kd.sum(), teacher_nll.sum(), selected
        return kd, teacher_nll, selected

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        if not any("kd_loss" in log for log in logging_outputs):
            return  # validation: the student's own loss only
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        kd_sum = sum(log.get("kd_loss", 0) for log in logging_outputs)
        tnll_sum = sum(log.get("teacher_nll_loss", 0) for log in logging_outputs)
        selected = sum(log.get("kd_tokens", 0) for log in logging_outputs)
        metrics.log_scalar("kd_loss", kd_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("teacher_nll_loss", tnll_sum / ntokens / math.log(2), ntokens, round=3)
        # the fraction of target tokens that got the KD term (1 without --kd-selection)
        metrics.log_scalar("kd_selected", selected / ntokens, ntokens, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
