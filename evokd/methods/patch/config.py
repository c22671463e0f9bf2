"""The settings of a patch run, checked before any work."""

import math
from dataclasses import dataclass
from typing import Optional

from evokd.core.decoding import DECODING
from evokd.errors import EvokdError

from .select import check_selection


@dataclass
class PatchConfig:
    """Settings of every step (the CLI flags of the same names)."""

    # select
    select: float = 0.1  # fraction of the pool kept, in (0, 1]
    score: str = "both"  # nll | chrf | both
    # synthesize / analogy
    synthesis: bool = True
    synth_n: int = 8  # sentences retrieved per error word (per related word for analogy)
    analogy: bool = True
    analogy_k: int = 3  # related words per error word
    # build
    replay_ratio: float = 1.0  # replay pairs per patch pair
    seed: int = 1
    # train
    plan: str = "tiny"  # its train: and evaluate: sections
    max_epoch: int = 3
    evaluate: bool = True
    train_args: tuple = ()  # extra fairseq-train flags
    # decoding (every translation)
    beam: int = DECODING["beam"]
    lenpen: float = DECODING["lenpen"]
    max_len_a: float = DECODING["max_len_a"]
    max_len_b: int = DECODING["max_len_b"]
    max_tokens: int = DECODING["max_tokens"]
    chunk_size: int = 512  # sentences per chunk of a translating step's JSONL (:mod:`.chunks`)
    cpu: bool = False
    # an LLM teacher (:mod:`.llm`)
    teacher_model: Optional[str] = None  # the served model's name
    teacher_api: str = "chat"  # chat | completions
    prompts: Optional[str] = None  # a folder of prompt files replacing the shipped ones
    llm_samples: int = 4  # new sentences asked per error (per analogy word), at temperature 1
    llm_max_tokens: int = 256  # the length cap of one reply, in the LLM's tokens
    concurrency: int = 4  # server requests at once
    timeout: float = 120.0  # seconds per request
    retries: int = 3  # retries of a failed request (backoff 1, 2, 4, ... s)
    reply_cache: Optional[str] = None  # where every reply is kept (default DIR/replies)

    def decoding(self):
        return {
            "beam": self.beam,
            "lenpen": self.lenpen,
            "max_len_a": self.max_len_a,
            "max_len_b": self.max_len_b,
        }

    def check(self):
        check_selection(self.select, self.score)
        for flag, value, minimum in (
            ("--synth-n", self.synth_n, 1),
            ("--analogy-k", self.analogy_k, 1),
            ("--max-epoch", self.max_epoch, 1),
            ("--beam", self.beam, 1),
            ("--max-len-b", self.max_len_b, 1),
            ("--max-tokens", self.max_tokens, 1),
            ("--chunk-size", self.chunk_size, 1),
            ("--llm-samples", self.llm_samples, 1),
            ("--llm-max-tokens", self.llm_max_tokens, 1),
            ("--concurrency", self.concurrency, 1),
            ("--retries", self.retries, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise EvokdError(f"{flag} {value}: expected a whole number >= {minimum}")
        for flag, value in (("--replay-ratio", self.replay_ratio), ("--max-len-a", self.max_len_a)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise EvokdError(f"{flag} {value}: expected a number >= 0")
        if not (isinstance(self.lenpen, (int, float)) and math.isfinite(self.lenpen)):
            raise EvokdError(f"--lenpen {self.lenpen}: expected a finite number")
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise EvokdError(f"--timeout {self.timeout}: expected seconds > 0")
        if self.teacher_api not in ("chat", "completions"):
            raise EvokdError(f"--teacher-api {self.teacher_api}: expected chat or completions")
        self.train_args = tuple(self.train_args)
