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


def help_of(command):
    import contextlib
    import io

    import pytest

    from evokd import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return out.getvalue()


def test_passthrough_is_in_the_usage_lines():
    for command in ("chain", "mckd", "recipe", "bench"):
        usage = help_of(command).split("\n\n")[0]
        assert usage.endswith("[-- FAIRSEQ_TRAIN_FLAGS ...]"), (command, usage)


def test_bench_help_shows_the_defaults():
    text = " ".join(help_of("bench").split("options:", 1)[1].split())
    for flag, default in [("--updates N", 20), ("--warmup N", 3), ("--max-tokens N", 4096),
                          ("--topk K", 8)]:  # fmt: skip
        assert f"{flag} " in text and f"(default: {default})" in text.split(flag, 1)[1][:80]
    assert "(default: transformer_evokd_tiny_student)" in text


def test_readme_and_chain_help_agree_on_the_demo_time():
    import re

    readme = (REPO / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("make demo")]
    (minutes,) = re.findall(r"\((\d+-\d+) min", line)
    (said,) = re.findall(r"the demo: (\d+-\d+) minutes", help_of("chain"))
    assert said == minutes


def test_evaluate_a_stage_folder(evokd_main, data_bin, teacher_ckpt, tmp_path):
    import shutil

    stage = tmp_path / "stage"
    stage.mkdir()
    shutil.copy(teacher_ckpt, stage / "checkpoint_best.pt")
    code, out, err = evokd_main("evaluate", stage, "--data", data_bin, "--beam", 1)
    assert code == 0, err
    assert out.startswith(f"{stage / 'checkpoint_best.pt'} (")
    assert (stage / "checkpoint_best.test.generate.log").is_file()
    (stage / "checkpoint_best.pt").rename(stage / "checkpoint_last.pt")
    code, out, err = evokd_main("evaluate", stage, "--data", data_bin)
    assert code == 2
    assert f"a folder without checkpoint_best.pt: give one of its checkpoints, e.g. {stage}/" \
        "checkpoint_last.pt" in err  # fmt: skip
    (stage / "checkpoint_last.pt").unlink()
    code, out, err = evokd_main("evaluate", stage, "--data", data_bin)
    assert code == 2 and f"CHECKPOINT {stage}: a folder holding no checkpoint (*.pt)" in err


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    import os

    import pytest

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (the full disk) needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        out = disk / "micro"
        argv = ["prepare", "multi30k", "--out", str(out), "--train-size", "300"]
        argv += ["--eval-size", "30", "--vocab-size", "400"]
        from tests import utils

        done = subprocess.run(
            utils.fairseq_script("evokd") + argv, cwd=tmp_path, capture_output=True, text=True
        )
        written = sorted(p for p in out.rglob("*") if p.is_file())
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"evokd prepare: error: {out}/") and last.endswith(
        ".partial: No space left on device"
    ), last
    assert Path(last.split(": ")[2]) in written  # the file it was writing
    # nothing published: only unfinished files, and the mark of an unfinished preparation
    assert written and all(p.name.endswith(".partial") or p.name.startswith(".") for p in written)
