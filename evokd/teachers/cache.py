"""A teacher cache, read: the teacher's top-K predictions for every target token.

Under teacher forcing on the reference, an eval-mode teacher's output for a training pair
never changes, so word-level KD need not run the teacher at every update: ``evokd
cache-teacher`` (:mod:`evokd.distill.cache`) runs it once over a subset and stores, per
target token, the ids and log-probabilities (fp16) of its K most likely tokens and the
log-probability of the reference token, in fairseq's memory-mapped indexed-dataset format::

    DIR/cache.json                  K, sizes, the fingerprint (teacher, data, K) and the
                                    sha256 of every other file (``payload_sha256``)
    DIR/topk_index.{bin,idx}        item j: T_j x K token ids
    DIR/topk_lprobs.{bin,idx}       item j: T_j x K log-probabilities (fp16 bit patterns)
    DIR/target_lprobs.{bin,idx}     item j: T_j log-probabilities of the reference tokens
    DIR/order.npy                   example id -> item j

Bytes per target token: 4K + 2 with a vocabulary under 65,536 (2-byte ids), else 6K + 2.
:class:`TeacherCache` gives the task one batch's cached output as a :class:`TeacherOutput`;
opening a cache verifies it (:func:`verify`): every file against the sha256 recorded when
it was built (about 1 s per GB, read once at start), every token id inside the vocabulary,
and the index: an example missing or held twice is refused.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from evokd.core.build import check_complete
from evokd.data.folder import data_digest
from evokd.errors import EvokdError
from evokd.files import PAYLOAD, file_digest, read_json, verify_payload
from evokd.teachers.live import TeacherOutput

logger = logging.getLogger(__name__)

FORMAT = "evokd-teacher-cache/1"
META = "cache.json"
PARTS = ("topk_index", "topk_lprobs", "target_lprobs")
DTYPES = {"topk_lprobs": np.int16, "target_lprobs": np.int16}  # fp16 bit patterns
REBUILD = "remove it and rebuild it with evokd cache-teacher"


def id_dtype(vocab_size):
    return np.uint16 if vocab_size < 65536 else np.int32


def dtypes(vocab_size):
    """The storage type of every part, for a target vocabulary of ``vocab_size``."""
    return {"topk_index": id_dtype(vocab_size), **DTYPES}


def bytes_per_token(k, vocab_size):
    return k * (np.dtype(id_dtype(vocab_size)).itemsize + 2) + 2


def verify(path, where=None):
    """The metadata of the finished cache ``path``, after checking every file against the
    digests recorded when it was built and every token id against the vocabulary (also in a
    cache recorded without digests). A damaged cache is an error naming the file."""
    path = Path(path)
    where = where or f"--teacher-cache {path}"
    if not (path / META).is_file():
        partial = Path(f"{path}.partial")
        hint = (
            f" ({partial} is an unfinished build: rerun evokd cache-teacher)"
            if partial.exists()
            else ""
        )
        raise EvokdError(f"{where}: not a finished teacher cache (no {META}){hint}")
    meta = read_json(path / META)
    if meta.get("format") != FORMAT:
        raise EvokdError(f"{where}: unknown format {meta.get('format')!r}")
    if PAYLOAD in meta:
        verify_payload(where, path, meta[PAYLOAD], REBUILD)
    else:
        logger.warning("%s: built without checksums, its contents are not verified; %s to "
                       "have them", where, REBUILD)  # fmt: skip
    check_ids(where, path, int(meta["vocab_size"]))
    return meta


def check_ids(where, path, vocab_size):
    """Every cached token id in 0..vocab_size-1 (one pass over ``topk_index.bin``)."""
    bin_path = Path(path) / "topk_index.bin"
    if not bin_path.is_file():
        raise EvokdError(f"{where}: {bin_path} is missing; {REBUILD}")
    if bin_path.stat().st_size == 0:
        return
    ids = np.memmap(bin_path, dtype=id_dtype(vocab_size), mode="r")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise EvokdError(
            f"{where}: {bin_path} holds token ids from {low} to {high}, outside the target "
            f"vocabulary (0..{vocab_size - 1}): the cache is damaged; {REBUILD}"
        )


class TeacherCache:
    """Read access to a finished cache, verified when opened (:func:`verify`); the output of
    one batch as a TeacherOutput."""

    def __init__(self, path, pad=1):
        from fairseq.data.indexed_dataset import MMapIndexedDataset

        self.path = Path(path)
        self.pad = pad
        where = f"--teacher-cache {path}"
        self.meta = verify(self.path, where)
        self.k = int(self.meta["fingerprint"]["topk"])
        self.parts = {name: MMapIndexedDataset(str(self.path / name)) for name in PARTS}
        self.order = np.load(self.path / "order.npy")
        n = int(self.meta.get("examples", len(self.order)))
        check_complete(where, self.order, n)  # example -> item: a permutation of 0..n-1
        for name, part in self.parts.items():
            if len(part) != n:
                raise EvokdError(f"{where}: {name} holds {len(part)} items for {n} examples")

    def check(self, teacher_path, data, subset, src, tgt, topk):
        """Fail before training unless the cache fits this teacher, data and --kd-topk."""
        where = f"--teacher-cache {self.path}"
        theirs = self.meta["fingerprint"]
        if theirs["subset"] != subset:
            raise EvokdError(
                f"{where}: holds the {theirs['subset']!r} subset, training uses {subset!r}"
            )
        if theirs["data_sha256"] != data_digest(data, subset, src, tgt):
            raise EvokdError(
                f"{where}: built for other data than {data} ({subset}): rebuild it with "
                "evokd cache-teacher on this data"
            )
        if teacher_path and theirs["teacher_sha256"] != file_digest(teacher_path):
            raise EvokdError(
                f"{where}: built from another teacher than --teacher-path {teacher_path} "
                f"(the cache's: {self.meta.get('teacher')})"
            )
        if topk == 0 or topk > self.k:
            raise EvokdError(
                f"{where}: holds the teacher's top {self.k} tokens, but --kd-topk is {topk}: "
                f"use --kd-topk K with 1 <= K <= {self.k}, or rebuild the cache with a larger "
                "--topk"
            )

    def __call__(self, sample, student):
        ref = next(student.parameters())
        target = sample["target"]  # B x T, right-padded
        bsz, tlen = target.shape
        index = torch.zeros(bsz, tlen, self.k, dtype=torch.long)
        lprobs = torch.zeros(bsz, tlen, self.k, dtype=torch.float16)
        target_lprobs = torch.zeros(bsz, tlen, dtype=torch.float16)
        lengths = target.ne(self.pad).sum(1).tolist()
        for row, example in enumerate(sample["id"].tolist()):
            item = int(self.order[example])
            ids = self.parts["topk_index"][item].view(-1, self.k)
            n = ids.size(0)
            if n != lengths[row]:
                raise EvokdError(
                    f"--teacher-cache {self.path}: example {example} has {n} cached positions "
                    f"but {lengths[row]} target tokens: the cache does not fit this data"
                )
            index[row, :n] = ids
            lprobs[row, :n] = _half(self.parts["topk_lprobs"][item]).view(-1, self.k)
            target_lprobs[row, :n] = _half(self.parts["target_lprobs"][item])
        return TeacherOutput(
            topk_lprobs=lprobs.to(ref.device),
            topk_index=index.to(ref.device),
            target_lprobs=target_lprobs.to(ref.device),
        )

    def placeholder(self, sample, student):
        """A uniform top-K output shaped like ``sample``'s target (for a batch whose loss
        does not count), without reading the cache."""
        ref = next(student.parameters())
        bsz, tlen = sample["target"].shape
        value = -float(np.log(self.k))
        index = torch.arange(self.k, device=ref.device).expand(bsz, tlen, self.k)
        lprobs = torch.full((bsz, tlen, self.k), value, device=ref.device)
        return TeacherOutput(
            topk_lprobs=lprobs,
            topk_index=index,
            target_lprobs=torch.full((bsz, tlen), value, device=ref.device),
        )


def _half(int_tensor):
    """fp16 values stored as int16 bit patterns (read back by fairseq as int64)."""
    return int_tensor.to(torch.int16).view(torch.float16)
