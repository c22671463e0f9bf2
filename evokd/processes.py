"""Child processes that log and die with their parent: how evokd runs fairseq's programs
(``fairseq-train``, ``torchrun``, ``fairseq-generate``, ``fairseq-preprocess``).

:func:`run_logged` writes the command line, then everything the process prints, into a log
file that ``tail -f`` follows; :func:`run_process` is the one place a process starts, and
:func:`stop_running` stops every process still running (a chain of several jobs, stopped);
:func:`take_lock` holds a stage folder's lock for this process.
"""

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time

from evokd.errors import EvokdError

logger = logging.getLogger(__name__)


def _die_with_parent():
    """Linux: the child dies with its parent, so a rerun never races it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


RUNNING = set()  # the processes run_logged has started and not yet seen end


def stop_running(timeout=10):
    """Stop every process :func:`run_logged` is waiting on (a chain running several jobs,
    stopped): SIGTERM, then SIGKILL after ``timeout`` seconds."""
    procs = list(RUNNING)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_logged(cmd, log_path, stream=True, env=None, mode="a", check=True):
    """Run ``cmd``, its output into ``log_path`` (appended; ``mode`` "w" starts it anew),
    and to stderr if ``stream``; the process dies with this one. ``env``: variables added
    to this process's environment. Returns the exit status; with ``check``, a failure is an
    error naming the log."""
    with open(log_path, mode, encoding="utf-8", buffering=1) as log:  # tail -f shows it live
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        code = run_process([str(c) for c in cmd], log, stream, env or {})
    if check and code != 0:
        raise EvokdError(f"training failed (exit status {code}); see {log_path}")
    return code


def run_process(cmd, log, stream, env):
    """Start ``cmd`` with ``env`` added to the environment; every line it prints goes to the
    open file ``log`` (and to stderr if ``stream``). Returns its exit status."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",  # a byte that is not UTF-8 in a log line is not a failure
        bufsize=1,
        preexec_fn=_die_with_parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    RUNNING.add(proc)
    try:
        for line in proc.stdout:
            if stream:
                sys.stderr.write(line)
            log.write(line)
        return proc.wait()
    finally:
        RUNNING.discard(proc)


LOCK_WAIT = 60  # seconds: a job stopped by Slurm (cancelled, requeued) may still be ending


def take_lock(lock, where, wait=None):
    """Hold ``lock`` (an open file) for this process. Another process holding it may be one
    that is ending (a cancelled or requeued Slurm job lets its processes end first): wait up
    to ``wait`` seconds (:data:`LOCK_WAIT`), then refuse, naming the folder."""
    wait = LOCK_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise EvokdError(
                    f"{where} is being trained by another process (waited {wait:g} s for it to end)"
                ) from exc
            if not said:
                logger.warning(f"{where} is held by another process; waiting up to {wait:g} s")
                said = True
            time.sleep(0.5)
