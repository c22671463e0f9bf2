"""Step ``translate``: the student and the teacher translate the pool; the teacher's feedback.

Both models run fairseq's own beam search (:class:`evokd.distill_data.Translator`), on
batches formed like fairseq-generate's (the ids of a chunk sorted by source length, cut at
``max_tokens``; no batch-size multiple). The teacher's generator is asked for hard
alignments (``print_alignment="hard"``): fairseq's ``SequenceGeneratorWithAlignment`` takes,
for every target piece, the source piece with the highest cross-attention of the last
decoder layer, averaged over heads, as recorded during the beam search
(``utils.extract_hard_alignment``; works with the plain transformer, no alignment training).
The student then scores the teacher's translation under teacher forcing (fairseq's
``SequenceScorer``, as ``fairseq-generate --score-reference``): ``nll`` is its mean
negative log-likelihood per target token, EOS included, in nats.

The rows are appended to ``DIR/translations.jsonl`` chunk by chunk (``chunk_size``
sentences); a killed run resumes after the last complete line.
"""

import logging
import time

import numpy as np
import torch

from .feedback import feedback
from .workspace import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)


def device_for(cpu):
    use_cuda = torch.cuda.is_available() and not cpu
    return torch.device("cuda", 0) if use_cuda else torch.device("cpu")


def load_translator(checkpoint, pool, decoding, device, alignment=False):
    """A frozen model with fairseq's beam search over the pool's binarized subset."""
    from evokd.distill_data import Translator

    if alignment:
        decoding = dict(decoding, print_alignment="hard")
    return Translator(checkpoint, pool.folder, pool.subset, decoding, device)


def plan_batches(translator, ids, max_tokens):
    """``ids`` in fairseq-generate's batches: sorted by source length, cut by max_tokens.

    Sentences longer than the model's positions or ``max_tokens`` are left out (logged).
    """
    dataset = translator.dataset
    ids = np.asarray(sorted(ids), dtype=np.int64)
    limit = min(translator.model.max_positions()[0], max_tokens)
    too_long = ids[dataset.src_sizes[ids] > limit]
    if len(too_long):
        logger.warning("%d sentences longer than %d tokens skipped", len(too_long), limit)
        ids = ids[dataset.src_sizes[ids] <= limit]
    order = ids[np.argsort(dataset.src_sizes[ids], kind="stable")]
    return dataset.batch_by_size(order, max_tokens=max_tokens, required_batch_size_multiple=1)


def _sample(translator, batch):
    from fairseq import utils

    dataset = translator.dataset
    sample = dataset.collater([dataset[int(i)] for i in batch])
    if translator.device.type == "cuda":
        sample = utils.move_to_cuda(sample, device=translator.device)
    return sample


def translate_batch(translator, batch):
    """{id: best hypothesis} for one batch; a hypothesis holds ``tokens`` (no EOS, on the
    CPU), ``score`` and, if the generator computes them, ``alignment`` pairs."""
    t = translator
    sample = _sample(t, batch)
    out, hypos = {}, t.task.inference_step(t.generator, [t.model], sample)
    for example, nbest in zip(sample["id"].tolist(), hypos):
        best = nbest[0]
        hypo = {"tokens": best["tokens"][:-1].cpu(), "score": float(best["score"])}
        if "alignment" in best and best["alignment"] is not None:
            hypo["alignment"] = [[int(s), int(tg)] for s, tg in best["alignment"]]
        out[example] = hypo
    return out


def score_targets(translator, sources, targets):
    """Mean NLL per token (EOS included, nats) of ``targets`` under the translator's model,
    teacher-forced; ``sources`` and ``targets`` map ids to token tensors without EOS."""
    from fairseq import utils
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
    if t.device.type == "cuda":
        sample = utils.move_to_cuda(sample, device=t.device)
    scorer = SequenceScorer(t.task.target_dictionary)
    hypos = scorer.generate([t.model], sample)
    return {i: -float(h[0]["score"]) for i, h in zip(sample["id"].tolist(), hypos)}


def translate_chunk(student, teacher, pool, ids, max_tokens):
    """The rows of ``translations.jsonl`` for the sentences ``ids``, in id order."""
    from evokd.data import remove_bpe

    tgt_dict = teacher.task.target_dictionary
    rows = {}
    for batch in plan_batches(teacher, ids, max_tokens):
        theirs = translate_batch(teacher, batch)
        ours = translate_batch(student, batch)
        sources = {i: pool.tokens(i)[:-1] for i in theirs}
        nll = score_targets(student, sources, {i: h["tokens"] for i, h in theirs.items()})
        for i, hypo in theirs.items():
            source_bpe = pool.bpe(i)
            student_bpe = tgt_dict.string(ours[i]["tokens"])
            teacher_bpe = tgt_dict.string(hypo["tokens"])
            rows[i] = {
                "id": i,
                "source": remove_bpe(source_bpe),
                "student": remove_bpe(student_bpe),
                "teacher": remove_bpe(teacher_bpe),
                "source_bpe": source_bpe,
                "student_bpe": student_bpe,
                "teacher_bpe": teacher_bpe,
                "alignment": hypo["alignment"],
                "nll": round(nll[i], 6),
                **feedback(source_bpe, student_bpe, teacher_bpe, hypo["alignment"]),
            }
    return [rows[i] for i in sorted(rows)]


def chunks(ids, size):
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def run_translate(ws, cfg, inputs, src, tgt):
    """Translate every pool sentence not in ``translations.jsonl`` yet; returns counts."""
    from tqdm import tqdm

    from .pool import open_pool

    start = time.perf_counter()
    pool = open_pool(ws, inputs, "pool", src, tgt)
    device = device_for(cfg.cpu)
    teacher = load_translator(inputs["teacher"], pool, cfg.decoding(), device, alignment=True)
    student = load_translator(inputs["student"], pool, cfg.decoding(), device)
    append_jsonl(ws.translations, [])  # the file exists even for an empty pool
    done = {row["id"] for row in read_jsonl(ws.translations)}
    todo = [i for i in pool.ids() if i not in done]
    if done:
        logger.info("translate: %d sentences done earlier, %d to go", len(done), len(todo))
    with tqdm(total=len(todo), desc="translating", unit="sent", dynamic_ncols=True) as bar:
        for ids in chunks(todo, cfg.chunk_size):
            append_jsonl(
                ws.translations, translate_chunk(student, teacher, pool, ids, cfg.max_tokens)
            )
            bar.update(len(ids))
    rows = read_jsonl(ws.translations)
    return {
        "pool": inputs["pool"] or f"{inputs['data']} (train)",
        "sentences": len(rows),
        "skipped": len(pool) - len(rows),
        "mean_nll": round(float(np.mean([r["nll"] for r in rows])), 4) if rows else None,
        "mean_chrf": round(float(np.mean([r["chrf"] for r in rows])), 4) if rows else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
