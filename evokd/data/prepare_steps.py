"""The steps of ``evokd prepare``; each skips itself when its outputs exist.

Every step writes under temporary names and renames its outputs into place when it is
done, so an interrupted run leaves either finished outputs or none (``*.partial`` files
are removed or overwritten).
"""

import json
import logging
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from evokd.errors import EvokdError
from evokd.files import publish
from evokd.processes import run_logged

from . import bpe
from .corpora import SPLITS
from .layout import binarized_files, spm_model_path, text_dir, text_path
from .moses import Cleaner, Tokenizer
from .textio import atomic_writers, one_line, read_lines, visible

logger = logging.getLogger(__name__)


def _done(paths, step):
    if all(Path(p).exists() for p in paths):
        logger.info("%s: outputs exist, skipped", step)
        return True
    return False


SCREENING = "screening.json"  # what the tokenize step dropped or flagged, per split
REASONS = {
    "empty_side": "a side is empty once invisible characters and spaces are gone: dropped "
    "from train, kept (flagged) in valid and test so they stay whole",
    "cleaned": "dropped from train by the clean-corpus-n.perl rules (--clean)",
    "invisible_characters": "pairs kept with invisible characters removed",
    "too_long": "a side has more BPE tokens (with its end-of-sentence token) than the "
    "models' positions: kept, but fairseq-train skips such training pairs, and "
    "validation or generation on such pairs needs --skip-invalid-size-inputs-valid-test",
}


def _tokenized(corpus, split, tokenizers, cleaner, screen):
    """Yield ``(dest split, tokenized pair, raw pair, invisible characters removed)`` for the
    raw pairs of ``split``, counting what is dropped into ``screen[split]``.

    Raw text is made visible first (:func:`evokd.data.textio.visible`). A training pair with
    an empty side is dropped, the others go through the cleaner; with
    ``corpus.valid_every = n`` every n-th kept training pair goes to ``valid``.
    """
    carve = split == "train" and corpus.valid_every
    kept = 0
    with tqdm(corpus.pairs(split), total=corpus.size(split), desc=f"tokenize {split}") as bar:
        for raw in bar:
            raw, removed = zip(*(visible(line) for line in raw))
            tok = tuple(tokenizers[i].tokenize(line) for i, line in enumerate(raw))
            if split == "train" and not all(t.strip() for t in tok):
                screen[split]["empty_side"] += 1
                continue
            if split == "train" and cleaner:
                tok = cleaner(*tok)
                if tok is None:
                    screen[split]["cleaned"] += 1
                    continue
            kept += 1
            dest = "valid" if carve and kept % corpus.valid_every == 0 else split
            yield dest, tok, raw, sum(removed)


def tokenize_step(corpus, out, clean, train_size, eval_size):
    """Tokenize (and clean) every split into ``{split}.tok.*`` and ``{valid,test}.raw.*``;
    what was dropped or flagged goes to ``text/screening.json`` (see :func:`read_screening`).

    ``train_size``/``eval_size`` keep the first pairs only; reading stops once every split
    that a stream feeds is full.
    """
    langs = (corpus.src, corpus.tgt)
    keys = [(s, lang, kind) for s in SPLITS for kind in ("tok", "raw") for lang in langs]
    keys = [key for key in keys if not (key[0] == "train" and key[2] == "raw")]
    paths = [text_path(out, *key) for key in keys] + [text_dir(out) / SCREENING]
    if _done(paths, "tokenize"):
        return
    tokenizers = [Tokenizer(lang) for lang in langs]
    cleaner = Cleaner(clean) if clean else None
    limits = {"train": train_size, "valid": eval_size, "test": eval_size}
    counts = Counter()
    screen = {split: Counter() for split in SPLITS}

    def full(split):
        return limits[split] is not None and counts[split] >= limits[split]

    with atomic_writers(paths) as files:
        record = files.pop()
        files = dict(zip(keys, files))
        for split in corpus.splits:
            fed = ("train", "valid") if split == "train" and corpus.valid_every else (split,)
            for dest, tok, raw, removed in _tokenized(corpus, split, tokenizers, cleaner, screen):
                if full(dest):
                    if all(full(s) for s in fed):
                        break
                    continue
                counts[dest] += 1
                if removed:
                    screen[dest]["invisible_characters"] += 1
                    screen[dest]["characters_removed"] += removed
                if not all(t.strip() for t in tok):
                    screen[dest]["empty_side"] += 1
                for tokenizer, lang, t, r in zip(tokenizers, langs, tok, raw):
                    files[dest, lang, "tok"].write(tokenizer.finish(t) + "\n")
                    if dest != "train":
                        files[dest, lang, "raw"].write(one_line(r) + "\n")
        if cleaner:
            logger.info("cleaning kept %d of %d training pairs", cleaner.kept, cleaner.seen)
        for split in SPLITS:
            if not counts[split]:
                raise EvokdError(
                    f"the {split} split came out empty"
                    + (" (too few training pairs to carve it from)" if split == "valid" else "")
                    + "; check the inputs, --train-size and --eval-size"
                )
        screened = {s: {k: screen[s][k] for k in (*REASONS, "characters_removed")} for s in SPLITS}
        record.write(json.dumps(screened, indent=1) + "\n")
    logger.info("tokenize: %s pairs", ", ".join(f"{s} {counts[s]}" for s in SPLITS))


def read_screening(out):
    """Per split, what the tokenize step dropped or flagged (keys of :data:`REASONS`, and
    ``characters_removed``)."""
    with open(text_dir(out) / SCREENING, encoding="utf-8") as f:
        return json.load(f)


def too_long(out, src, tgt, max_positions):
    """Per split, the pairs with a side of more than ``max_positions`` BPE tokens, its
    end-of-sentence token included (fairseq's size of a sentence)."""
    found = {}
    for split in SPLITS:
        sides = [read_lines(text_path(out, split, lang)) for lang in (src, tgt)]
        found[split] = sum(
            1 for pair in zip(*sides) if max(len(line.split()) for line in pair) + 1 > max_positions
        )
    return found


def bpe_step(out, src, tgt, vocab_size, threads):
    model = spm_model_path(out)
    if not _done([model, model.with_suffix(".vocab")], "bpe-train"):
        logger.info("learning a joint BPE model (%d pieces)", vocab_size)
        inputs = [text_path(out, "train", lang, "tok") for lang in (src, tgt)]
        bpe.train(inputs, model.with_suffix(""), vocab_size)
    encoder = None
    for split in SPLITS:
        for lang in (src, tgt):
            path = text_path(out, split, lang)
            if path.exists():
                continue
            encoder = encoder or bpe.Encoder(model, threads=threads)
            encoder.encode_file(text_path(out, split, lang, "tok"), path, f"bpe {split}.{lang}")


def binarize_step(out, src, tgt, workers):
    """``fairseq-preprocess --joined-dictionary`` into a temporary folder, then moved in."""
    if _done(binarized_files(out, src, tgt), "binarize"):
        return
    tmp = out / ".binarize.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = {split: str(text_dir(out) / split) for split in SPLITS}
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", src,
           "--target-lang", tgt, "--joined-dictionary", "--trainpref", prefix["train"],
           "--validpref", prefix["valid"], "--testpref", prefix["test"],
           "--destdir", str(tmp), "--workers", str(workers)]  # fmt: skip
    logger.info("binarizing: %s", " ".join(cmd))
    log = out / ".binarize.log"
    code = run_logged(cmd, log, stream=False, mode="w", check=False)
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines:
        if any(key in line for key in (" Dictionary: ", " sents, ")):
            logger.info("fairseq-preprocess: %s", line.split("preprocess:", 1)[-1].strip())
    if code != 0:
        tail = [line.rstrip() for line in lines if line.strip()][-5:]
        raise EvokdError(
            f"fairseq-preprocess failed (exit status {code}): "
            + " / ".join(tail)
            + f"; {out} stays unfinished (its output: {log}), rerun to resume"
        )
    log.unlink()
    for f in tmp.iterdir():
        publish(f, out / f.name)
    tmp.rmdir()


_SUMMARY = re.compile(r"\[(\S+)\] (\S+): (\d+) sents, (\d+) tokens(?:, (\S+)% replaced)?")
_DICT = re.compile(r"\[(\S+)\] Dictionary: (\d+) types")


def parse_preprocess_log(path):
    """Dictionary size and per-file sentence/token counts from fairseq's preprocess.log."""
    stats = {"dictionary_size": None, "files": {}}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if m := _DICT.search(line):
                stats["dictionary_size"] = int(m.group(2))
            elif m := _SUMMARY.search(line):
                stats["files"][Path(m.group(2)).name] = {
                    "sentences": int(m.group(3)),
                    "tokens": int(m.group(4)),
                    "unk_percent": float(m.group(5) or 0),
                }
    return stats
