"""A lexical shortlist of a student: for each source piece, the target pieces that may follow.

Marian's ``lex.s2t`` shortlists (L'Hostis et al. 2016; Shi and Knight 2017) restrict the
output layer of a decoding step to the target pieces that the sentence's source pieces
translate into, plus the most frequent target pieces: the output projection, the largest
cost of a small decoder, shrinks from the whole vocabulary to a few hundred rows.
CTranslate2 reads such a map as ``vmap.txt`` in the model folder and uses it when
translating with ``use_vmap=True``. Each line is a source token, a tab, and its target
tokens separated by spaces; the line whose source is empty lists the targets that are
always candidates (CTranslate2's ``VocabularyMap``). CTranslate2 takes the union of the
entries of every source token in the batch, so a batch shares one candidate set.

What a source piece translates into is scored with the Dice coefficient over the
sentence pairs (Smadja et al. 1996; Och and Ney 2003 use it as the heuristic alignment
baseline): ``dice(s, t) = 2 c(s, t) / (c(s) + c(t))``, where ``c(s)`` and ``c(t)`` count
the pairs whose source holds ``s`` and whose target holds ``t``, and ``c(s, t)`` the pairs
holding both. Each source piece keeps its ``best`` targets by Dice (ties: more pairs
together first, then the lower dictionary id), and the ``frequent`` most frequent target
pieces (by occurrences; ties by id) are always candidates, like Marian's ``lex.50.50``.
Why a statistic and not an aligner: eflomal installs from PyPI and aligns a small corpus
in seconds, but it samples from ``/dev/urandom`` with no seed, so two maps built from the
same pairs differ; the statistic is exact, needs nothing beyond numpy, and gives the same
file every time. On a distilled corpus (one translation per source, the teacher's) the
co-occurrence of a piece and its translation is high, which is what Dice rewards.

Special symbols (``<s>``, ``<pad>``, ``</s>``, ``<unk>``) are neither keys nor targets:
CTranslate2 always keeps them. The coverage of a shortlist is the share of reference
target pieces (end of sentence excluded) that the candidate set of their sentence holds,
measured on the folder's ``valid`` pairs when there are some (held out), else on the pairs
it was built from.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

VMAP = "vmap.txt"  # CTranslate2's name for the vocabulary map of a model folder
BEST = 50
FREQUENT = 50
METHOD = "dice"


@dataclass
class Shortlist:
    """A built shortlist: ``entries`` maps a source token to its target tokens (best
    first), ``frequent`` the target tokens always allowed; ``info`` says how it was made."""

    entries: dict
    frequent: list
    info: dict = field(default_factory=dict)

    def candidates(self, source_tokens):
        """The target tokens allowed when translating ``source_tokens``."""
        allowed = set(self.frequent)
        for token in source_tokens:
            allowed.update(self.entries.get(token, ()))
        return allowed

    def vmap_text(self):
        """The map as CTranslate2 reads it: the always-allowed line first, then one line
        per source token, in dictionary order."""
        lines = ["\t" + " ".join(self.frequent)]
        lines += [f"{s}\t{' '.join(targets)}" for s, targets in self.entries.items()]
        return "".join(line + "\n" for line in lines)


@dataclass(kw_only=True)
class ShortlistSpec:
    """How to build a shortlist: from the pairs of ``subset`` of the binarized folder
    ``data``, ``best`` targets per source piece and the ``frequent`` most frequent."""

    data: str
    subset: str = "train"
    best: int = BEST
    frequent: int = FREQUENT

    def build(self, src, tgt):
        return build(self.data, src, tgt, subset=self.subset, best=self.best,
                     frequent=self.frequent)  # fmt: skip


def _pairs(data, subset, src, tgt):
    """(source ids, target ids) of every pair of ``subset``, end of sentence removed."""
    from evokd.data.folder import language_pair, load_side

    pair = language_pair(data, subset, src, tgt, "--shortlist")
    sources, targets = load_side(data, subset, pair, src), load_side(data, subset, pair, tgt)
    return [(sources[k].numpy()[:-1], targets[k].numpy()[:-1]) for k in range(len(sources))]


def _dictionary(data, lang):
    from fairseq.data import Dictionary

    from evokd.data.folder import dictionary_path

    path = dictionary_path(data, lang)
    if not path.is_file():
        raise EvokdError(f"--shortlist {data}: no {path.name} (expected a fairseq data-bin folder)")
    return Dictionary.load(str(path))


def dice_table(pairs, nspecial):
    """Per source id, its (target id, dice, pairs together) with ``c(s, t) > 0``, sorted
    best first; the ids below ``nspecial`` left out. Returns a dict of arrays."""
    import numpy as np

    src_sets = [np.unique(s[s >= nspecial]) for s, _ in pairs]
    tgt_sets = [np.unique(t[t >= nspecial]) for _, t in pairs]
    width = 1 + max([int(t.max()) for t in tgt_sets if len(t)] + [0])
    keys = [np.add.outer(s * width, t).ravel() for s, t in zip(src_sets, tgt_sets)]
    keys, together = np.unique(np.concatenate(keys + [np.zeros(0, np.int64)]), return_counts=True)
    s_ids, t_ids = keys // width, keys % width
    df_src = np.bincount(np.concatenate(src_sets + [np.zeros(0, np.int64)]))
    df_tgt = np.bincount(np.concatenate(tgt_sets + [np.zeros(0, np.int64)]), minlength=width)
    dice = 2 * together / (df_src[s_ids] + df_tgt[t_ids])
    order = np.lexsort((t_ids, -together, -dice, s_ids))
    s_ids, t_ids, dice, together = s_ids[order], t_ids[order], dice[order], together[order]
    starts = np.flatnonzero(np.r_[True, s_ids[1:] != s_ids[:-1]]) if len(s_ids) else []
    ends = list(starts[1:]) + [len(s_ids)]
    return {int(s_ids[a]): (t_ids[a:b], dice[a:b], together[a:b]) for a, b in zip(starts, ends)}


def most_frequent(pairs, nspecial, n):
    """The ``n`` most frequent target ids (occurrences; ties: lower id first)."""
    import numpy as np

    counts = np.bincount(np.concatenate([t for _, t in pairs] + [np.zeros(0, np.int64)]))
    ids = [i for i in np.lexsort((np.arange(len(counts)), -counts)) if i >= nspecial]
    return [int(i) for i in ids if counts[i] > 0][:n]


def build(data, src, tgt, *, subset="train", best=BEST, frequent=FREQUENT):
    """The shortlist of the pairs of ``subset`` in the binarized folder ``data``."""
    from evokd.data.folder import subsets
    from evokd.errors import check_number

    check_number(best, "--shortlist-best", 1)
    check_number(frequent, "--shortlist-frequent", 0)
    src_dict, tgt_dict = _dictionary(data, src), _dictionary(data, tgt)
    pairs = _pairs(data, subset, src, tgt)
    table = dice_table(pairs, max(src_dict.nspecial, tgt_dict.nspecial))
    entries = {
        src_dict[s]: [tgt_dict[int(t)] for t in targets[:best]]
        for s, (targets, _, _) in sorted(table.items())
    }
    common = [tgt_dict[i] for i in most_frequent(pairs, tgt_dict.nspecial, frequent)]
    shortlist = Shortlist(entries, common)
    held_out = "valid" if "valid" in subsets(data, src, tgt) and subset != "valid" else subset
    measured = pairs if held_out == subset else _pairs(data, held_out, src, tgt)
    shortlist.info = {
        "data": str(Path(data).resolve()),
        "subset": subset,
        "pairs": len(pairs),
        "method": METHOD,
        "best": best,
        "frequent": frequent,
        "source_entries": len(entries),
        "coverage": round(float(coverage(shortlist, measured, src_dict, tgt_dict)), 4),
        "coverage_subset": held_out,
    }
    logger.info(
        f"shortlist of {data} ({subset}, {len(pairs)} pairs, {best} best + {frequent} "
        f"frequent): coverage {shortlist.info['coverage']:.2%} on {held_out}"
    )
    return shortlist


def coverage(shortlist, pairs, src_dict, tgt_dict):
    """The share of target pieces of ``pairs`` (ids, no end of sentence) that the candidates
    of their sentence hold (CTranslate2 always allows the special symbols)."""
    covered = total = 0
    for source, target in pairs:
        allowed = shortlist.candidates(src_dict[int(i)] for i in source)
        tokens = [tgt_dict[int(i)] for i in target]
        covered += sum(t in allowed or i < tgt_dict.nspecial for t, i in zip(tokens, target))
        total += len(tokens)
    return covered / total if total else 1.0


def check_same_dictionaries(shortlist_data, model_data, langs):
    """The shortlist's folder must hold the model's dictionaries, symbol for symbol."""
    from evokd.data.folder import dictionary_path, symbols

    for lang in langs:
        ours, theirs = dictionary_path(shortlist_data, lang), dictionary_path(model_data, lang)
        if not ours.is_file():
            raise EvokdError(f"--shortlist {shortlist_data}: no {ours.name}")
        if symbols(ours) != symbols(theirs):
            raise EvokdError(
                f"--shortlist {shortlist_data}: its dictionary {ours} ({len(symbols(ours))} "
                f"symbols) differs from the model's {theirs} ({len(symbols(theirs))} symbols); "
                "build the shortlist from pairs binarized with the model's dictionaries"
            )


def _vocabulary(model_dir, side):
    """The tokens of a CTranslate2 model's ``side`` (source or target) vocabulary, and the
    file they were read from."""
    model_dir = Path(model_dir)
    for stem in (f"{side}_vocabulary", "shared_vocabulary"):
        for ext, read in (("json", json.loads), ("txt", lambda t: t.split("\n")[:-1])):
            path = model_dir / f"{stem}.{ext}"
            if path.is_file():
                return set(read(path.read_text(encoding="utf-8"))), path
    raise EvokdError(f"{model_dir}: no {side} vocabulary (not a CTranslate2 model folder?)")


def read_vmap(path):
    """``{source token: [target tokens]}`` of a ``vmap.txt`` (the always-allowed under ``""``)."""
    entries = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, targets = line.rstrip("\n").partition("\t")
            entries[key] = targets.split(" ") if targets else []
    return entries


def check_model(model_dir):
    """Whether ``model_dir`` has a shortlist; an error naming both files when a token of its
    ``vmap.txt`` is not in the model's vocabularies (CTranslate2 would read it as ``<unk>``)."""
    vmap = Path(model_dir) / VMAP
    if not vmap.is_file():
        return False
    entries = read_vmap(vmap)
    for side, tokens in (
        ("source", {k for k in entries if k}),
        ("target", {t for targets in entries.values() for t in targets}),
    ):
        vocabulary, path = _vocabulary(model_dir, side)
        unknown = sorted(tokens - vocabulary)
        if unknown:
            raise EvokdError(
                f"{vmap}: {len(unknown)} {side} tokens are not in the model's vocabulary "
                f"{path} (e.g. {', '.join(unknown[:5])}): the map was built for another "
                "vocabulary; export the model again with --shortlist"
            )
    return True
