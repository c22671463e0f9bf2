"""Which target tokens get the KD term: selective word-level KD (Wang et al., ACL 2021).

The tokens where the student's cross-entropy on the reference is highest are selected:
``batch`` ranks the tokens of the current batch; ``global`` ranks against a FIFO queue of
the last Q tokens' cross-entropies (the current batch pushed first), kept per process and
not saved in checkpoints. Of n ranked values, the threshold is the ceil(r * n)-th largest;
every token whose cross-entropy reaches it is selected (ties included).
"""

import math
from collections import deque

import torch


def threshold(values, rate):
    """The ceil(rate * n)-th largest of ``values`` (a 1-D tensor)."""
    k = max(1, math.ceil(rate * values.numel()))
    return values.topk(k, sorted=True).values[-1]


class TokenSelector:
    def __init__(self, mode="none", rate=1.0, queue_size=30000):
        self.mode = mode
        self.rate = rate
        self.queue = deque(maxlen=queue_size)

    @property
    def active(self):
        return self.mode != "none"

    def __call__(self, ce, valid):
        """Boolean mask (N) of the selected tokens among ``valid`` ones, given per-token
        cross-entropies ``ce`` (N)."""
        if not self.active or not valid.any():
            return valid
        values = ce.detach()[valid].float()
        if self.mode == "global":
            self.queue.extend(values.cpu().tolist())
            values = torch.tensor(list(self.queue))
        return valid & (ce.detach() >= threshold(values, self.rate).to(ce.device))
