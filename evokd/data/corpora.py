"""Where the raw parallel text of a corpus comes from.

A corpus yields raw (untokenized) sentence pairs per split; :mod:`evokd.data.prepare`
runs the same pipeline on every corpus. The splits are ``train``, ``valid`` and ``test``;
a corpus with ``valid_every = n`` has no valid source: every n-th kept training pair
becomes a valid pair instead (fairseq's IWSLT14 recipe).
"""

import itertools
import re
from pathlib import Path

from evokd.errors import EvokdError

from .textio import check_parallel, read_lines

SPLITS = ("train", "valid", "test")
MULTI30K_DIR = Path(__file__).resolve().parent.parent / "corpora" / "multi30k"
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # ours -> its file names
# Tatoeba's export is one file pair sorted by length: contiguous blocks, test after train
TATOEBA_SPLITS = {"train": (0, 20000), "valid": (20000, 21000), "test": (21000, 22000)}


def check_languages_differ(src, tgt):
    if src == tgt:
        raise EvokdError(f"--src and --tgt are both {src!r}; expected two languages")


class Corpus:
    """Raw sentence pairs of one corpus. Subclasses fill in :meth:`check` and :meth:`pairs`."""

    name = "corpus"
    valid_every = 0  # > 0: valid is every n-th kept training pair, not a split of its own
    default_clean = False
    default_vocab_size = 8000

    def __init__(self, src="de", tgt="en"):
        check_languages_differ(src, tgt)
        self.src, self.tgt = src, tgt

    @property
    def splits(self):
        """The splits this corpus reads itself (``valid`` is missing when carved from train)."""
        return tuple(s for s in SPLITS if not (s == "valid" and self.valid_every))

    def check(self):
        """Fail with an error naming the input unless every split can be read; cheap."""
        raise NotImplementedError

    def size(self, split):
        """Number of raw pairs of ``split`` (after :meth:`check`), for progress bars."""
        raise NotImplementedError

    def pairs(self, split):
        """Yield the raw (source, target) pairs of ``split``."""
        raise NotImplementedError

    def sources(self):
        """A JSON-able description of the inputs, stored in prepare.json."""
        raise NotImplementedError


class FilesCorpus(Corpus):
    """Plain (or gzipped) text files ``{split: (source file, target file)}``."""

    def __init__(self, name, files, src="de", tgt="en", default_vocab_size=8000):
        super().__init__(src, tgt)
        self.name = name
        self.files = {split: (Path(s), Path(t)) for split, (s, t) in files.items()}
        self.default_vocab_size = default_vocab_size
        self._sizes = {}

    def check(self):
        for split in self.splits:
            self._sizes[split] = check_parallel(*self.files[split], split)

    def size(self, split):
        return self._sizes.get(split)

    def pairs(self, split):
        src_path, tgt_path = self.files[split]
        yield from zip(read_lines(src_path), read_lines(tgt_path))

    def sources(self):
        return {s: [str(p.resolve()) for p in self.files[s]] for s in self.splits}


class SlicedCorpus(Corpus):
    """One file pair cut into splits by line ranges ``{split: (start, stop)}`` (0-based,
    stop excluded)."""

    def __init__(self, name, files, ranges, src="de", tgt="en"):
        super().__init__(src, tgt)
        self.name = name
        self.files = tuple(Path(p) for p in files)
        self.ranges = dict(ranges)

    def check(self):
        lines = check_parallel(*self.files, "all")
        stop = max(stop for _, stop in self.ranges.values())
        if lines < stop:
            raise EvokdError(f"{self.files[0]}: {lines} lines; the {self.name} splits need {stop}")

    def size(self, split):
        start, stop = self.ranges[split]
        return stop - start

    def pairs(self, split):
        start, stop = self.ranges[split]
        pairs = zip(read_lines(self.files[0]), read_lines(self.files[1]))
        yield from itertools.islice(pairs, start, stop)

    def sources(self):
        return {
            split: [f"{p.resolve()}:{start + 1}-{stop}" for p in self.files]
            for split, (start, stop) in self.ranges.items()
        }


def recorded_corpus(name, sources, src="de", tgt="en"):
    """The training split as ``prepare.json`` records it (``Corpus.sources()["train"]``):
    its two files, or for a sliced corpus ``PATH:FIRST-LAST`` (1-based line ranges).
    Returns ``(corpus, files)``; the files may be missing (the caller says so)."""
    ranges = [None if Path(p).is_file() else re.fullmatch(r"(.+):(\d+)-(\d+)", p) for p in sources]
    if len(sources) == 2 and all(ranges) and ranges[0].groups()[1:] == ranges[1].groups()[1:]:
        files = [m.group(1) for m in ranges]
        start, stop = int(ranges[0].group(2)) - 1, int(ranges[0].group(3))
        return SlicedCorpus(name, files, {"train": (start, stop)}, src, tgt), files
    return FilesCorpus(name, {"train": sources}, src, tgt), list(sources)


def multi30k(raw_dir=None, src="de", tgt="en"):
    """Multi30k task 1 (shipped gzipped in ``evokd/corpora/multi30k``), or a copy in ``raw_dir``.

    ``raw_dir`` holds ``{train,val,test}.{src,tgt}``; ``val`` becomes our ``valid``.
    """
    check_languages_differ(src, tgt)
    if raw_dir is None:
        if {src, tgt} != {"de", "en"}:
            raise EvokdError(
                f"--src {src} --tgt {tgt}: the shipped Multi30k has only de and en; "
                "pass --raw-dir for other languages"
            )
        folder, ext = MULTI30K_DIR, ".gz"
    else:
        folder, ext = Path(raw_dir), ""
        if not folder.is_dir():
            raise EvokdError(
                f"--raw-dir {raw_dir}: no such folder (expected one holding "
                f"{{train,val,test}}.{{{src},{tgt}}})"
            )
    files = {
        ours: tuple(folder / f"{theirs}.{lang}{ext}" for lang in (src, tgt))
        for ours, theirs in MULTI30K_SPLITS.items()
    }
    return FilesCorpus("multi30k", files, src, tgt, default_vocab_size=8000)


def tatoeba(raw_dir=None, src="de", tgt="en"):
    """Tatoeba (``tatoeba.{src,tgt}`` in ``raw_dir``; the project's shared data holds the
    shortest 50,001 deu-eng pairs, sorted by length): lines 1-20,000 train, the next 1,000
    valid, the next 1,000 test (:data:`TATOEBA_SPLITS`)."""
    check_languages_differ(src, tgt)
    if raw_dir is None or not Path(raw_dir).is_dir():
        raise EvokdError(
            f"--raw-dir {raw_dir}: expected a folder holding tatoeba.{src} and tatoeba.{tgt} "
            "(Tatoeba is not shipped with evokd)"
        )
    files = [Path(raw_dir) / f"tatoeba.{lang}" for lang in (src, tgt)]
    return SlicedCorpus("tatoeba", files, TATOEBA_SPLITS, src, tgt)


def text_corpus(train, valid, test, src="de", tgt="en"):
    """Any corpus given as file prefixes: ``PREFIX.src`` and ``PREFIX.tgt`` per split."""
    prefixes = {"train": train, "valid": valid, "test": test}
    missing = [f"--{split}" for split, prefix in prefixes.items() if not prefix]
    if missing:
        raise EvokdError(
            f"corpus 'text' needs {', '.join(missing)} PREFIX (files PREFIX.{src} and PREFIX.{tgt})"
        )
    files = {
        split: tuple(Path(f"{prefix}.{lang}") for lang in (src, tgt))
        for split, prefix in prefixes.items()
    }
    return FilesCorpus("text", files, src, tgt)
