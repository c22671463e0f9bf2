"""Monolingual retrieval: an inverted index over a pool's words, and the teacher translating
what it finds (shared by the synthesis and analogy steps).

The index maps every tokenized, lowercased word (BPE removed; words holding ``<unk>`` left
out) to the ids of the sentences containing it, in pool order. :func:`retrieve` returns
the first ``n`` of them whose text differs from every sentence an error came from (so the
sentence itself, and its duplicates, are never retrieved for its own error).
"""

import logging
from collections import defaultdict

from evokd import steps
from evokd.inference import choose_device

from .translate import load_translator, translate_ids
from .workspace import append_jsonl, read_jsonl

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
    """Translate the sentences ``jobs`` (id -> what it was retrieved for) with the teacher and
    append one row per sentence to ``path`` (``make_row(id, job, source_bpe, teacher_bpe)``),
    skipping the ids already there. Returns the rows of ``path``."""
    from tqdm import tqdm

    append_jsonl(path, [])  # the file exists even with nothing to translate
    done = {row["id"] for row in read_jsonl(path)}
    todo = [i for i in sorted(jobs) if i not in done]
    if done:
        logger.info("%s: %d sentences done earlier, %d to go", desc, len(done), len(todo))
    if todo:
        teacher = load_translator(teacher_path, pool, cfg.decoding(), choose_device(cfg.cpu))
        tgt_dict = teacher.task.target_dictionary
        with tqdm(total=len(todo), desc=desc, unit="sent", dynamic_ncols=True) as bar:
            for ids in steps.cut(todo, cfg.chunk_size):
                hypos = translate_ids(teacher, ids, cfg.max_tokens)
                rows = [
                    make_row(i, jobs[i], pool.bpe(i), tgt_dict.string(hypos[i].body))
                    for i in sorted(hypos)
                ]
                append_jsonl(path, rows)
                bar.update(len(ids))
    return read_jsonl(path)


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
