"""The frozen teacher of a training run and its per-batch output.

The teacher is loaded once by the task, frozen (``eval()``, ``requires_grad_(False)``, run
under ``torch.no_grad()``), moved to the student's device and dtype on first use, and kept
outside the student's modules: it is neither trained, nor saved in student checkpoints,
nor switched back to train mode by the trainer.
"""

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from evokd.core.inference import load_frozen_model

logger = logging.getLogger(__name__)


@dataclass
class TeacherOutput:
    """The teacher's predictions for one batch, at temperature 1, on the reference prefix.

    Either the full distribution (a live teacher) or its top K (a teacher cache).
    """

    lprobs: Optional[Tensor] = None  # B x T x V log-probabilities
    topk_lprobs: Optional[Tensor] = None  # B x T x K, sorted descending
    topk_index: Optional[Tensor] = None  # B x T x K token ids
    target_lprobs: Optional[Tensor] = None  # B x T log-probability of the reference token

    @property
    def k(self):
        """How many tokens per position are available (the vocabulary when full)."""
        if self.lprobs is not None:
            return self.lprobs.size(-1)
        return self.topk_lprobs.size(-1)

    def topk(self, k):
        """The teacher's k most likely tokens per position: (log-probs, ids), B x T x k."""
        if self.lprobs is not None:
            return self.lprobs.topk(k, dim=-1)
        if k > self.k:
            raise ValueError(f"top-{k} requested from a teacher output holding only {self.k}")
        return self.topk_lprobs[..., :k], self.topk_index[..., :k]

    def target_nll(self, target):
        """Per-position NLL of ``target`` (B x T) under the teacher."""
        if self.target_lprobs is not None:
            return -self.target_lprobs
        return -self.lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)


class LiveTeacher:
    """A frozen teacher model that runs forward on every training batch.

    ``dropout``: None (eval mode, the default), or the probability of the teacher's main
    dropout in train mode, as the EKD authors' code leaves its teacher (no gradients either
    way; attention and activation dropout stay as trained).
    """

    def __init__(self, path, task, dropout=None):
        self.path = path
        self.dropout = dropout
        self.model = load_frozen_model(path, task)
        if dropout is not None:
            for module in main_dropouts(self.model):
                module.p = dropout
        n = sum(p.numel() for p in self.model.parameters())
        mode = "frozen" if dropout is None else f"frozen weights, train mode, dropout {dropout}"
        logger.info(f"teacher {path}: {type(self.model).__name__}, {n:,} parameters, {mode}")

    def _follow(self, student):
        """Move the teacher to the student's device and floating dtype if they differ."""
        ref = next(student.parameters())
        own = next(self.model.parameters())
        if own.device != ref.device or own.dtype != ref.dtype:
            self.model.to(device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def __call__(self, sample, student):
        self._follow(student)
        self.model.train(self.dropout is not None)
        net_output = self.model(**sample["net_input"])
        lprobs = self.model.get_normalized_probs(net_output, log_probs=True)  # B x T x V
        return TeacherOutput(lprobs=lprobs.float())


def main_dropouts(model):
    """The dropout modules that apply fairseq's ``--dropout`` (not attention's or the FFN
    activation's)."""
    from fairseq.modules import FairseqDropout

    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, FairseqDropout)
        and name.split(".")[-1] == "dropout_module"
        and not any(part.endswith("attn") for part in name.split(".")[:-1])
    ]
