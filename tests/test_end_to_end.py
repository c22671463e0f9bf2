"""Through the command lines, as a user runs them: prepare, teacher, KD student, generate."""

import re

from evokd.core.checkpoint import load_checkpoint
from tests import utils


def test_prepare_teacher_distil_generate(tmp_path):
    data = tmp_path / "data-bin" / "multi30k.de-en"
    utils.run(
        utils.fairseq_script("evokd")
        + ["prepare", "multi30k", "--out", str(data), "--train-size", "300"]
        + ["--eval-size", "40", "--vocab-size", "400"]
    )
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    wide = ["--encoder-embed-dim", "48", "--decoder-embed-dim", "48"]
    utils.train(data, teacher_dir, "transformer_evokd_tiny_senior", extra=wide, epochs=2)
    kd = ["--task", "evokd_translation", "--teacher-path", str(teacher_dir / "checkpoint_best.pt")]
    kd += ["--criterion", "word_kd", "--kd-alpha", "0.5", "--kd-temperature", "2"]
    kd += ["--kd-loss", "forward_kl", "--kd-topk", "8"]
    records, out = utils.train(data, student_dir, "transformer_evokd_tiny_student", extra=kd)
    train = [r for r in records if r["_tag"] == "train"][-1]
    assert float(train["train_kd_loss"]) > 0 and float(train["train_teacher_nll_loss"]) > 0
    valid = [r for r in records if r["_tag"] == "valid"][-1]
    assert "valid_kd_loss" not in valid  # validation scores the student alone

    state = load_checkpoint(str(student_dir / "checkpoint_best.pt"))
    assert state["cfg"]["model"].arch == "transformer_evokd_tiny_student"
    assert not any("teacher" in k for k in state["model"])

    # stock fairseq-generate; --user-dir lets torch >= 2.6 read the checkpoint
    _, gen = utils.run(
        utils.fairseq_script("fairseq-generate")
        + [str(data), "--path", str(student_dir / "checkpoint_best.pt"), "--user-dir"]
        + [utils.EVOKD_DIR, "--beam", "5", "--remove-bpe", "--cpu", "--max-tokens", "4000"]
    )
    hyps = [line for line in gen.splitlines() if line.startswith("H-")]
    assert len(hyps) == 40
    assert not any("@@" in h for h in hyps)
    assert re.search(r"BLEU4 = \d+\.\d+", gen)
