import os

# Tiny models: one thread each is as fast, and keeps concurrent processes from
# oversubscribing the cores (set before torch is imported; inherited by subprocesses).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Checkpoints converted for CTranslate2 (the default engine of distill-data and the chains'
# seqkd steps) go into a folder of this test run, never into the user's ~/.cache.
if "EVOKD_CT2_CACHE" not in os.environ:
    import tempfile

    os.environ["EVOKD_CT2_CACHE"] = tempfile.mkdtemp(prefix="evokd-test-ct2-")

import pytest

from evokd import cli
from tests import utils


@pytest.fixture(scope="session", autouse=True)
def fairseq_in_this_process():
    """The stages, translations and binarizations that evokd starts as fairseq's programs
    (fairseq-train, fairseq-generate, fairseq-preprocess, one process each) run in the test's
    own process, with the same command lines: torch and fairseq are imported once per test
    process, not once per command. Commands of several processes (torchrun) and those of
    ``evokd`` run in a subprocess (``tests.utils.run``) start processes as users' do."""
    from evokd import processes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            processes, "run_process", utils.run_process_in_this_one(processes.run_process)
        )
        yield


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    """200 training and 40 validation Multi30k pairs, binarized (joined dictionary)."""
    return utils.make_data_bin(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def teacher_ckpt(data_bin, tmp_path_factory):
    """A tiny teacher (2 layers, width 48; the students are 32) trained for two epochs with
    plain LS-CE."""
    save_dir = tmp_path_factory.mktemp("teacher")
    wider = ["--encoder-embed-dim", "48", "--decoder-embed-dim", "48"]
    utils.train(data_bin, save_dir, "transformer_evokd_tiny_senior", extra=wider, epochs=2)
    return save_dir / "checkpoint_last.pt"


@pytest.fixture
def evokd_main(capsys):
    """``evokd`` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
