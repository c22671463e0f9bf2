"""Step ``synthesize``: more sentences holding each error word, translated by the teacher.

For every error word of ``selected.jsonl`` (the source side, lowercased), up to ``synth_n``
sentences holding it are retrieved from the monolingual pool (the training source of DATA,
or ``--mono FILE``; see :mod:`.retrieve`), leaving out the sentences the error came from.
The teacher translates them; a sentence is kept when its translation holds a corrected
word of an error word it was retrieved for (the teacher's target word for that error),
i.e. when the teacher shows the student the word it got wrong.
"""

from evokd.data import remove_bpe

from .pool import open_pool
from .retrieve import WordIndex, group_errors, retrieve, translate_retrieved
from .workspace import read_jsonl


def synthesis_jobs(groups, index, n):
    """id -> {"words": error words it holds, "corrected": their teacher words}."""
    jobs = {}
    for word in sorted(groups):
        group = groups[word]
        for i in retrieve(index, word, n, group["origins"]):
            job = jobs.setdefault(i, {"words": [], "corrected": set()})
            job["words"].append(word)
            job["corrected"] |= group["teacher"]
    return jobs


def holds_any(translation, words):
    """True when the (BPE-removed) ``translation`` holds one of ``words`` as a word."""
    return not set(translation.lower().split()).isdisjoint(words)


def synthesis_row(i, job, source_bpe, teacher_bpe):
    teacher = remove_bpe(teacher_bpe)
    return {
        "id": i,
        "origin": "synthesis",
        "source": remove_bpe(source_bpe),
        "teacher": teacher,
        "words": job["words"],
        "corrected": sorted(job["corrected"]),
        "kept": holds_any(teacher, job["corrected"]),
        "source_bpe": source_bpe,
        "teacher_bpe": teacher_bpe,
    }


def run_synthesize(ws, cfg, inputs, src, tgt):
    """Write ``synthesis.jsonl`` (resumable); returns counts."""
    groups = group_errors(read_jsonl(ws.selected))
    pool = open_pool(ws, inputs, "mono", src, tgt)
    jobs = synthesis_jobs(groups, WordIndex.from_pool(pool), cfg.synth_n)
    rows = translate_retrieved(
        ws.synthesis, jobs, pool, inputs["teacher"], cfg, synthesis_row, "synthesis"
    )
    return {
        "mono": inputs["mono"] or f"{inputs['data']} (train)",
        "error_words": len(groups),
        "retrieved": len(rows),
        "kept": sum(r["kept"] for r in rows),
    }
