"""Fault injection: run an evokd command in a subprocess that SIGKILLs itself at a chosen
point (the n-th call of a named function, before or after it runs), as a crash or an
out-of-memory kill would stop it there. fairseq's one-process programs run inside it, as in
the test process (``tests.utils.run_process_in_this_one``): the kill stops them too."""

import json
import signal
import sys
from pathlib import Path

from tests import utils

SCRIPT = r"""
import importlib, json, os, signal, sys
spec = json.loads(sys.argv[1])
module = importlib.import_module(spec["module"])
real = getattr(module, spec["name"])
calls = [0]
def wrapper(*args, **kwargs):
    calls[0] += 1
    hit = calls[0] == spec["n"]
    if hit and spec["when"] == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit and spec["when"] == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(module, spec["name"], wrapper)
sys.path.insert(0, spec["root"])
from tests import utils
from evokd import cli, processes
processes.run_process = utils.run_process_in_this_one(processes.run_process)
sys.exit(cli.main(spec["argv"]))
"""


def killed_run(argv, target, n=1, when="after"):
    """Run ``evokd ARGV`` and kill it at the ``n``-th call of ``target`` ("module:function").

    Asserts that the kill happened (the command did not finish on its own)."""
    module, name = target.split(":")
    spec = {"module": module, "name": name, "n": n, "when": when, "argv": [str(a) for a in argv]}
    spec["root"] = str(Path(__file__).resolve().parents[1])
    code, out = utils.run([sys.executable, "-c", SCRIPT, json.dumps(spec)], check=False)
    assert code == -signal.SIGKILL, f"expected a SIGKILL at {target} #{n}, got {code}:\n{out}"
    return out


def killed_then_resumed(argv, target, n, when, out, main, published=False):
    """Kill ``evokd ARGV`` at ``target`` #n, check that OUT is complete (``published``: the
    kill came after the rename that publishes it) or absent, then rerun ARGV in-process with
    ``main``, which must finish (exit 0)."""
    killed_run(argv, target, n, when)
    assert out.exists() == published, out  # complete, or not there
    assert main([str(a) for a in argv]) == 0
