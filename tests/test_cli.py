"""The ``evokd`` command as the person at the keyboard meets it: usage that answers without
loading torch or fairseq, the ``--`` pass-through in the usage lines, the defaults in the
help, and ``evaluate`` given a stage folder."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

USAGE_WITHOUT_TORCH = """
import contextlib, io, sys
from evokd import cli
parser = cli.build_parser()
with contextlib.redirect_stdout(io.StringIO()):
    parser.print_help()
    for name in cli.COMMANDS:
        try:
            parser.parse_args([name, "--help"])
        except SystemExit:
            pass
print(" ".join(sorted(m for m in ("torch", "fairseq") if m in sys.modules)) or "neither")
"""


def test_usage_imports_neither_torch_nor_fairseq():
    found = subprocess.run(
        [sys.executable, "-c", USAGE_WITHOUT_TORCH], cwd=REPO, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == "neither"
