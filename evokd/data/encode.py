"""Encode new text exactly like the training text of a prepared folder."""

from .bpe import Encoder
from .moses import Tokenizer
from .prepare import read_metadata, spm_model_path


class TextEncoder:
    """Raw sentences of one language -> the tokenized, lowercased, BPE'd lines fairseq reads.

    ``encoder.tokenize(line)`` gives the tokenized-BLEU form (``text/*.tok.*``),
    ``encoder(line)`` the BPE'd form (``text/{split}.{lang}``).
    """

    def __init__(self, spm_model, lang, lowercase=True):
        self.tokenizer = Tokenizer(lang, lowercase=lowercase)
        self.bpe = Encoder(spm_model)

    def tokenize(self, line):
        return self.tokenizer(line)

    def __call__(self, line):
        return self.encode_lines([line])[0]

    def encode_lines(self, lines):
        return self.bpe.encode_lines(self.tokenizer(line) for line in lines)


def load_encoder(data_bin, lang):
    """The :class:`TextEncoder` of language ``lang`` for the prepared folder ``data_bin``."""
    metadata = read_metadata(data_bin)
    return TextEncoder(spm_model_path(data_bin), lang, lowercase=metadata.get("lowercase", True))
