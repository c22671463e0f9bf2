"""Fault injection: run an evokd command in a process that SIGKILLs itself at a chosen point
(the n-th call of a named function, before or after it runs), as a crash or an
out-of-memory kill would stop it there.

The process is a fork of the test process: torch, fairseq and evokd are imported already,
and fairseq's one-process programs run inside it as they do in the test process
(``tests.utils.run_process_in_this_one``), so the kill stops them too. Its output goes to a
file, never to the test process's own streams.
"""

import importlib
import os
import signal
import sys
import tempfile
from pathlib import Path


def _killing(real, n, when):
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        hit = calls[0] == n
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper


def fork(argv, out_fd, cwd=None, before=None):
    """``evokd ARGV`` in a fork of the test process, its output into the file descriptor
    ``out_fd``, from ``cwd``, after ``before()``; returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 70
        try:
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            if cwd is not None:
                os.chdir(cwd)
            if before is not None:
                before()
            from evokd import cli

            code = cli.main([str(a) for a in argv])
        except BaseException:  # reported through the exit status
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 70)
    return pid


def killed_run(argv, target, n=1, when="after"):
    """Run ``evokd ARGV`` and kill it at the ``n``-th call of ``target`` ("module:function").

    Asserts that the kill happened (the command did not finish on its own)."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)

    def arm():
        setattr(module, name, _killing(getattr(module, name), n, when))

    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        _, status = os.waitpid(fork(argv, out.fileno(), before=arm), 0)
        out.seek(0)
        text = out.read()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed, f"expected a SIGKILL at {target} #{n}, got status {status}:\n{text[-4000:]}"
    return text


def started(argv, cwd):
    """``evokd ARGV`` from ``cwd`` in a fork of the test process (its output discarded);
    returns its pid, for the test to kill when it chooses (:func:`kill`)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        return fork(argv, devnull, cwd)
    finally:
        os.close(devnull)


def running(pid):
    """Whether the forked command ``pid`` is still running."""
    return os.waitpid(pid, os.WNOHANG) == (0, 0)


def kill(pid):
    """SIGKILL the forked command ``pid`` and wait for it to end."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def killed_then_resumed(argv, target, n, when, out, main, published=False):
    """Kill ``evokd ARGV`` at ``target`` #n, check that OUT is complete (``published``: the
    kill came after the rename that publishes it) or absent, then rerun ARGV in-process with
    ``main``, which must finish (exit 0)."""
    killed_run(argv, target, n, when)
    assert out.exists() == published, out  # complete, or not there
    assert main([str(a) for a in argv]) == 0


def processes_naming(*texts, cwd=None):
    """Ids of the running processes whose command line holds all ``texts`` (and whose working
    folder is ``cwd``, when given)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if cwd is not None and os.readlink(proc / "cwd") != str(cwd):
                continue
        except (OSError, UnicodeDecodeError):
            continue
        if proc.name.isdigit() and all(text in cmdline for text in texts):
            found.append(int(proc.name))
    return found
