"""Step ``translate``: the student and the teacher translate the pool; the teacher's feedback.

Both models run fairseq's own beam search through :mod:`evokd.core.inference`, on batches formed
like fairseq-generate's (the pool's ids sorted by source length, cut at ``max_tokens``;
no batch-size multiple; sentences too long for a model or a batch left out, with a
warning). The teacher's generator is asked for hard alignments (``print_alignment="hard"``):
fairseq's ``SequenceGeneratorWithAlignment`` takes, for every target piece, the source piece
with the highest cross-attention of the last decoder layer, averaged over heads, as recorded
during the beam search (``utils.extract_hard_alignment``; works with the plain transformer,
no alignment training). The student then scores the teacher's translation under teacher
forcing (:func:`evokd.core.inference.score_targets`, as ``fairseq-generate --score-reference``):
``nll`` is its mean negative log-likelihood per target token, EOS included, in nats.

The batches are grouped into chunks of about ``chunk_size`` sentences, written to
``DIR/translations.jsonl.partial/`` as they are finished; a killed run resumes the chunks
that are missing, and ``DIR/translations.jsonl`` appears when every chunk is there
(:mod:`.chunks`): the same rows, byte for byte, however often the step was killed.
"""

import logging
import time

import numpy as np

from evokd.core.inference import Translator, choose_device, score_targets, translate

from .chunks import build_jsonl, plan
from .feedback import feedback

logger = logging.getLogger(__name__)


def load_translator(checkpoint, pool, decoding, device, flag="--teacher", alignment=False):
    """A frozen model with fairseq's beam search over the pool's binarized subset."""
    if alignment:
        decoding = dict(decoding, print_alignment="hard")
    return Translator(checkpoint, pool.folder, pool.subset, decoding, device, flag=flag)


def translate_chunk(student, teacher, pool, batches):
    """The rows of ``translations.jsonl`` for the sentences of ``batches``, in id order."""
    from evokd.data import remove_bpe

    tgt_dict = teacher.task.target_dictionary
    rows = {}
    for batch in batches:
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
    """Translate the pool into ``translations.jsonl`` (resumable); returns counts."""
    from .pool import open_pool

    start = time.perf_counter()
    pool = open_pool(ws, inputs, "pool", src, tgt)
    device = choose_device(cfg.cpu)
    decoding = cfg.decoding()
    teacher = load_translator(inputs["teacher"], pool, decoding, device, alignment=True)
    student = load_translator(inputs["student"], pool, decoding, device, flag="--student")
    chunks = plan(teacher, pool.ids(), cfg.max_tokens, cfg.chunk_size)
    rows = build_jsonl(
        ws.translations,
        chunks,
        cfg.chunk_size,
        lambda batches: translate_chunk(student, teacher, pool, batches),
        "translating",
    )
    return {
        "pool": inputs["pool"] or f"{inputs['data']} (train)",
        "sentences": len(rows),
        "skipped": len(pool) - len(rows),
        "mean_nll": round(float(np.mean([r["nll"] for r in rows])), 4) if rows else None,
        "mean_chrf": round(float(np.mean([r["chrf"] for r in rows])), 4) if rows else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
