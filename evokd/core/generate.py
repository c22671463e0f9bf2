"""Stock ``fairseq-generate``, run as a subprocess, and its output parsed: the one place.

``evokd evaluate`` and ``evokd bench-translate`` translate with fairseq-generate, the
reference that in-process translation (:mod:`evokd.core.inference`) is tested against. Its
whole output goes into a log file; from it come the best hypothesis (``H-`` lines, the
first of ``--nbest``) and the reference (``T-`` lines) of every sentence id, BPE removed,
and the summary line ``Translated N sentences (T tokens) in S s (R sentences/s, ...)``,
whose token count includes one end of sentence per hypothesis.
"""

import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from evokd.core.metrics import detokenize, score
from evokd.core.runtime import USER_DIR
from evokd.errors import EvokdError
from evokd.processes import run_logged

logger = logging.getLogger(__name__)

HYPOTHESIS = re.compile(r"^H-(\d+)\t[^\t]*\t(.*)$")
TARGET = re.compile(r"^T-(\d+)\t(.*)$")
SUMMARY = re.compile(
    r"Translated ([\d,]+) sentences (?:\(([\d,]+) tokens\) )?.*in ([\d.]+)s \(([\d.]+) sentences/s"
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Generated:
    """What one fairseq-generate run printed.

    ``seconds`` is fairseq's decoding time (model loading excluded); ``tokens`` its count of
    target tokens, one end of sentence per hypothesis included; None when it printed no
    summary. ``wall_seconds``: the whole run.
    """

    hypotheses: dict = field(default_factory=dict)  # sentence id -> text
    targets: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    sentences: Optional[int] = None
    tokens: Optional[int] = None
    seconds: Optional[float] = None
    sentences_per_second: Optional[float] = None


def parse(lines, wall_seconds=0.0):
    """A :class:`Generated` from the lines of fairseq-generate's output."""
    out = Generated(wall_seconds=wall_seconds)
    for line in lines:
        if m := HYPOTHESIS.match(line):
            out.hypotheses.setdefault(int(m.group(1)), m.group(2))  # the best of --nbest
        elif m := TARGET.match(line):
            out.targets[int(m.group(1))] = m.group(2)
        elif m := SUMMARY.search(line):
            out.sentences, tokens = (int(m.group(1).replace(",", "")), m.group(2))
            out.tokens = int(tokens.replace(",", "")) if tokens else None
            out.seconds, out.sentences_per_second = float(m.group(3)), float(m.group(4))
    return out


def command(checkpoint, data, subset, src, tgt, decoding_args):
    """The fairseq-generate command line; ``decoding_args`` as
    :meth:`evokd.core.decoding.Decoding.fairseq_args` writes them."""
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(data), "--path", str(checkpoint)]
    cmd += ["--user-dir", USER_DIR, "--gen-subset", subset, "--source-lang", src]
    cmd += ["--target-lang", tgt, "--remove-bpe", "--num-workers", "0", "--no-progress-bar"]
    # ve-fairseq drops the last batch when its size is not a multiple of this (8 by default)
    cmd += ["--required-batch-size-multiple", "1"]
    return cmd + list(decoding_args)


def generate(checkpoint, data, subset, src, tgt, decoding_args, log_path, threads=None):
    """Run fairseq-generate, its output into ``log_path``; returns a :class:`Generated`.

    ``threads``: the thread count of its torch (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``
    of the subprocess only); None leaves the environment as it is.
    """
    cmd = command(checkpoint, data, subset, src, tgt, decoding_args)
    logger.info(f"translating {data} {subset} with fairseq-generate; output in {log_path}")
    # Unbuffered, and no loader workers: nothing from stderr lands inside an H- line.
    env = {} if threads is None else {name: str(threads) for name in THREAD_VARIABLES}
    start = time.perf_counter()
    code = run_logged(cmd, log_path, stream=False, env=env, mode="w", check=False)
    wall = round(time.perf_counter() - start, 2)
    with open(log_path, encoding="utf-8", errors="replace") as log:
        lines = log.read().split("\n")
    if code != 0:
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise EvokdError(f"fairseq-generate failed (exit {code}): {last.strip()} (see {log_path})")
    return parse(lines, wall)


def in_order(by_id, n, what, log_path):
    """``by_id[0..n-1]`` as a list, or an error naming the missing ids."""
    missing = [i for i in range(n) if i not in by_id]
    if missing or len(by_id) != n:
        raise EvokdError(
            f"fairseq-generate gave {len(by_id)} {what} for {n} sentences (missing ids "
            f"{', '.join(map(str, missing[:10])) or 'none'}); see {log_path}"
        )
    return [by_id[i] for i in range(n)]


def score_output(out, n, tgt, refs_tok=None, refs_raw=None, log_path="the log"):
    """The hypotheses of sentences ``0..n-1`` of a run scored (:func:`evokd.core.metrics.score`).

    Tokenized BLEU against ``refs_tok``, or against the references fairseq-generate printed
    (``T-`` lines) when None; sacreBLEU and chrF of the detokenized hypotheses against
    ``refs_raw`` when given. Returns (tokenized hypotheses, detokenized hypotheses,
    tokenized references, scores).
    """
    hyps_tok = in_order(out.hypotheses, n, "hypotheses", log_path)
    for refs, what in ((refs_tok, "tokenized"), (refs_raw, "raw")):
        if refs is not None and len(refs) != n:
            raise EvokdError(f"{len(refs)} {what} references for {n} sentences; see {log_path}")
    if refs_tok is None:
        refs_tok = in_order(out.targets, n, "references", log_path)
    hyps_detok = detokenize(hyps_tok, tgt)
    return hyps_tok, hyps_detok, refs_tok, score(hyps_tok, refs_tok, hyps_detok, refs_raw)
