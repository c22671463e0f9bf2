"""Two-process distributed KD training on the CPU (gloo), started by torchrun."""

import math
import socket

from evokd.core.checkpoint import load_checkpoint
from tests import utils


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_kd_training(data_bin, teacher_ckpt, tmp_path):
    kd = ["--task", "evokd_translation", "--teacher-path", str(teacher_ckpt)]
    kd += ["--criterion", "word_kd", "--kd-alpha", "0.5"]
    single, _ = utils.train(data_bin, tmp_path / "single", "transformer_evokd_tiny_student", kd)
    n_batches = len(utils.updates(single))

    launcher = utils.fairseq_script("torchrun") + ["--nproc-per-node", "2"]
    launcher += ["--master-port", str(_free_port()), "-m", "evokd.train"]
    cmd = launcher + [str(data_bin), "--user-dir", utils.EVOKD_DIR]
    cmd += ["--arch", "transformer_evokd_tiny_student", "--save-dir", str(tmp_path / "ddp")]
    cmd += utils.TINY_MODEL + utils.TRAIN_FLAGS + kd + ["--max-epoch", "1"]
    cmd += ["--distributed-world-size", "2", "--distributed-backend", "gloo"]
    cmd += ["--ddp-backend", "legacy_ddp"]
    _, out = utils.run(cmd)
    assert "distributed init (rank 0)" in out and "distributed init (rank 1)" in out
    records = utils.parse_json_log(out)
    steps = utils.updates(records)
    # each rank takes every other batch; one update consumes a batch from each
    assert len(steps) == math.ceil(n_batches / 2)
    assert all(float(s[1]) > 0 for s in steps)
    train = [r for r in records if r["_tag"] == "train"][-1]
    train_single = [r for r in single if r["_tag"] == "train"][-1]
    # every training pair was seen once per epoch, half of them by each rank
    seen = float(train["train_bsz"]) * len(steps)
    assert round(seen) == round(float(train_single["train_bsz"]) * n_batches) == 200
    state = load_checkpoint(str(tmp_path / "ddp" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == len(steps)
