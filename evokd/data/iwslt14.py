"""IWSLT14 German-English as fairseq's ``examples/translation/prepare-iwslt14.sh`` builds it.

From the ``de-en.tgz`` archive (IWSLT 2014 TED talks; Cettolo et al., 2014):

- training text: ``de-en/train.tags.de-en.{de,en}`` without the lines holding ``<url>``,
  ``<talkid>`` or ``<keywords>``, and with the ``<title>`` and ``<description>`` tags
  (not their text) removed; the pipeline then tokenizes, cleans (ratio 1.5, 1-175 tokens)
  and lowercases it, and every 23rd kept pair becomes a valid pair;
- test: the ``<seg id>`` lines of ``IWSLT14.TED.dev2010``, ``IWSLT14.TEDX.dev2012`` and
  ``IWSLT14.TED.tst2010``-``2012`` (``.de-en.{de,en}.xml``), tags and surrounding spaces
  removed and ``’`` replaced by ``'``, concatenated in that order.
"""

import logging
import os
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from evokd.errors import EvokdError
from evokd.files import publish

from .corpora import Corpus
from .textio import one_line, partial_name

logger = logging.getLogger(__name__)

URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
ARCHIVE_NAME = "de-en.tgz"
TIMEOUT_S = 15  # connecting and each read; an offline machine fails at once anyway
FOLDER = "de-en"
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
VALID_EVERY = 23
DROP_LINES_WITH = ("<url>", "<talkid>", "<keywords>")
REMOVE_TAGS = ("<title>", "</title>", "<description>", "</description>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def default_cache_dir():
    """``$EVOKD_CACHE``, else ``$XDG_CACHE_HOME/evokd``, else ``~/.cache/evokd``."""
    if os.environ.get("EVOKD_CACHE"):
        return Path(os.environ["EVOKD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "evokd"


def _offline_error(url, reason):
    return EvokdError(
        f"cannot download {url} ({reason}). Without internet access: download {ARCHIVE_NAME} "
        f"from {url} on a connected machine, copy it here and pass --archive PATH/{ARCHIVE_NAME}"
    )


def download(cache_dir=None, url=None, timeout=TIMEOUT_S):
    """The cached archive, downloaded first (with a progress bar, atomically) if absent."""
    url = url or URL
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / ARCHIVE_NAME
    if path.is_file():
        logger.info("using the cached %s", path)
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    logger.info("downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=ARCHIVE_NAME) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        publish(tmp, path)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise _offline_error(url, getattr(exc, "reason", None) or exc) from exc
    return path


def _lines(text):
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the final line end
    return lines


def train_lines(text):
    """Training lines of one language as the recipe's grep/sed filters leave them."""
    for line in _lines(text):
        if any(tag in line for tag in DROP_LINES_WITH):
            continue
        for tag in REMOVE_TAGS:
            line = line.replace(tag, "")
        yield line


def seg_lines(xml):
    """The segments of one IWSLT XML file, as the recipe's grep/sed filters leave them."""
    for line in _lines(xml):
        if "<seg id" in line:
            line = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
            yield one_line(line.replace("\u2019", "'"))


def check_languages(src, tgt):
    if {src, tgt} != {"de", "en"}:
        raise EvokdError(f"--src {src} --tgt {tgt}: IWSLT14 here is de-en; expected de and en")


class Iwslt14(Corpus):
    """IWSLT14 de-en from fairseq's ``de-en.tgz``; read whole into memory by :meth:`check`."""

    name = "iwslt14"
    valid_every = VALID_EVERY
    default_clean = True
    default_vocab_size = 10000

    def __init__(self, archive, src="de", tgt="en"):
        super().__init__(src, tgt)
        check_languages(src, tgt)
        self.archive = Path(archive)
        self._pairs = {}

    def _read(self, tar, members, name):
        member = members.get(name)
        if member is None:
            raise EvokdError(
                f"{self.archive}: no {FOLDER}/{name} inside (expected fairseq's IWSLT14 "
                f"{ARCHIVE_NAME} from {URL})"
            )
        data = tar.extractfile(member).read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvokdError(f"{self.archive}: {member.name} is not UTF-8 text") from exc

    def _aligned(self, names, texts, extract):
        """Pairs from the (de, en) member texts; ``names`` are the members, for errors."""
        if self.src != "de":
            names, texts = names[::-1], texts[::-1]
        src_lines, tgt_lines = (list(extract(t)) for t in texts)
        if len(src_lines) != len(tgt_lines):
            raise EvokdError(
                f"{self.archive}: {names[0]} has {len(src_lines)} segments but {names[1]} "
                f"has {len(tgt_lines)}; the two sides must be aligned"
            )
        if not src_lines:
            raise EvokdError(f"{self.archive}: {names[0]} holds no segments")
        return list(zip(src_lines, tgt_lines))

    def check(self):
        if not self.archive.is_file():
            raise EvokdError(f"--archive {self.archive}: no such file (expected {ARCHIVE_NAME})")
        try:
            with tarfile.open(self.archive, "r:*") as tar:
                members = {}
                for m in tar.getmembers():
                    parts = Path(m.name).parts
                    if m.isfile() and len(parts) >= 2 and parts[-2] == FOLDER:
                        members[parts[-1]] = m
                names = [f"train.tags.{FOLDER}.{lang}" for lang in ("de", "en")]
                texts = [self._read(tar, members, name) for name in names]
                self._pairs["train"] = self._aligned(names, texts, train_lines)
                self._pairs["test"] = []
                for test_set in TEST_SETS:
                    names = [f"{test_set}.{FOLDER}.{lang}.xml" for lang in ("de", "en")]
                    texts = [self._read(tar, members, name) for name in names]
                    self._pairs["test"] += self._aligned(names, texts, seg_lines)
        except (tarfile.TarError, OSError, EOFError) as exc:
            reason = " ".join(str(exc).split())  # tarfile's messages span lines
            raise EvokdError(
                f"--archive {self.archive}: not a readable .tgz archive ({reason})"
            ) from exc

    def size(self, split):
        return len(self._pairs[split])

    def pairs(self, split):
        yield from self._pairs[split]

    def sources(self):
        return {"archive": str(self.archive.resolve()), "url": URL}
