"""Where training runs and how its processes start: the GPUs or CPU processes of a stage,
the ``fairseq-train`` / ``torchrun`` command line that starts them, and a logged child
process that dies with its parent.

Several machines: set NNODES, NODE_RANK and MASTER_ADDR in the environment (torchrun's
meaning) on each of them.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)


class Devices:
    """Where a stage trains: ``gpus`` 0 is the CPU; N > 1 processes start with torchrun.

    Without CUDA, N > 1 gives N CPU processes (gloo).
    """

    def __init__(self, gpus=None, master_port=29500, environ=None):
        import torch

        env = os.environ if environ is None else environ
        self.cuda = torch.cuda.is_available() and gpus != 0
        if gpus is None:
            gpus = torch.cuda.device_count() if self.cuda else 1
        self.procs = max(1, gpus)
        self.nnodes = int(env.get("NNODES", "1"))
        self.node_rank = int(env.get("NODE_RANK", "0"))
        self.master_addr = env.get("MASTER_ADDR")
        self.master_port = master_port

    @property
    def world_size(self):
        return self.procs * self.nnodes

    @property
    def workers(self):
        """Processes of an in-process step (a teacher cache, a translation): one per GPU,
        one on the CPU."""
        return self.procs if self.cuda else 1

    def describe(self):
        kind = "GPU" if self.cuda else "CPU process"
        nodes = f" on each of {self.nnodes} machines" if self.nnodes > 1 else ""
        return f"{self.procs} {kind}{'es' if not self.cuda and self.procs > 1 else ''}{nodes}"

    def launcher(self):
        """The command that starts fairseq-train in every process."""
        if self.world_size == 1:
            return [script("fairseq-train")]
        cmd = [script("torchrun"), "--nproc-per-node", str(self.procs)]
        cmd += ["--master-port", str(self.master_port)]
        if self.nnodes > 1:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
            if self.master_addr:
                cmd += ["--master-addr", self.master_addr]
        return cmd + ["-m", "evokd.train"]

    def flags(self):
        """fairseq-train's device flags for this world."""
        if self.world_size == 1:
            return [] if self.cuda else ["--cpu"]
        flags = ["--distributed-world-size", str(self.world_size)]
        if self.cuda:
            return flags + ["--ddp-backend", "pytorch_ddp"]  # NCCL
        return flags + ["--cpu", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]


def script(name):
    """A console script of this environment, else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _die_with_parent():
    """Linux: the child dies with its parent, so a rerun never races it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_logged(cmd, log_path, stream=True):
    """Run ``cmd``, appending its output to ``log_path`` (and to stderr if ``stream``);
    the process dies with this one. A failure names the log."""
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # tail -f shows it live
        log.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in proc.stdout:
            if stream:
                sys.stderr.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        raise EvokdError(f"training failed (exit status {code}); see {log_path}")
