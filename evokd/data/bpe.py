"""Joint sentencepiece BPE, written in subword-nmt style.

sentencepiece marks the start of a word with ``▁``; fairseq's ``--remove-bpe`` (default
``"@@ "``) expects subword-nmt's convention instead, where every piece but the last of a
word ends in ``@@``: the pieces ``▁a b c`` become ``a@@ b@@ c``. Normalization is off
(``identity``) so that removing ``"@@ "`` gives back the tokenized text exactly.

Known limit: a literal ``▁`` (U+2581) in the text reads as a word boundary.
"""

import io
import logging
import os
import re

from tqdm import tqdm

from evokd.errors import EvokdError
from evokd.files import publish

from .textio import partial_name, read_lines, write_lines

logger = logging.getLogger(__name__)

CONTINUATION = "@@"  # what fairseq's --remove-bpe / --post-process subword_nmt removes
WORD_START = "\u2581"
SEED = 1  # sentencepiece's random generator (BPE training draws nothing from it today)
CHUNK = 10000  # lines per batch when encoding


def train(inputs, model_prefix, vocab_size):
    """Learn a joint BPE model on the lines of ``inputs``; writes ``{model_prefix}.{model,vocab}``.

    The model is the same bytes on every run: sentencepiece reads the lines from Python
    (so no input path is stored in it) with one thread (the thread count is stored too).
    Both files appear atomically, the model last.
    """
    import sentencepiece as spm

    def lines():
        for path in inputs:
            yield from read_lines(path)

    model = io.BytesIO()
    spm.set_random_generator_seed(SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            normalization_rule_name="identity",
            input_sentence_size=0,  # all sentences, no sampling
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(exc))
        if needed:
            raise EvokdError(
                f"--vocab-size {vocab_size} is too small for the characters of the training "
                f"text: use at least {needed.group(1)}"
            ) from exc
        raise
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    write_lines(
        f"{model_prefix}.vocab",
        (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}" for i in range(sp.get_piece_size())),
    )
    tmp = partial_name(f"{model_prefix}.model")
    tmp.write_bytes(model.getvalue())
    publish(tmp, f"{model_prefix}.model")


def to_subword_nmt(pieces):
    """sentencepiece pieces -> one line in subword-nmt style (``a@@ b@@ c d``)."""
    words = []
    for piece in pieces:
        if piece.startswith(WORD_START):
            words.append([piece[1:]] if len(piece) > 1 else [])
        elif words:
            words[-1].append(piece)
        else:
            words.append([piece])
    return " ".join((CONTINUATION + " ").join(w) for w in words if w)


def remove_bpe(line):
    """Undo :func:`to_subword_nmt`, as fairseq's ``--remove-bpe`` does."""
    return (line + " ").replace(CONTINUATION + " ", "").rstrip()


class Encoder:
    """A trained sentencepiece model that writes subword-nmt style lines."""

    def __init__(self, model_path, threads=1):
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise EvokdError(f"{model_path}: no such file (expected a sentencepiece model)")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        self.threads = max(1, threads)

    def __len__(self):
        return self.sp.get_piece_size()

    def encode_lines(self, lines):
        pieces = self.sp.encode(list(lines), out_type=str, num_threads=self.threads)
        return [to_subword_nmt(p) for p in pieces]

    def encode_file(self, src, dst, desc=None):
        """Encode every line of ``src`` into ``dst`` (written atomically)."""
        lines = list(read_lines(src))
        out = []
        with tqdm(total=len(lines), desc=desc or f"bpe {src}", unit=" lines") as bar:
            for start in range(0, len(lines), CHUNK):
                out.extend(self.encode_lines(lines[start : start + CHUNK]))
                bar.update(len(out) - bar.n)
        return write_lines(dst, out)
