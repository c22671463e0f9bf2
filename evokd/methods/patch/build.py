"""Step ``build``: the binarized patch training folder ``DIR/data``.

The patch pairs are the selected sources with the teacher's translations, then the kept
synthesis pairs, then the kept analogy pairs (those steps when enabled), deduplicated on
the (source, target) BPE strings, first occurrence kept; pairs with an empty translation
are left out. They are followed by ``round(replay_ratio * patch pairs)`` replay pairs:
real training pairs of DATA drawn with ``numpy.random.default_rng(seed)``, without
replacement while the training set is large enough, else with replacement.

``DIR/data`` holds them as its ``train`` subset (fairseq's mmap format, DATA's file names
and dictionaries) and every other file of DATA unchanged (dictionaries, valid, test); not
DATA's ``text/`` folder: evaluate with ``--data DATA``. ``DIR/patch.jsonl`` lists every
training pair in dataset order. Both are written atomically.
"""

import math
import shutil
from pathlib import Path

import numpy as np

from evokd import files as steps
from evokd.data import remove_bpe
from evokd.data.folder import dictionary_path, language_pair, write_subset
from evokd.errors import EvokdError

from .workspace import read_jsonl, write_jsonl

ORIGINS = ("selected", "synthesis", "analogy")


def patch_pairs(selected, synthesis=(), analogy=()):
    """``[(origin, id, source_bpe, target_bpe)]``: the deduplicated patch pairs, in order."""
    seen, pairs = set(), []
    for origin, rows in zip(ORIGINS, (selected, synthesis, analogy)):
        for row in rows:
            if origin != "selected" and not row["kept"]:
                continue
            key = (row["source_bpe"], row["teacher_bpe"])
            if key in seen or not row["teacher_bpe"].strip():
                continue
            seen.add(key)
            pairs.append((origin, row["id"], *key))
    return pairs


def replay_ids(n_train, n, seed):
    """``n`` training-pair ids drawn with a seeded RNG (with replacement only if needed)."""
    if n == 0 or n_train == 0:
        return []
    rng = np.random.default_rng(seed)
    return rng.choice(n_train, size=n, replace=n > n_train).tolist()


def replay_count(n_patch, ratio):
    return int(math.floor(ratio * n_patch + 0.5))


def write_patch_data(data, dest, pairs, replay, src, tgt):
    """Write the folder ``dest`` (see the module doc); returns the rows of ``patch.jsonl``."""
    from fairseq.data import Dictionary, data_utils

    data = Path(data)
    pair = language_pair(data, "train", src, tgt)
    partial = steps.partial_path(dest)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dicts = {lang: Dictionary.load(str(dictionary_path(data, lang))) for lang in (src, tgt)}
    train = {
        lang: data_utils.load_indexed_dataset(str(data / f"train.{pair}.{lang}"), dicts[lang])
        for lang in (src, tgt)
    }
    rows, items = list(pairs), {src: [], tgt: []}
    for _, _, source_bpe, target_bpe in pairs:
        for lang, line in ((src, source_bpe), (tgt, target_bpe)):
            items[lang].append(dicts[lang].encode_line(line, add_if_not_exist=False))
    for i in replay:
        for lang in (src, tgt):
            items[lang].append(train[lang][i])
        bpe = [dicts[lang].string(train[lang][i]) for lang in (src, tgt)]
        rows.append(("replay", i, *bpe))
    write_subset(data, partial, "train", pair, items)
    return partial, [
        {
            "id": n,
            "origin": origin,
            "from": i,
            "source": remove_bpe(source_bpe),
            "target": remove_bpe(target_bpe),
            "source_bpe": source_bpe,
            "target_bpe": target_bpe,
        }
        for n, (origin, i, source_bpe, target_bpe) in enumerate(rows)
    ]


def run_build(ws, cfg, inputs, src, tgt):
    """Write ``DIR/data`` and ``DIR/patch.jsonl``; returns counts."""
    from .pool import Pool

    selected = read_jsonl(ws.selected)
    synthesis = read_jsonl(ws.synthesis) if cfg.synthesis else []
    analogy = read_jsonl(ws.analogy) if cfg.analogy else []
    pairs = patch_pairs(selected, synthesis, analogy)
    if not pairs:
        raise EvokdError(
            f"build: no patch pairs ({ws.selected} holds {len(selected)} sentences, none "
            "with a non-empty teacher translation): nothing to fine-tune on"
        )
    n_train = len(Pool(inputs["data"], "train", src, tgt))
    replay = replay_ids(n_train, replay_count(len(pairs), cfg.replay_ratio), cfg.seed)
    partial, rows = write_patch_data(inputs["data"], ws.data, pairs, replay, src, tgt)
    write_jsonl(ws.patch, rows)
    if ws.data.exists():
        shutil.rmtree(ws.data)
    steps.publish(partial, ws.data)
    counts = {origin: 0 for origin in (*ORIGINS, "replay")}
    for row in rows:
        counts[row["origin"]] += 1
    return {"patch_pairs": len(pairs), "training_pairs": len(rows), **counts}
