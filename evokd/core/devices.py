"""Where training runs and how its processes start: the GPUs or CPU processes of a stage,
and the ``fairseq-train`` / ``torchrun`` command line that starts them (run by
:func:`evokd.processes.run_logged`).

Several machines: set NNODES, NODE_RANK and MASTER_ADDR in the environment (torchrun's
meaning) on each of them.

Several jobs at once on one machine (``evokd chain --jobs N``): :meth:`Devices.split` gives
each job its share, the GPUs divided between the jobs (``CUDA_VISIBLE_DEVICES``), or on a
CPU-only machine the cores (``OMP_NUM_THREADS`` = cores // N), and its own torchrun port.
"""

import contextlib
import logging
import os
import sys
from pathlib import Path

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)


class Devices:
    """Where a stage trains: ``gpus`` 0 is the CPU; N > 1 processes start with torchrun.

    Without CUDA, N > 1 gives N CPU processes (gloo). ``threads``: the threads of each
    process (``OMP_NUM_THREADS``; default: torch's); ``visible``: the GPU ids this job may use
    (``CUDA_VISIBLE_DEVICES``; default: all).
    """

    def __init__(self, gpus=None, master_port=29500, environ=None, threads=None, visible=None):
        import torch

        env = os.environ if environ is None else environ
        self.cuda = torch.cuda.is_available() and gpus != 0
        if gpus is None:
            gpus = len(visible) if visible else torch.cuda.device_count() if self.cuda else 1
        self.procs = max(1, gpus)
        self.threads = threads
        self.visible = list(visible) if visible else None
        self.gpus_asked = gpus
        self.nnodes = int(env.get("NNODES", "1"))
        self.node_rank = int(env.get("NODE_RANK", "0"))
        self.master_addr = env.get("MASTER_ADDR")
        self.master_port = master_port
        self.environ = environ

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
        threads = (
            f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""
        )
        plural = "es" if not self.cuda and self.procs > 1 else ""
        return f"{self.procs} {kind}{plural}{nodes}{threads}"

    def environment(self):
        """The variables that confine a job to its share: {} for the whole machine."""
        env = {}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if self.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.visible)
        return env

    def split(self, jobs):
        """One :class:`Devices` per job slot for ``jobs`` jobs at once: the GPUs divided
        between them (a job gets ``gpus`` of its own when given, else an equal share), or
        on the CPU ``threads`` (default: cores // jobs) per process. One job: this one."""
        if jobs <= 1:
            return [self]
        ports = [self.master_port + 1 + i for i in range(jobs)]
        if self.cuda:
            ids = self.visible or list(range(self._device_count()))
            each = self.gpus_asked if self.gpus_asked else len(ids) // jobs
            if each < 1 or each * jobs > len(ids):
                raise EvokdError(
                    f"--jobs {jobs} with {each or 1} GPU(s) each needs {jobs * max(each, 1)} "
                    f"GPUs; {len(ids)} visible: run fewer jobs at once"
                )
            return [
                Devices(each, port, self.environ, self.threads, ids[i * each : (i + 1) * each])
                for i, port in enumerate(ports)
            ]
        threads = self.threads or max(1, (os.cpu_count() or 1) // (jobs * self.procs))
        procs = self.procs if self.procs > 1 else 0
        return [Devices(procs, port, self.environ, threads) for port in ports]

    @staticmethod
    def _device_count():
        import torch

        return torch.cuda.device_count()

    def launcher(self):
        """The command that starts fairseq-train in every process (behind ``env VAR=...``
        when the job has a share of the machine)."""
        prefix = ["env"] + [f"{k}={v}" for k, v in self.environment().items()]
        prefix = prefix if len(prefix) > 1 else []
        if self.world_size == 1:
            return prefix + [script("fairseq-train")]
        cmd = prefix + [script("torchrun"), "--nproc-per-node", str(self.procs)]
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


@contextlib.contextmanager
def torch_threads(threads):
    """``torch.set_num_threads(threads)`` for in-process work, then restore."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def script(name):
    """A console script of this environment, else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name
