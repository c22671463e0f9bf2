"""Beam search settings, named and defaulting as fairseq-generate's flags: what every evokd
command that translates takes. Free of torch, so that the command-line parsers can show
these defaults without loading it."""

import math
from dataclasses import dataclass
from typing import Optional

from evokd.errors import EvokdError, check_number

# The decoding defaults of every evokd command that translates: fairseq-generate's own.
DECODING = {"beam": 5, "lenpen": 1.0, "max_len_a": 0.0, "max_len_b": 200, "max_tokens": 8000}


@dataclass(frozen=True)
class Decoding:
    """Beam search settings, named and defaulting as fairseq-generate's flags
    (:data:`DECODING`): ``max_tokens`` per batch (8000 unless ``batch_size`` is given),
    output length at most ``max_len_a * source length + max_len_b``; ``cpu``: also
    where there is a GPU."""

    beam: int = DECODING["beam"]
    lenpen: float = DECODING["lenpen"]
    max_tokens: Optional[int] = None
    batch_size: Optional[int] = None
    max_len_a: float = DECODING["max_len_a"]
    max_len_b: int = DECODING["max_len_b"]
    cpu: bool = False

    def check(self):
        """Fail naming the flag of the first setting out of range."""
        check_number(self.beam, "--beam", 1)
        if not (isinstance(self.lenpen, (int, float)) and math.isfinite(self.lenpen)):
            raise EvokdError(f"--lenpen {self.lenpen}: expected a finite number")
        check_number(self.max_tokens, "--max-tokens", 1)
        check_number(self.batch_size, "--batch-size", 1)
        check_number(self.max_len_a, "--max-len-a", 0, kind=float)
        check_number(self.max_len_b, "--max-len-b", 1)
        if self.max_tokens is not None and self.batch_size is not None:
            raise EvokdError("--max-tokens and --batch-size: give one or the other")
        return self

    def fairseq_args(self):
        """The fairseq-generate flags of these settings (``--cpu`` on the CPU)."""
        import torch

        args = ["--beam", str(self.beam), "--lenpen", str(self.lenpen)]
        args += ["--max-len-a", str(self.max_len_a), "--max-len-b", str(self.max_len_b)]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        else:
            args += ["--max-tokens", str(self.max_tokens or DECODING["max_tokens"])]
        if self.cpu or not torch.cuda.is_available():
            args.append("--cpu")
        return args
