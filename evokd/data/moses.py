"""Moses-style tokenization and corpus cleaning, in Python.

:class:`Tokenizer` is sacremoses' port of ``tokenizer.perl -l LANG`` (no ``-a``, special
characters escaped), followed by lowercasing like ``lowercase.perl``. :class:`Cleaner`
applies the rules of ``clean-corpus-n.perl -ratio R CORPUS L1 L2 OUT MIN MAX``.
"""

import re
from dataclasses import asdict, dataclass

from evokd.errors import EvokdError


class Tokenizer:
    """``tokenizer.perl -l lang`` (escaping, no aggressive hyphen splitting), then lowercase."""

    def __init__(self, lang, lowercase=True):
        from sacremoses import MosesTokenizer

        self.lang = lang
        self.lowercase = lowercase
        self._moses = MosesTokenizer(lang=lang)

    def tokenize(self, line):
        """Tokenize without lowercasing (cleaning runs between the two, as in the recipe)."""
        return self._moses.tokenize(line, return_str=True, escape=True)

    def finish(self, tokenized):
        return tokenized.lower() if self.lowercase else tokenized

    def __call__(self, line):
        return self.finish(self.tokenize(line))


@dataclass(frozen=True)
class CleanConfig:
    """Settings of ``clean-corpus-n.perl``; the defaults are fairseq's IWSLT14 recipe."""

    ratio: float = 1.5  # drop a pair when one side has more than ratio x the other's tokens
    min_tokens: int = 1  # drop a pair when either side has fewer tokens
    max_tokens: int = 175  # drop a pair when either side has more tokens
    max_word_length: int = 1000  # drop a pair holding a token longer than this (characters)

    def to_dict(self):
        return asdict(self)


_SPACES = re.compile(r"\s+")
_BLANK_FACTOR = re.compile(r"[ |]\|")


class Cleaner:
    """Filter for tokenized sentence pairs with the rules of Moses' ``clean-corpus-n.perl``.

    Calling it with a pair returns the pair with whitespace normalized, or None when the
    script would drop it:

    - runs of whitespace become one space, leading and trailing spaces go; ``|`` is
      deleted unless the first pair contained one (then the corpus counts as factored);
    - a pair with an empty side is dropped;
    - tokens are the space-separated fields; a pair is dropped when either side has fewer
      than ``min_tokens`` or more than ``max_tokens`` tokens, when one side has more than
      ``ratio`` times as many tokens as the other (strictly more: 3 vs 2 passes 1.5), or
      when either side holds a token (factor) longer than ``max_word_length`` characters.
    """

    def __init__(self, config=None):
        self.config = config or CleanConfig()
        self._long_word = re.compile(r"[^\s|]{" + str(self.config.max_word_length + 1) + "}")
        self._factored = None
        self.seen = 0
        self.kept = 0

    def _normalize(self, line):
        if not self._factored:
            line = line.replace("|", "")
        line = _SPACES.sub(" ", line)
        if line.startswith(" "):
            line = line[1:]
        if line.endswith(" "):
            line = line[:-1]
        return line

    def __call__(self, src, tgt):
        self.seen += 1
        if self._factored is None:
            self._factored = "|" in src or "|" in tgt
        src, tgt = self._normalize(src), self._normalize(tgt)
        if not src or not tgt:
            return None
        cfg = self.config
        n_src, n_tgt = len(src.split(" ")), len(tgt.split(" "))
        if max(n_src, n_tgt) > cfg.max_tokens or min(n_src, n_tgt) < cfg.min_tokens:
            return None
        if n_tgt / n_src > cfg.ratio or n_src / n_tgt > cfg.ratio:
            return None
        if self._long_word.search(src) or self._long_word.search(tgt):
            return None
        if self._factored and (_BLANK_FACTOR.search(src) or _BLANK_FACTOR.search(tgt)):
            raise EvokdError(
                f"training pair {self.seen}: a blank factor ('||' or ' |') in a factored "
                "corpus; clean-corpus-n.perl stops on this too"
            )
        self.kept += 1
        return src, tgt
