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


def killed_run(argv, target, n=1, when="after"):
    """Run ``evokd ARGV`` and kill it at the ``n``-th call of ``target`` ("module:function").

    Asserts that the kill happened (the command did not finish on its own)."""
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                setattr(module, name, _killing(getattr(module, name), n, when))
                from evokd import cli

                code = cli.main([str(a) for a in argv])
            except BaseException:  # reported through the exit status
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 70)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        text = out.read()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed, f"expected a SIGKILL at {target} #{n}, got status {status}:\n{text[-4000:]}"
    return text


def killed_then_resumed(argv, target, n, when, out, main, published=False):
    """Kill ``evokd ARGV`` at ``target`` #n, check that OUT is complete (``published``: the
    kill came after the rename that publishes it) or absent, then rerun ARGV in-process with
    ``main``, which must finish (exit 0)."""
    killed_run(argv, target, n, when)
    assert out.exists() == published, out  # complete, or not there
    assert main([str(a) for a in argv]) == 0
