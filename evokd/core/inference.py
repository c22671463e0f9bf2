"""In-process inference with frozen fairseq models: the one way evokd translates by itself.

``evokd distill-data``, ``evokd patch`` and ``evokd mckd`` (through distill-data) translate
with a :class:`Translator`: a frozen model (``eval()``, no gradients) and fairseq's own
beam search (``task.build_generator``, ``task.inference_step``), over the batches
fairseq-generate would form (sorted by length, cut at ``max_tokens``, no batch-size
multiple). What happens to a sentence too long for the model's positions or for one batch
is the caller's explicit choice: an error naming it (``too_long="error"``) or leaving it out
with a warning (``too_long="skip"``). The teacher cache runs frozen models through the same
:func:`choose_device`, :func:`move_to_device` and :func:`load_frozen_model`. ``evokd
evaluate`` does not translate here: it runs stock fairseq-generate, the reference that this
module's output is tested against.
"""

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

ORDER_SEED = 2  # fairseq-generate sorts with numpy seed --seed (1) + epoch (1)
TOO_LONG = ("error", "skip")


def choose_device(cpu=False, rank=0):
    """GPU ``rank`` (modulo the GPUs there are) unless ``cpu`` or there is none; else the CPU."""
    if cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def move_to_device(sample, device):
    """A collated batch on ``device`` (unchanged on the CPU)."""
    from fairseq import utils

    return utils.move_to_cuda(sample, device=device) if device.type == "cuda" else sample


def load_frozen_model(path, task, flag="--teacher-path", device=None, state=None):
    """The model of checkpoint ``path`` built for ``task``'s dictionaries (checked), in eval
    mode without gradients, on ``device`` if given. Errors name ``flag`` and ``path``.
    ``state``: the checkpoint already loaded from ``path`` (it is then not read again)."""
    from evokd.core.checkpoint import build_model

    model = build_model(path, task, flag=flag, state=state)
    model.eval()
    model.requires_grad_(False)
    return model if device is None else model.to(device)


def checkpoint_languages(path, flag):
    """(source, target) language of a checkpoint's task; None where it does not say."""
    from evokd.core.checkpoint import load_checkpoint, state_languages

    return state_languages(load_checkpoint(str(path), flag))


@dataclass
class Hypothesis:
    """The best hypothesis of one example."""

    id: int
    tokens: torch.Tensor  # token ids on the CPU, ending with the single EOS
    score: float
    alignment: Optional[list] = None  # [[source position, target position], ...] if asked for

    @property
    def body(self):
        """The token ids without the final EOS."""
        return self.tokens[:-1]


class Translator:
    """A frozen model and fairseq's beam search over one binarized subset of ``data``.

    ``decoding``: fairseq-generate's generation flags by name (``beam``, ``lenpen``,
    ``max_len_a``, ``max_len_b``, ``print_alignment``, ...).
    """

    def __init__(self, checkpoint, data, subset, decoding, device, flag="--teacher"):
        from fairseq.dataclass.configs import GenerationConfig

        from evokd.core.checkpoint import load_checkpoint, state_languages
        from evokd.core.runtime import translation_args, translation_task

        state = load_checkpoint(str(checkpoint), flag)  # read once: languages, then the model
        src, tgt = state_languages(state)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in decoding.items()]
        args = translation_args(str(data), src, tgt, flags)  # parsed once: task and decoding
        generation = GenerationConfig.from_namespace(args)
        try:
            self.task = translation_task(str(data), [subset], args=args)
        except FileNotFoundError as exc:  # a dictionary or the subset
            raise EvokdError(f"--data {data}: {exc} (expected fairseq binarized data)") from exc
        self.dataset = self.task.dataset(subset)
        self.device = device
        self.model = load_frozen_model(checkpoint, self.task, flag, device, state=state)
        # as fairseq-generate does (of its config, this reads the generation settings only)
        self.model.prepare_for_inference_(SimpleNamespace(generation=generation))
        self.generator = self.task.build_generator([self.model], generation)

    def plan_batches(self, max_tokens, ids=None, too_long="error"):
        """fairseq-generate's batches, cut by ``max_tokens``.

        Without ``ids``: the whole subset in fairseq-generate's order. With ``ids``: those
        examples sorted by source length (stable). ``too_long`` says what happens to an
        example longer than the model's source positions or than ``max_tokens``.
        """
        from fairseq.data import data_utils

        if too_long not in TOO_LONG:
            raise ValueError(f"too_long={too_long!r}: expected one of {TOO_LONG}")
        dataset = self.dataset
        if ids is None:
            with data_utils.numpy_seed(ORDER_SEED):
                order = dataset.ordered_indices()
        else:
            ids = np.asarray(sorted(ids), dtype=np.int64)
            order = ids[np.argsort(dataset.src_sizes[ids], kind="stable")]
        max_src = self.model.max_positions()[0]
        sizes = dataset.num_tokens_vec(order)
        long = (dataset.src_sizes[order] > max_src) | (sizes > max_tokens)
        if long.any() and too_long == "skip":
            logger.warning(
                "%d sentences longer than %d source positions or --max-tokens %d: skipped",
                int(long.sum()), max_src, max_tokens,
            )  # fmt: skip
            order = order[~long]
        elif long.any():
            first = order[np.flatnonzero(long)[0]]
            if dataset.src_sizes[first] > max_src:
                raise EvokdError(
                    f"{int(long.sum())} source sentences (e.g. example {first}, "
                    f"{dataset.src_sizes[first]} tokens) are longer than the model's "
                    f"{max_src} positions"
                )
            raise EvokdError(
                f"--max-tokens {max_tokens}: example {first} alone has "
                f"{dataset.num_tokens(first)} tokens; raise --max-tokens"
            )
        return dataset.batch_by_size(order, max_tokens=max_tokens, required_batch_size_multiple=1)

    def sample(self, batch):
        """The collated batch of example ids ``batch``, on the model's device."""
        sample = self.dataset.collater([self.dataset[int(i)] for i in batch])
        return move_to_device(sample, self.device)


def translate(translator, batches, bar=None):
    """The best hypothesis of every example of ``batches``, batch after batch."""
    t = translator
    eos = t.task.target_dictionary.eos()
    for batch in batches:
        sample = t.sample(batch)
        hypos = t.task.inference_step(t.generator, [t.model], sample)
        for example, nbest in zip(sample["id"].tolist(), hypos):
            best = nbest[0]
            tokens = best["tokens"].cpu()
            if tokens[-1] != eos or (tokens[:-1] == eos).any():
                raise RuntimeError(f"example {example}: hypothesis without a single final EOS")
            alignment = best.get("alignment")
            if alignment is not None:
                alignment = [[int(s), int(tg)] for s, tg in alignment]
            yield Hypothesis(example, tokens, float(best["score"]), alignment)
        if bar is not None:
            bar.update(len(batch))


def score_targets(translator, sources, targets):
    """Mean NLL per token (EOS included, nats) of ``targets`` under the translator's model,
    teacher-forced, as ``fairseq-generate --score-reference``; ``sources`` and ``targets``
    map example ids to token ids without EOS."""
    from fairseq.data.language_pair_dataset import collate
    from fairseq.sequence_scorer import SequenceScorer

    t = translator
    eos, pad = t.task.target_dictionary.eos(), t.task.target_dictionary.pad()
    tail = torch.tensor([eos])
    samples = [
        {"id": i, "source": torch.cat([sources[i], tail]), "target": torch.cat([targets[i], tail])}
        for i in targets
    ]
    sample = collate(samples, pad, eos, t.task.cfg.left_pad_source, t.task.cfg.left_pad_target)
    sample = move_to_device(sample, t.device)
    hypos = SequenceScorer(t.task.target_dictionary).generate([t.model], sample)
    return {i: -float(h[0]["score"]) for i, h in zip(sample["id"].tolist(), hypos)}
