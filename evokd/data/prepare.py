"""Prepare a parallel corpus for fairseq: tokenize, clean, lowercase, BPE, binarize.

The same steps run for every corpus (:mod:`evokd.data.corpora`, :mod:`evokd.data.iwslt14`):

1. ``tokenize``: invisible characters removed after Unicode NFC
   (:data:`evokd.data.textio.NORMALIZATION` says which and why), sacremoses
   (``tokenizer.perl`` without ``-a``), training pairs with an empty side dropped, cleaning of
   training pairs like ``clean-corpus-n.perl`` when asked, lowercasing;
2. ``bpe-train``: a joint sentencepiece BPE model on the tokenized training text;
3. ``bpe-apply``: every split encoded and written subword-nmt style (``a@@ b@@ c``);
4. ``binarize``: ``fairseq-preprocess --joined-dictionary``.

Layout of the output folder ``<out>`` (other modules rely on it; see :func:`text_path`)::

    <out>/dict.{src,tgt}.txt, {split}.{src}-{tgt}.{lang}.{bin,idx}, preprocess.log
    <out>/text/spm.model, spm.vocab          the BPE model
    <out>/text/{split}.{lang}                BPE'd text that fairseq-preprocess read
    <out>/text/{split}.tok.{lang}            tokenized, lowercased (tokenized-BLEU references)
    <out>/text/{valid,test}.raw.{lang}       raw references (sacreBLEU, chrF), same lines
    <out>/text/screening.json                pairs dropped or flagged by ``tokenize``, per split
    <out>/text/prepare.json                  what was done (:func:`read_metadata`)

``prepare.json`` holds, per split, the pairs dropped or flagged and why (``screening``, the
reasons in ``screening_reasons``): an empty side, cleaning, invisible characters removed,
and pairs too long for the models' positions (``max_positions``, 1024 by default: fairseq's
default for transformer models, kept by the tiny and paper architectures).

A run writes ``<out>/.prepare-incomplete`` first and removes it last. Each step writes
under temporary names and renames its outputs into place, so an interrupted run resumes
where it stopped: steps whose outputs exist are skipped.
"""

import json
import logging
import shutil
from pathlib import Path

from evokd.errors import EvokdError

from . import bpe
from . import prepare_steps as steps
from .corpora import SPLITS
from .layout import (  # noqa: F401  (the public helpers live here too)
    MARKER,
    METADATA,
    binarized_files,
    read_metadata,
    spm_model_path,
    text_dir,
    text_path,
)
from .moses import CleanConfig
from .textio import NORMALIZATION, count_lines, write_lines

logger = logging.getLogger(__name__)


# --- the output folder ----------------------------------------------------------------------


def check_out(out, force=False):
    """What a run would do with ``out``: ``new``, ``resume`` or ``rebuild``; or an error.

    Changes nothing. A finished preparation is an error without ``force``; a non-empty
    folder without our marker is an error even with ``force``.
    """
    out = Path(out)
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise EvokdError(f"--out {out}: exists and is not a folder")
    if (out / MARKER).exists():
        return "rebuild" if force else "resume"
    if (text_dir(out) / METADATA).exists():
        if force:
            return "rebuild"
        raise EvokdError(
            f"--out {out}: a finished preparation exists there; pass --force to rebuild it"
        )
    if any(out.iterdir()):
        raise EvokdError(
            f"--out {out}: folder exists, is not empty and was not made by `evokd prepare` "
            "(no marker); choose another --out or empty it yourself"
        )
    return "new"


def _check_resume(out, settings):
    try:
        with open(out / MARKER, encoding="utf-8") as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = None
    if before != settings:
        diff = sorted(k for k in settings if not before or before.get(k) != settings[k])
        raise EvokdError(
            f"--out {out}: holds an unfinished preparation with other settings "
            f"({', '.join(diff) or 'unreadable marker'}); pass --force to rebuild it"
        )
    logger.info("resuming the unfinished preparation in %s", out)


# --- the whole run -------------------------------------------------------------------------


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("sacremoses", "sentencepiece", "ve-fairseq", "fairseq", "evokd"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _check_count(value, flag, minimum=1):
    if value is not None and (not isinstance(value, int) or value < minimum):
        raise EvokdError(f"{flag} {value}: expected a whole number >= {minimum}")


CORPUS_OPTIONS = ("src", "tgt", "raw_dir", "archive", "cache_dir", "train", "valid", "test")
PREPARE_OPTIONS = (
    "vocab_size", "clean", "train_size", "eval_size", "max_positions", "workers", "force",
)  # fmt: skip
# fairseq's default for transformer models, which the tiny and paper architectures keep
MAX_POSITIONS = 1024


def build_corpus(name, src="de", tgt="en", raw_dir=None, archive=None, cache_dir=None,
                 train=None, valid=None, test=None):  # fmt: skip
    """The corpus ``name`` (multi30k, tatoeba, iwslt14 or text); IWSLT14 is downloaded when no
    ``archive`` is given."""
    from evokd.data import corpora, iwslt14

    if name == "multi30k":
        return corpora.multi30k(raw_dir, src, tgt)
    if name == "tatoeba":
        return corpora.tatoeba(raw_dir, src, tgt)
    if name == "text":
        return corpora.text_corpus(train, valid, test, src, tgt)
    if name != "iwslt14":
        raise EvokdError(f"corpus {name!r}: expected multi30k, tatoeba, iwslt14 or text")
    iwslt14.check_languages(src, tgt)  # before a download
    return iwslt14.Iwslt14(archive or iwslt14.download(cache_dir), src, tgt)


def screening_lines(screening):
    """One line per split that lost or flagged pairs, e.g. ``train: 2 dropped (empty
    side), 1 too long (fairseq-train skips it)``."""
    lines = []
    for split, n in screening.items():
        said = []
        if n.get("empty_side"):
            what = "dropped" if split == "train" else "kept but flagged"
            said.append(f"{n['empty_side']} with an empty side ({what})")
        if n.get("cleaned"):
            said.append(f"{n['cleaned']} dropped by cleaning")
        if n.get("too_long"):
            skip = "fairseq-train skips them" if split == "train" else "kept but flagged"
            said.append(f"{n['too_long']} too long for the models' positions ({skip})")
        if n.get("invisible_characters"):
            said.append(
                f"{n['invisible_characters']} with invisible characters removed "
                f"({n['characters_removed']} characters)"
            )
        if said:
            lines.append(f"{split}: " + ", ".join(said))
    return lines


def _log_screening(screening):
    for line in screening_lines(screening):
        logger.warning("%s", line)


def prepare(name, out, **options):
    """``evokd prepare NAME --out OUT`` as a function: ``options`` are the flags of that
    command with underscores (``train_size=5000``). Returns the metadata."""
    unknown = set(options) - set(CORPUS_OPTIONS) - set(PREPARE_OPTIONS)
    if unknown:
        known = ", ".join(CORPUS_OPTIONS + PREPARE_OPTIONS)
        raise EvokdError(f"prepare: unknown options {sorted(unknown)} (known: {known})")
    check_out(out, options.get("force", False))
    corpus = build_corpus(name, **{k: v for k, v in options.items() if k in CORPUS_OPTIONS})
    return prepare_corpus(corpus, out, **{k: v for k, v in options.items() if k in PREPARE_OPTIONS})


def prepare_corpus(
    corpus,
    out,
    vocab_size=None,
    clean=None,
    train_size=None,
    eval_size=None,
    max_positions=MAX_POSITIONS,
    workers=1,
    force=False,
):
    """Prepare ``corpus`` (a :class:`evokd.data.corpora.Corpus`) into ``out``.

    ``vocab_size``: sentencepiece pieces (default: the corpus's); ``clean``: a
    :class:`CleanConfig`, True for the Moses defaults, False for none, None for the corpus's
    default; ``train_size``/``eval_size``: keep only the first N training / valid and test
    pairs (after cleaning); ``max_positions``: the models' positions (tokens of a side, its
    end-of-sentence token included), above which a pair is reported too long; ``workers``:
    processes for fairseq-preprocess and threads for BPE encoding (the output does not
    depend on it); ``force``: rebuild a finished (or unfinished) preparation.
    Returns the metadata written to ``text/prepare.json``.
    """
    out = Path(out)
    vocab_size = vocab_size or corpus.default_vocab_size
    clean = corpus.default_clean if clean is None else clean
    clean = CleanConfig() if clean is True else (clean or None)
    _check_count(vocab_size, "--vocab-size", minimum=8)
    _check_count(train_size, "--train-size")
    _check_count(eval_size, "--eval-size")
    _check_count(max_positions, "--max-positions", minimum=2)
    _check_count(workers, "--workers")
    state = check_out(out, force)
    corpus.check()
    settings = {
        "corpus": corpus.name,
        "src": corpus.src,
        "tgt": corpus.tgt,
        "sources": corpus.sources(),
        "vocab_size": vocab_size,
        "lowercase": True,
        "normalization": NORMALIZATION,
        "clean": clean.to_dict() if clean else None,
        "valid_every": corpus.valid_every or None,
        "train_size": train_size,
        "eval_size": eval_size,
        "max_positions": max_positions,
    }
    if state == "resume":
        _check_resume(out, settings)
    else:
        if state == "rebuild":
            logger.info("--force: removing %s", out)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_lines(out / MARKER, [json.dumps(settings, indent=1)])
    text_dir(out).mkdir(exist_ok=True)

    steps.tokenize_step(corpus, out, clean, train_size, eval_size)
    steps.bpe_step(out, corpus.src, corpus.tgt, vocab_size, threads=workers)
    steps.binarize_step(out, corpus.src, corpus.tgt, workers)

    pairs = {s: count_lines(text_path(out, s, corpus.src, "tok")) for s in SPLITS}
    screening = steps.read_screening(out)
    for split, n in steps.too_long(out, corpus.src, corpus.tgt, max_positions).items():
        screening[split]["too_long"] = n
    _log_screening(screening)
    metadata = dict(settings)
    metadata.update(
        pairs=pairs,
        screening=screening,
        screening_reasons=steps.REASONS,
        tokenizer="sacremoses MosesTokenizer(lang).tokenize(escape=True), then str.lower()",
        bpe={
            "type": "sentencepiece bpe, joint, written subword-nmt style",
            "continuation": bpe.CONTINUATION,
            "pieces": len(bpe.Encoder(spm_model_path(out))),
            "character_coverage": 1.0,
            "normalization": "identity",
        },
        binarized=steps.parse_preprocess_log(out / "preprocess.log"),
        versions=_versions(),
    )
    write_lines(text_dir(out) / METADATA, [json.dumps(metadata, indent=2, ensure_ascii=False)])
    for stale in text_dir(out).glob("*.partial"):  # left by a killed run
        stale.unlink()
    (out / MARKER).unlink()
    logger.info("prepared %s in %s: %s", corpus.name, out, pairs)
    return metadata
