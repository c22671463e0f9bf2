"""examples/gpu_check.sh without a GPU: its syntax, its usage, and every command it would
run parsed by the parser of the program that runs it (evokd's subcommands, fairseq-train,
torchrun), so a renamed or misspelt flag fails here and not on a borrowed GPU."""

import contextlib
import io
import shlex
from pathlib import Path

import pytest

from tests import utils

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "gpu_check.sh"


def test_syntax_and_usage():
    code, out = utils.run(["bash", "-n", str(SCRIPT)], check=False)
    assert code == 0, out
    assert "set -euo pipefail" in SCRIPT.read_text()
    code, out = utils.run(["bash", str(SCRIPT), "--help"])
    assert "Usage: bash examples/gpu_check.sh" in out and "--print-commands" in out
    code, out = utils.run(["bash", str(SCRIPT), "--no-such-flag"], check=False)
    assert code == 2 and "unknown option --no-such-flag" in out


def _commands(tmp_path, gpus):
    _, out = utils.run(
        ["bash", str(SCRIPT), "--print-commands", "--work", str(tmp_path / "work")],
        env={"NGPUS": str(gpus)},
    )
    assert not (tmp_path / "work").exists()  # nothing ran
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _parse(parse, argv):
    """Run a parser, turning its exit into a test failure that shows its message."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return parse(argv)
    except SystemExit:
        pytest.fail(f"rejected: {shlex.join(argv)}\n{errors.getvalue()}")


def _fairseq_train(argv):
    from fairseq import options

    return _parse(
        lambda a: options.parse_args_and_arch(options.get_training_parser(), input_args=a), argv
    )


@pytest.mark.parametrize("gpus", [1, 2])
def test_every_command_parses(tmp_path, gpus):
    from torch.distributed.run import get_args_parser

    from evokd.cli import build_parser

    evokd = build_parser()
    subcommands, trained = [], []
    for argv in _commands(tmp_path, gpus):
        program = Path(argv[0]).name
        if program == "evokd":
            args = _parse(evokd.parse_args, argv[1:])
            subcommands.append(args.command)
        elif program in ("fairseq-train", "evokd-train"):
            trained.append((program, _fairseq_train(argv[1:])))
        elif program == "torchrun":
            launch = _parse(get_args_parser().parse_args, argv[1:])
            assert launch.module and launch.training_script == "evokd.train"
            assert int(launch.nproc_per_node) == gpus
            args = _fairseq_train(launch.training_script_args)
            assert args.ddp_backend == "pytorch_ddp" and args.distributed_world_size == gpus
            assert args.max_tokens == 4096 // gpus
            assert (args.distributed_init_method == "env://") == (gpus == 1)
            trained.append((program, args))
        else:
            pytest.fail(f"the script runs {program}, which this test cannot check")
    assert subcommands == ["prepare", "cache-teacher", "bench", "bench-translate"]
    archs = {args.arch for _, args in trained}
    assert archs == {"transformer_evokd_senior", "transformer_evokd_student"}
    assert any(args.fp16 for _, args in trained) and any(args.bf16 for _, args in trained)
    kd = [args for _, args in trained if args.criterion == "word_kd"]
    assert any(a.teacher_cache for a in kd) and any(not a.teacher_cache for a in kd)
    assert any(program == "torchrun" for program, _ in trained)
