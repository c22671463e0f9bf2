"""Line-oriented UTF-8 text files: reading (plain or .gz), checking parallel pairs, atomic writes.

A line ends at ``\\n`` only, as for ``wc -l`` and the Moses scripts; Python's universal
newlines would also split at a lone ``\\r`` and misalign the two sides of a corpus.
"""

import contextlib
import gzip
import os
import re
import unicodedata
from pathlib import Path

from evokd.errors import EvokdError
from evokd.files import publish

# Characters that some line readers (str.splitlines, universal newlines) treat as line
# breaks. Written text never holds them, so every reader sees the same lines.
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text):
    """``text`` with surrounding whitespace removed and inner line breaks made spaces."""
    return _LINE_BREAKS.sub(" ", text).strip()


NORMALIZATION = (
    "Unicode NFC (canonical composition: a letter typed as base + combining mark and its "
    "precomposed form become one; unlike NFKC, compatibility characters such as ligatures, "
    "superscripts and full-width forms keep their meaning and are not rewritten), then "
    "every format character (Unicode category Cf: zero-width space, non-joiner and joiner "
    "U+200B-U+200D, word joiner U+2060, byte-order mark U+FEFF, soft hyphen U+00AD, "
    "direction marks and the like) removed"
)


def visible(text):
    """``text`` in NFC with its format characters (category Cf) removed, and how many were
    removed (see :data:`NORMALIZATION`)."""
    if text.isascii():
        return text, 0
    text = unicodedata.normalize("NFC", text)
    kept = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return kept, len(text) - len(kept)


def _open(path):
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_lines(path):
    """Yield the lines of a UTF-8 file (``.gz`` is decompressed) without their line ends."""
    try:
        with _open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    line = line[:-1]
                yield line[:-1] if line.endswith("\r") else line
    except UnicodeDecodeError as exc:
        raise EvokdError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise EvokdError(f"{path}: cannot read ({exc})") from exc


def count_lines(path):
    return sum(1 for _ in read_lines(path))


def check_file(path, what):
    """Fail, naming ``path``, unless it is a non-empty file; ``what`` says what it should be."""
    path = Path(path)
    if not path.is_file():
        raise EvokdError(f"{path}: no such file (expected {what})")
    if path.stat().st_size == 0:
        raise EvokdError(f"{path}: empty file (expected {what})")


def check_parallel(src_path, tgt_path, split):
    """Check both sides of a split and return their common number of lines."""
    for path in (src_path, tgt_path):
        check_file(path, f"the {split} text, one segment per line, UTF-8")
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise EvokdError(
            f"{split} split: {src_path} has {n_src} lines but {tgt_path} has {n_tgt}; "
            "the two sides must be aligned line by line"
        )
    return n_src


def partial_name(path):
    """Where ``path`` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def atomic_writers(paths):
    """Open every path for writing under a temporary name; rename all into place on success.

    Yields the list of open files. On an exception the temporary files are removed and
    nothing that existed before is changed.
    """
    tmp = [partial_name(p) for p in paths]
    files = []
    try:
        for t in tmp:
            files.append(open(t, "w", encoding="utf-8", newline="\n"))
        yield files
        for f in files:
            f.close()
        for t, p in zip(tmp, paths):
            publish(t, p)
    finally:
        for f in files:
            f.close()
        for t in tmp:
            with contextlib.suppress(FileNotFoundError):
                os.remove(t)


def write_lines(path, lines):
    """Write ``lines`` (no line ends) atomically; returns how many were written."""
    n = 0
    with atomic_writers([path]) as (f,):
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n
