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
    student = "transformer_evokd_tiny_student"
    records, out = utils.train(data, student_dir, student, extra=kd, script="fairseq-train")
    train = [r for r in records if r["_tag"] == "train"][-1]
    loss, kd, nll = (float(train[f"train_{k}"]) for k in ("loss", "kd_loss", "nll_loss"))
    # loss = (1 - alpha) * label-smoothed NLL + alpha * T^2 * KD, with alpha 0.5 and T 2, and
    # the label-smoothed NLL (smoothing 0.1) is at least 0.9 times the NLL (all per token)
    assert kd > 0 and loss - 2 * kd >= 0.5 * 0.9 * nll - 0.01
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
    # the BLEU line counts the words of the hypotheses and of the references it printed
    found = re.search(r"BLEU4 = [\d.]+, .* syslen=(\d+), reflen=(\d+)\)", gen)
    refs = [line for line in gen.splitlines() if line.startswith("T-")]
    words = [sum(len(line.split("\t")[-1].split()) for line in lines) for lines in (hyps, refs)]
    assert [int(found.group(1)), int(found.group(2))] == words
