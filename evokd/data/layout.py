"""Where things are in a folder made by ``evokd prepare`` (see :mod:`evokd.data.prepare`)."""

import json
from pathlib import Path

from evokd.errors import EvokdError

from .corpora import SPLITS

MARKER = ".prepare-incomplete"  # written first, removed last: the run is unfinished
METADATA = "prepare.json"
TEXT_DIR = "text"
_KINDS = {"bpe": "", "tok": ".tok", "raw": ".raw"}


def text_dir(data_bin):
    return Path(data_bin) / TEXT_DIR


def text_path(data_bin, split, lang, kind="bpe"):
    """A text file of a prepared folder; ``kind`` is ``bpe``, ``tok`` or ``raw`` (valid/test)."""
    if split not in SPLITS or kind not in _KINDS or (kind == "raw" and split == "train"):
        raise ValueError(f"no {kind} text for split {split!r}")
    return text_dir(data_bin) / f"{split}{_KINDS[kind]}.{lang}"


def spm_model_path(data_bin):
    return text_dir(data_bin) / "spm.model"


def read_metadata(data_bin):
    """The ``prepare.json`` of a finished preparation, as a dict."""
    path = text_dir(data_bin) / METADATA
    if (Path(data_bin) / MARKER).exists():
        raise EvokdError(f"{data_bin}: preparation unfinished; rerun `evokd prepare` to finish it")
    if not path.is_file():
        raise EvokdError(
            f"{data_bin}: not a folder made by `evokd prepare` (no {TEXT_DIR}/{METADATA})"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_ready(data_bin):
    """A finished ``evokd prepare`` folder, or any binarized folder (dictionaries there) that
    no unfinished preparation is writing."""
    data_bin = Path(data_bin)
    if (data_bin / MARKER).exists():
        return False
    return (text_dir(data_bin) / METADATA).is_file() or any(data_bin.glob("dict.*.txt"))


def binarized_files(data_bin, src, tgt):
    from .folder import subset_files

    out = Path(data_bin)
    files = [out / f"dict.{lang}.txt" for lang in (src, tgt)] + [out / "preprocess.log"]
    for split in SPLITS:
        files += [out / name for name in subset_files(split, f"{src}-{tgt}", (src, tgt))]
    return files


def existing_text(data_bin, split, lang, kind):
    """:func:`text_path` if that file is there, else None (also for a split without such
    text, or a folder not made by ``evokd prepare``): e.g. the raw references of a split
    are ``existing_text(data, "test", tgt, "raw")``."""
    try:
        path = text_path(data_bin, split, lang, kind)
    except ValueError:  # no such kind of file for this split
        return None
    return path if path.is_file() else None
