"""Step ``analogy``: sentences with words related to each error word, translated by the teacher.

Related words are the ``analogy_k`` nearest neighbours (cosine) of the error word in the
teacher's source embedding space (``encoder.embed_tokens.weight``; a word of several BPE
pieces is the mean of its pieces' rows). Only whole words are candidates: not a special
symbol (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, ``madeupword*``), not a piece ending in
``@@``, not a piece that never stands as a whole word in DATA's training source (a
continuation such as ``n`` in ``hunde@@ n``), holding a letter or a digit, and not the
error word itself. The neighbours go to ``DIR/analogy_words.json`` (error word ->
``[[word, cosine], ...]``). Up to ``synth_n`` sentences holding each neighbour are
retrieved like for synthesis (:mod:`.retrieve`, leaving out the error's own sentences) and
translated by the teacher. Filter: a sentence is kept when the teacher translates it at all,
i.e. its translation is not empty and holds no ``<unk>`` (there is no corrected word to look
for: the student's errors were on other words).
"""

import numpy as np
import torch

from evokd.data import remove_bpe
from evokd.files import write_json

from .feedback import is_word
from .pool import Pool, open_pool
from .retrieve import WordIndex, group_errors, retrieve, translate_retrieved
from .workspace import read_jsonl

CONTINUATION = "@@"


def word_candidates(symbols, sentences, nspecial=4):
    """Boolean mask over ``symbols``: the entries that may be analogy words (module doc).

    ``sentences``: token-id sequences of the training source, where whole words are seen.
    """
    cont = np.array([s.endswith(CONTINUATION) for s in symbols], dtype=bool)
    whole = np.zeros(len(symbols), dtype=bool)
    for tokens in sentences:
        tokens = np.asarray(tokens, dtype=np.int64)
        if not len(tokens):
            continue
        starts = np.ones(len(tokens), dtype=bool)
        starts[1:] = ~cont[tokens[:-1]]  # the piece before ends a word
        whole[tokens[starts & ~cont[tokens]]] = True
    usable = np.array([is_word(s) and not s.startswith("madeupword") for s in symbols])
    mask = whole & ~cont & usable
    mask[:nspecial] = False
    return mask


def nearest_words(weight, query_ids, candidates, k, exclude=()):
    """The ``k`` candidate ids nearest (cosine) to the mean of ``weight[query_ids]``, nearest
    first, as ``(id, cosine)``; ``exclude``: ids never returned."""
    weight = torch.as_tensor(weight).float()
    query = weight[list(query_ids)].mean(dim=0, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(weight, query, dim=1)  # V
    allowed = torch.as_tensor(np.asarray(candidates, dtype=bool)).clone()
    for i in exclude:
        allowed[i] = False
    cosine = cosine.masked_fill(~allowed, float("-inf"))
    top = cosine.topk(min(k, int(allowed.sum())))
    return [(int(i), round(float(c), 6)) for c, i in zip(top.values, top.indices)]


def related_words(groups, weight, dictionary, candidates, k):
    """error word -> [[neighbour, cosine], ...]."""
    related = {}
    for word in sorted(groups):
        ids = [dictionary.index(p) for p in groups[word]["pieces"]]
        if all(i == dictionary.unk() for i in ids):
            continue  # no embedding to start from
        exclude = [dictionary.indices[word]] if word in dictionary.indices else []
        found = nearest_words(weight, ids, candidates, k, exclude)
        related[word] = [[dictionary[i], c] for i, c in found]
    return related


def analogy_jobs(groups, related, index, n):
    """id -> {"words": related words it holds, "related_to": their error words}."""
    jobs = {}
    for word in sorted(related):
        for neighbour, _ in related[word]:
            for i in retrieve(index, neighbour, n, groups[word]["origins"]):
                job = jobs.setdefault(i, {"words": [], "related_to": []})
                if neighbour not in job["words"]:
                    job["words"].append(neighbour)
                if word not in job["related_to"]:
                    job["related_to"].append(word)
    return jobs


def translated(teacher):
    """The analogy filter: a non-empty translation without ``<unk>``."""
    return bool(teacher.strip()) and "<unk>" not in teacher


def analogy_row(i, job, source_bpe, teacher_bpe):
    teacher = remove_bpe(teacher_bpe)
    return {
        "id": i,
        "origin": "analogy",
        "source": remove_bpe(source_bpe),
        "teacher": teacher,
        "words": job["words"],
        "related_to": job["related_to"],
        "kept": translated(teacher),
        "source_bpe": source_bpe,
        "teacher_bpe": teacher_bpe,
    }


def run_analogy(ws, cfg, inputs, src, tgt):
    """Write ``analogy_words.json`` and ``analogy.jsonl`` (resumable); returns counts."""
    from evokd.core.checkpoint import load_checkpoint

    groups = group_errors(read_jsonl(ws.selected))
    train = Pool(inputs["data"], "train", src, tgt)
    dictionary = train.dictionary
    weight = load_checkpoint(inputs["teacher"], "--teacher")["model"]["encoder.embed_tokens.weight"]
    sentences = (train.tokens(i).numpy() for i in range(len(train)))
    candidates = word_candidates(dictionary.symbols, sentences, dictionary.nspecial)
    related = related_words(groups, weight, dictionary, candidates, cfg.analogy_k)
    write_json(ws.analogy_words, related)
    pool = open_pool(ws, inputs, "mono", src, tgt)
    jobs = analogy_jobs(groups, related, WordIndex.from_pool(pool), cfg.synth_n)
    rows = translate_retrieved(
        ws.analogy, jobs, pool, inputs["teacher"], cfg, analogy_row, "analogy"
    )
    return {
        "error_words": len(groups),
        "related_words": sum(len(v) for v in related.values()),
        "retrieved": len(rows),
        "kept": sum(r["kept"] for r in rows),
    }
