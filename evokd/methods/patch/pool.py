"""Source sentences to translate or search: a binarized source side.

A pool is the training source of DATA (``train.SRC-TGT.SRC``), or a file of raw source
sentences (``--pool FILE``, ``--mono FILE``) tokenized, lowercased and BPE'd like DATA's
training text (:func:`evokd.data.load_encoder`, so DATA must be a folder made by
``evokd prepare``) and binarized with DATA's dictionaries into ``DIR/pool`` or
``DIR/mono`` (``NAME.SRC-TGT.SRC.{bin,idx}``, ``dict.*.txt``, ``source.json`` naming the
file and its sha256). A sentence's id is its example number in the training data, or its
0-based line number in the file; empty lines are kept as empty examples and skipped.
"""

import logging
import shutil
from pathlib import Path

from evokd import files as steps
from evokd.data.folder import dictionary_path, subset_prefix, write_dataset
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)


class Pool:
    """The source side of one binarized subset, with its text (BPE'd and as words)."""

    def __init__(self, folder, subset, src, tgt, flag="--data"):
        from fairseq.data import Dictionary, data_utils

        self.folder, self.subset, self.src, self.tgt = str(folder), subset, src, tgt
        self.dictionary = Dictionary.load(str(Path(folder) / f"dict.{src}.txt"))
        prefix = subset_prefix(folder, subset, src, tgt, flag)
        self.dataset = data_utils.load_indexed_dataset(str(prefix), self.dictionary)
        self.sizes = self.dataset.sizes  # with EOS

    def __len__(self):
        return len(self.dataset)

    def ids(self):
        """The ids of the non-empty sentences."""
        return [i for i in range(len(self)) if self.sizes[i] > 1]

    def tokens(self, i):
        return self.dataset[i]

    def bpe(self, i):
        return self.dictionary.string(self.dataset[i])

    def text(self, i):
        """The tokenized, lowercased words of sentence ``i`` (BPE removed)."""
        from evokd.data import remove_bpe

        return remove_bpe(self.bpe(i)).lower()


def binarize_text(path, data, dest, subset, src, tgt, flag):
    """Encode the raw source sentences of ``path`` like DATA and binarize them into ``dest``.

    Reuses ``dest`` when it was made from the same file content; a ``dest`` made from
    another file is an error.
    """
    from fairseq.data import Dictionary

    from evokd.data import load_encoder
    from evokd.data.textio import check_file, one_line, read_lines

    check_file(path, f"{flag}: raw {src} sentences, one a line, UTF-8")
    digest, dest = steps.file_digest(path), Path(dest)
    record = dest / "source.json"
    if record.is_file():
        made = steps.read_json(record)
        if made["sha256"] == digest:
            return dest
        raise EvokdError(
            f"{flag} {path}: {dest} was made from {made['file']} with other content "
            f"(sha256 {made['sha256'][:12]}, now {digest[:12]}); remove {dest} to rebuild it"
        )
    try:
        encoder = load_encoder(data, src)
    except EvokdError as exc:
        raise EvokdError(f"{flag} needs the tokenizer and BPE of --data: {exc}") from exc
    lines = encoder.encode_lines(one_line(x) for x in read_lines(path))
    partial = steps.partial_path(dest)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for lang in (src, tgt):
        shutil.copyfile(dictionary_path(data, lang), partial / f"dict.{lang}.txt")
    dictionary = Dictionary.load(str(partial / f"dict.{src}.txt"))
    items = (dictionary.encode_line(line, add_if_not_exist=False) for line in lines)
    write_dataset(partial / f"{subset}.{src}-{tgt}.{src}", items, len(dictionary))
    record = {"file": str(path), "sha256": digest, "lines": len(lines)}
    steps.write_json(partial / "source.json", record)
    steps.publish(partial, dest)
    logger.info("%s: %d sentences encoded like %s -> %s", path, len(lines), data, dest)
    return dest


def open_pool(ws, inputs, which, src, tgt):
    """The pool ``which`` (``pool`` or ``mono``): the file given for it, else DATA's training
    source."""
    path = inputs.get(which)
    if path is None:
        return Pool(inputs["data"], "train", src, tgt)
    dest = ws.pool_dir if which == "pool" else ws.mono_dir
    binarize_text(path, inputs["data"], dest, which, src, tgt, f"--{which}")
    return Pool(dest, which, src, tgt, flag=f"--{which}")
