"""A one-node Slurm cluster for the tests: munged, slurmctld and slurmd of Debian's
``slurm-wlm`` and ``munge`` packages on 127.0.0.1, their key, state, spool and logs in one
temporary folder. ``SLURM_CONF`` in the environment points Slurm's commands at it.
A requeued job starts again after ``cred_expire`` (5 s here, 120 s by default).

    with Cluster(folder) as cluster:   # starts in a few seconds
        subprocess.run(["sbatch", ...], env=cluster.env)
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def which(name):
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def missing():
    """The binaries this machine lacks (``apt-get install slurm-wlm munge`` brings them)."""
    return [name for name in BINARIES if not which(name)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """\
ClusterName=evokdtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname={hostname} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class Cluster:
    """Start (``start``) and stop (``stop``) the cluster in ``root``; ``env`` is the
    environment Slurm's commands need. ``cpus``: the node's CPUs (each job takes one)."""

    def __init__(self, root, cpus=4):
        self.root = Path(root)
        self.cpus = cpus
        self.procs = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}
        self.env["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])

    def start(self, timeout=30):
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "munge").chmod(0o700)
        config = CONFIG.format(
            root=root, ctld_port=free_port(), slurmd_port=free_port(),
            hostname=socket.gethostname(), cpus=self.cpus,
        )  # fmt: skip
        (root / "slurm.conf").write_text(config)
        self._daemon(
            "munged", "--force", "--foreground", f"--key-file={key}",
            f"--socket={root}/munge.socket", f"--pid-file={root}/munge/munged.pid",
            f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed",
        )  # fmt: skip
        self._wait(lambda: (root / "munge.socket").exists(), timeout, "munged")
        self._daemon("slurmctld", "-D", "-c", "-i")
        self._daemon("slurmd", "-D", "-N", "localhost")
        self._wait(self._node_idle, timeout, "slurmd")
        return self

    def _daemon(self, name, *args):
        log = open(self.root / f"{name}.out", "w")
        self.procs.append(
            subprocess.Popen([which(name), *args], env=self.env, stdout=log, stderr=log)
        )

    def _node_idle(self):
        out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
        return out.startswith("idle") or out.startswith("mix")

    def _wait(self, ready, timeout, what):
        deadline = time.time() + timeout
        while not ready():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what}: a daemon exited; see {self.root}/*.out, *.log")
            if time.time() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout} s; see {self.root}")
            time.sleep(0.3)

    def run(self, *cmd, check=True):
        return subprocess.run(
            [which(cmd[0]) or cmd[0], *cmd[1:]], env=self.env, capture_output=True,
            text=True, check=check,
        )  # fmt: skip

    def wait_idle(self, timeout=120):
        """Until no job is pending or running."""
        deadline = time.time() + timeout
        while self.run("squeue", "-h", "-o", "%i").stdout.strip():
            if time.time() > deadline:
                raise RuntimeError(f"jobs still queued after {timeout} s")
            time.sleep(0.5)

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
