"""A fairseq binarized data folder: its file names, languages and dictionaries, and new ones.

fairseq names a subset's files ``{subset}.{src}-{tgt}.{lang}.{bin,idx}`` (or ``tgt-src``,
whichever pair ``fairseq-preprocess`` wrote) next to ``dict.{lang}.txt``. Whether a
checkpoint fits a folder is :func:`evokd.core.checkpoint.check_dictionaries`.
"""

import logging
import os
import shutil
from pathlib import Path

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

EXTENSIONS = ("bin", "idx")


def dictionary_path(data, lang):
    """``dict.{lang}.txt`` of ``data`` (the first folder of a ``:``-separated list)."""
    return Path(str(data).split(os.pathsep)[0]) / f"dict.{lang}.txt"


def subset_files(subset, pair, langs, extensions=EXTENSIONS):
    """The file names of ``subset`` for ``langs``: ``{subset}.{pair}.{lang}.{ext}``."""
    return [f"{subset}.{pair}.{lang}.{ext}" for lang in langs for ext in extensions]


def subsets(data, src, tgt):
    """The subsets of ``data`` that hold a ``src`` side for the pair ``src``/``tgt``."""
    found = set()
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        found |= {p.name.split(".")[0] for p in Path(data).glob(f"*.{pair}.{src}.idx")}
    return sorted(found)


def language_pair(data, subset, src, tgt, flag="--data", shards=True):
    """The file-name pair of ``subset`` in ``data``: ``src-tgt`` or ``tgt-src``.

    With ``shards=False`` a subset split into shards (``{subset}1.*``) is an error.
    """
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        if (Path(data) / f"{subset}.{pair}.{src}.idx").is_file():
            if not shards and (Path(data) / f"{subset}1.{pair}.{src}.idx").is_file():
                raise EvokdError(
                    f"{flag} {data}: {subset} has several shards ({subset}1.{pair}.*), "
                    "which is not supported here"
                )
            return pair
    raise EvokdError(
        f"{flag} {data}: no {subset}.{src}-{tgt}.{src}.idx (expected fairseq binarized data; "
        f"subsets there: {', '.join(subsets(data, src, tgt)) or 'none'})"
    )


def subset_prefix(data, subset, src, tgt, flag="--data"):
    """``data/{subset}.{pair}.{src}``, the prefix of the source side of ``subset``."""
    return Path(data) / f"{subset}.{language_pair(data, subset, src, tgt, flag)}.{src}"


def subset_size(data, subset, src, tgt, flag="--data"):
    """The number of sentences of ``subset``."""
    from fairseq.data import data_utils

    prefix = subset_prefix(data, subset, src, tgt, flag)
    return len(data_utils.load_indexed_dataset(str(prefix), None))


# --- does a checkpoint fit the folder -------------------------------------------------------


def symbols(path):
    """The symbols of a fairseq ``dict.*.txt``, in order (special symbols excluded)."""
    with open(path, encoding="utf-8") as f:
        return [line.split(" ", 1)[0] for line in f]


def dictionary_size(path):
    from fairseq.data import Dictionary

    return len(Dictionary.load(str(path)))


# --- writing folders ------------------------------------------------------------------------


def write_dataset(prefix, items, vocab_size):
    """``prefix.{bin,idx}`` in fairseq's mmap format, byte for byte as fairseq-preprocess
    writes it; each item holds a sentence's token ids followed by EOS."""
    import torch
    from fairseq.data.indexed_dataset import make_builder

    builder = make_builder(f"{prefix}.bin", impl="mmap", vocab_size=vocab_size)
    for tokens in items:
        builder.add_item(torch.as_tensor(tokens))
    builder.finalize(f"{prefix}.idx")


def copy_folder(data, dest, subset, pair, langs, skip=()):
    """Copy the files of ``data`` into the existing folder ``dest``, except ``subset``'s files
    for ``langs`` (to be written anew) and the names in ``skip``; returns the copied names."""
    left_out = set(subset_files(subset, pair, langs)) | set(skip)
    copied = []
    for path in sorted(Path(data).iterdir()):
        if path.is_file() and path.name not in left_out:
            shutil.copyfile(path, Path(dest) / path.name)
            copied.append(path.name)
    return copied


def write_subset(data, dest, subset, pair, columns, skip=()):
    """Fill the existing folder ``dest`` with ``data``'s files and a new ``subset``: ``columns``
    maps each language written anew to its items (token ids with EOS), encoded with
    ``data``'s dictionary of that language."""
    copy_folder(data, dest, subset, pair, list(columns), skip)
    for lang, items in columns.items():
        size = dictionary_size(dictionary_path(data, lang))
        write_dataset(Path(dest) / f"{subset}.{pair}.{lang}", items, size)


def write_folder(data, dest, subset, pair, columns, extra=None, skip=()):
    """The folder ``dest``: :func:`write_subset` and the text files ``extra`` (name -> text),
    built in ``dest.partial`` and renamed, so it appears complete or not at all."""
    from evokd import files as steps

    partial = steps.partial_path(dest)
    if partial.exists():  # an interrupted write: cheap to redo
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_subset(data, partial, subset, pair, columns, skip)
    for name, text in (extra or {}).items():
        (partial / name).write_text(text, encoding="utf-8")
    steps.publish(partial, dest)


def load_side(data, subset, pair, lang):
    """The token ids (with EOS) of one side of ``subset``, as fairseq reads them."""
    from fairseq.data import data_utils

    return data_utils.load_indexed_dataset(str(Path(data) / f"{subset}.{pair}.{lang}"), None)


def data_digest(data, subset, src, tgt):
    """sha256 over the dictionaries and both sides of ``subset`` (each file by name and
    content): what an output built from the folder records, to be checked against later."""
    import hashlib

    from evokd.files import file_digest

    root = Path(str(data).split(os.pathsep)[0])
    digest = hashlib.sha256()
    names = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    names += subset_files(subset, language_pair(root, subset, src, tgt), (src, tgt), ("idx", "bin"))
    for name in names:
        path = root / name
        if not path.is_file():
            raise EvokdError(f"--data {data}: {path} missing (expected fairseq binarized data)")
        digest.update(name.encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()
