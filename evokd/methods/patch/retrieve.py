"""Monolingual retrieval: an inverted index over a pool's words, and the teacher translating
what it finds (shared by the synthesis and analogy steps).

The index maps every tokenized, lowercased word (BPE removed; words holding ``<unk>`` left
out) to the ids of the sentences containing it, in pool order. :func:`retrieve` returns
the first ``n`` of them whose text differs from every sentence an error came from (so the
sentence itself, and its duplicates, are never retrieved for its own error).
"""

import logging
from collections import defaultdict

from evokd.core.inference import choose_device, translate

from .chunks import build_jsonl, plan
from .translate import load_translator
from .workspace import write_jsonl

logger = logging.getLogger(__name__)


class WordIndex:
    """word -> ids of the sentences holding it; built from ``(id, text)`` pairs."""

    def __init__(self, sentences):
        self.texts = {}
        self.ids = defaultdict(list)
        for i, text in sentences:
            self.texts[i] = text
            for word in dict.fromkeys(text.lower().split()):
                if "<unk>" not in word:
                    self.ids[word].append(i)

    @classmethod
    def from_pool(cls, pool):
        return cls((i, pool.text(i)) for i in pool.ids())

    def find(self, word):
        return list(self.ids.get(word.lower(), ()))


def retrieve(index, word, n, exclude_texts=()):
    """Up to ``n`` ids of sentences holding ``word`` whose text is none of ``exclude_texts``."""
    exclude, found = {t.lower() for t in exclude_texts}, []
    for i in index.ids.get(word.lower(), ()):
        if len(found) == n:
            break
        if index.texts[i].lower() not in exclude:
            found.append(i)
    return found


def translate_retrieved(path, jobs, pool, teacher_path, cfg, make_row, desc):
    """Translate the sentences ``jobs`` (id -> what it was retrieved for) with the teacher
    into ``path``, one row per sentence (``make_row(id, job, source_bpe, teacher_bpe)``), in
    planned chunks that survive a kill (:mod:`.chunks`). Returns the rows of ``path``."""
    if not jobs:
        write_jsonl(path, [])  # the file exists even with nothing to translate
        return []
    teacher = load_translator(teacher_path, pool, cfg.decoding(), choose_device(cfg.cpu))
    tgt_dict = teacher.task.target_dictionary

    def compute(batches):
        hypos = {h.id: h for h in translate(teacher, batches)}
        return [
            make_row(i, jobs[i], pool.bpe(i), tgt_dict.string(hypos[i].body)) for i in sorted(hypos)
        ]

    chunks = plan(teacher, sorted(jobs), cfg.max_tokens, cfg.chunk_size)
    return build_jsonl(path, chunks, cfg.chunk_size, compute, desc)


def group_errors(selected):
    """source word -> {"teacher": corrected words, "origins": source texts, "pieces"}."""
    groups = {}
    for row in selected:
        for error in row["error_words"]:
            word = error["source"].lower()
            group = groups.setdefault(
                word, {"teacher": set(), "origins": set(), "pieces": error["source_pieces"]}
            )
            group["teacher"].add(error["teacher"].lower())
            group["origins"].add(row["source"].lower())
    return groups
