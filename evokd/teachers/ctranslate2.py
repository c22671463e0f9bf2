"""A CTranslate2 translation model as a text teacher (OPUS-MT, Marian, NLLB, M2M100, ...).

The folder holds ``model.bin`` as CTranslate2's converters write it. Its tokenizer is, in this
order: ``settings.tokenizer`` (a Hugging Face tokenizer folder, or a sentencepiece model used
for both sides), ``source.spm`` and ``target.spm`` beside ``model.bin`` (what OPUS-MT
conversions carry; ``ct2-transformers-converter --copy_files source.spm target.spm``), or a
Hugging Face tokenizer saved in the folder itself. Decoding is beam search on the CPU, or on
the GPU with ``settings.device = "cuda"``; the score is CTranslate2's (the hypothesis's
log-probability, normalised by its length).
"""

import logging
from pathlib import Path

from evokd.errors import EvokdError

from .engine import TextTeacher, engine_translation, folder_digest

logger = logging.getLogger(__name__)

WORD_START = "\u2581"  # sentencepiece's word-start mark
HF_TOKENIZER = ("tokenizer_config.json", "tokenizer.json")


class SentencePieceTokenizer:
    """Source and target sentencepiece models: pieces in, pieces out."""

    def __init__(self, source, target):
        import sentencepiece as spm

        self.source = spm.SentencePieceProcessor(model_file=str(source))
        self.target = spm.SentencePieceProcessor(model_file=str(target))
        self.files = [Path(source), Path(target)]

    def encode(self, line):
        return self.source.encode(line, out_type=str) + ["</s>"]

    def decode(self, pieces):
        # Joined by hand: pieces the target model lacks (a shared vocabulary) read the same.
        pieces = [p for p in pieces if p not in ("</s>", "<pad>", "<s>", "<unk>")]
        return "".join(pieces).replace(WORD_START, " ").strip()


class HuggingFaceTokenizer:
    """A Hugging Face tokenizer folder: pieces with the tokenizer's special tokens."""

    def __init__(self, folder):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.files = sorted(p for p in Path(folder).iterdir() if p.is_file() and "token" in p.name)

    def encode(self, line):
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer.encode(line))

    def decode(self, pieces):
        ids = self.tokenizer.convert_tokens_to_ids(pieces)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def find_tokenizer(folder, given=None):
    """The tokenizer of the CTranslate2 model ``folder`` (see the module doc), or an error
    naming the places looked at."""
    folder = Path(folder)
    if given:
        given = Path(given)
        if given.is_dir():
            return HuggingFaceTokenizer(given)
        if given.is_file():
            return SentencePieceTokenizer(given, given)
        raise EvokdError(f"--teacher-tokenizer {given}: no such file or folder")
    if (folder / "source.spm").is_file() and (folder / "target.spm").is_file():
        return SentencePieceTokenizer(folder / "source.spm", folder / "target.spm")
    if any((folder / name).is_file() for name in HF_TOKENIZER):
        return HuggingFaceTokenizer(folder)
    raise EvokdError(
        f"--teacher {folder}: a CTranslate2 model without its tokenizer: expected source.spm and "
        "target.spm or a Hugging Face tokenizer (tokenizer_config.json) there, or "
        "--teacher-tokenizer PATH"
    )


class CTranslate2Teacher(TextTeacher):
    """A CTranslate2 model folder, decoded with beam search (``settings.beam``)."""

    kind = "ctranslate2"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        import ctranslate2

        self.tokenizer = find_tokenizer(path, settings.tokenizer)
        try:
            self.translator = ctranslate2.Translator(
                str(path), device=settings.device, inter_threads=1
            )
        except (RuntimeError, ValueError) as exc:
            raise EvokdError(f"--teacher {path}: CTranslate2 cannot load it ({exc})") from exc

    def digest(self):
        import hashlib

        digest = hashlib.sha256(folder_digest(self.path).encode())
        for path in self.tokenizer.files:
            digest.update(folder_digest(path).encode())
        return digest.hexdigest()

    def translate_batch(self, sources):
        tokens = [self.tokenizer.encode(line) for line in sources]
        caps = [self.settings.max_tokens(line) for line in sources]
        results = self.translator.translate_batch(
            tokens,
            beam_size=self.settings.beam,
            max_decoding_length=max(caps),
            return_scores=True,
        )
        out = []
        for result, cap in zip(results, caps):
            pieces = result.hypotheses[0]
            cut = len(pieces) >= cap
            text = self.tokenizer.decode(pieces[:cap])
            out.append(engine_translation(text, cut, float(result.scores[0])))
        return out

    def close(self):
        self.translator = None
