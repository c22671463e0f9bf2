"""Parallel corpora for evokd: raw text in, fairseq data-bin out (see :mod:`.prepare`).

Other modules read prepared folders through :func:`read_metadata`, :func:`text_path` and
:func:`spm_model_path`, and encode new text like the training text with :func:`load_encoder`.
"""

from .bpe import remove_bpe
from .corpora import SPLITS, Corpus, multi30k, text_corpus
from .encode import TextEncoder, load_encoder
from .iwslt14 import Iwslt14
from .moses import CleanConfig, Cleaner, Tokenizer
from .prepare import prepare_corpus, read_metadata, spm_model_path, text_dir, text_path

__all__ = [
    "SPLITS",
    "CleanConfig",
    "Cleaner",
    "Corpus",
    "Iwslt14",
    "TextEncoder",
    "Tokenizer",
    "load_encoder",
    "multi30k",
    "prepare_corpus",
    "read_metadata",
    "remove_bpe",
    "spm_model_path",
    "text_corpus",
    "text_dir",
    "text_path",
]
