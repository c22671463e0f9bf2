"""Step ``translate``: the student and the teacher translate the pool; the teacher's feedback.

Both models run fairseq's own beam search through :mod:`evokd.inference`, on batches formed
like fairseq-generate's (the ids of a chunk sorted by source length, cut at ``max_tokens``;
no batch-size multiple; sentences too long for a model or a batch left out, with a
warning). The teacher's generator is asked for hard alignments (``print_alignment="hard"``):
fairseq's ``SequenceGeneratorWithAlignment`` takes, for every target piece, the source piece
with the highest cross-attention of the last decoder layer, averaged over heads, as recorded
during the beam search (``utils.extract_hard_alignment``; works with the plain transformer,
no alignment training). The student then scores the teacher's translation under teacher
forcing (:func:`evokd.inference.score_targets`, as ``fairseq-generate --score-reference``):
``nll`` is its mean negative log-likelihood per target token, EOS included, in nats.

The rows are appended to ``DIR/translations.jsonl`` chunk by chunk (``chunk_size``
sentences); a killed run resumes after the last complete line.
"""

import logging
import time

import numpy as np

from evokd import steps
from evokd.inference import Translator, choose_device, score_targets, translate

from .feedback import feedback
from .workspace import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)


def load_translator(checkpoint, pool, decoding, device, flag="--teacher", alignment=False):
    """A frozen model with fairseq's beam search over the pool's binarized subset."""
    if alignment:
        decoding = dict(decoding, print_alignment="hard")
    return Translator(checkpoint, pool.folder, pool.subset, decoding, device, flag=flag)


def translate_ids(translator, ids, max_tokens):
    """{id: :class:`evokd.inference.Hypothesis`} of the sentences ``ids`` that fit."""
    batches = translator.plan_batches(max_tokens, ids=ids, too_long="skip")
    return {h.id: h for h in translate(translator, batches)}


def translate_chunk(student, teacher, pool, ids, max_tokens):
    """The rows of ``translations.jsonl`` for the sentences ``ids``, in id order."""
    from evokd.data import remove_bpe

    tgt_dict = teacher.task.target_dictionary
    rows = {}
    for batch in teacher.plan_batches(max_tokens, ids=ids, too_long="skip"):
        theirs = {h.id: h for h in translate(teacher, [batch])}
        ours = {h.id: h for h in translate(student, [batch])}
        sources = {i: pool.tokens(i)[:-1] for i in theirs}
        nll = score_targets(student, sources, {i: h.body for i, h in theirs.items()})
        for i, hypo in theirs.items():
            source_bpe = pool.bpe(i)
            student_bpe = tgt_dict.string(ours[i].body)
            teacher_bpe = tgt_dict.string(hypo.body)
            rows[i] = {
                "id": i,
                "source": remove_bpe(source_bpe),
                "student": remove_bpe(student_bpe),
                "teacher": remove_bpe(teacher_bpe),
                "source_bpe": source_bpe,
                "student_bpe": student_bpe,
                "teacher_bpe": teacher_bpe,
                "alignment": hypo.alignment,
                "nll": round(nll[i], 6),
                **feedback(source_bpe, student_bpe, teacher_bpe, hypo.alignment),
            }
    return [rows[i] for i in sorted(rows)]


def run_translate(ws, cfg, inputs, src, tgt):
    """Translate every pool sentence not in ``translations.jsonl`` yet; returns counts."""
    from tqdm import tqdm

    from .pool import open_pool

    start = time.perf_counter()
    pool = open_pool(ws, inputs, "pool", src, tgt)
    device = choose_device(cfg.cpu)
    decoding = cfg.decoding()
    teacher = load_translator(inputs["teacher"], pool, decoding, device, alignment=True)
    student = load_translator(inputs["student"], pool, decoding, device, flag="--student")
    append_jsonl(ws.translations, [])  # the file exists even for an empty pool
    done = {row["id"] for row in read_jsonl(ws.translations)}
    todo = [i for i in pool.ids() if i not in done]
    if done:
        logger.info("translate: %d sentences done earlier, %d to go", len(done), len(todo))
    with tqdm(total=len(todo), desc="translating", unit="sent", dynamic_ncols=True) as bar:
        for ids in steps.cut(todo, cfg.chunk_size):
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
