"""The evokd_translation task: the frozen teacher, --init-student-from, and the errors."""

import os
import re

import pytest
import torch
from fairseq import optim

from evokd.core.checkpoint import CheckpointError, load_checkpoint
from evokd.errors import EvokdError
from evokd.teachers.live import main_dropouts
from tests import utils

STUDENT = ["--arch", "transformer_evokd_tiny_student"]


def kd_flags(teacher, alpha="0.5"):
    return ["--task", "evokd_translation", "--teacher-path", str(teacher)] + [
        "--criterion", "word_kd", "--kd-alpha", alpha,
    ]  # fmt: skip


def test_teacher_is_frozen_in_eval_mode_and_outside_the_student(data_bin, teacher_ckpt):
    cfg, task, model, criterion = utils.build_task_model_criterion(
        data_bin, STUDENT + kd_flags(teacher_ckpt)
    )
    teacher = task.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters()])
    for update in range(3):
        sample = utils.batch(task, range(update * 8, update * 8 + 8))
        loss, _, log = task.train_step(sample, model, criterion, optimizer, update)
        optimizer.step()
        optimizer.zero_grad()
        assert log["kd_loss"] > 0
    assert not teacher.training and model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    assert any(not torch.equal(v, student_before[k]) for k, v in model.state_dict().items())
    # not a submodule of the student, so neither optimised nor saved with it
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert all(m is not teacher for m in model.modules())


def test_teacher_follows_the_students_dtype(data_bin, teacher_ckpt):
    _, task, model, _ = utils.build_task_model_criterion(data_bin, STUDENT + kd_flags(teacher_ckpt))
    model = model.double()
    sample = utils.batch(task, range(4))
    out = task.teacher(sample, model)
    assert next(task.teacher.model.parameters()).dtype == torch.float64
    assert out.lprobs.shape[:2] == sample["target"].shape
    assert not out.lprobs.requires_grad


def test_student_checkpoint_holds_no_teacher(data_bin, teacher_ckpt, tmp_path):
    utils.train(data_bin, tmp_path, STUDENT[1], extra=kd_flags(teacher_ckpt))
    state = load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    teacher_state = load_checkpoint(str(teacher_ckpt))
    _, _, model, _ = utils.build_task_model_criterion(data_bin, STUDENT)
    assert set(state["model"]) == set(model.state_dict())
    n_saved = sum(v.numel() for v in state["model"].values())
    assert n_saved == sum(v.numel() for v in model.state_dict().values())
    assert n_saved < sum(v.numel() for v in teacher_state["model"].values())


def test_alpha_zero_reproduces_plain_training_update_for_update(data_bin, teacher_ckpt, tmp_path):
    plain, _ = utils.train(data_bin, tmp_path / "plain", STUDENT[1], epochs=2)
    kd, out = utils.train(
        data_bin, tmp_path / "kd", STUDENT[1], extra=kd_flags(teacher_ckpt, "0"), epochs=2
    )
    assert "teacher" in out and "frozen" in out  # the teacher was really loaded
    assert len(utils.updates(plain)) >= 4
    assert utils.updates(kd) == utils.updates(plain)


def test_init_student_from_copies_weights_not_optimizer(data_bin, teacher_ckpt, tmp_path):
    first = tmp_path / "first"
    utils.train(data_bin, first, STUDENT[1], epochs=2)
    first_state = load_checkpoint(str(first / "checkpoint_last.pt"))
    init = ["--task", "evokd_translation", "--init-student-from", str(first / "checkpoint_last.pt")]
    _, task, model, _ = utils.build_task_model_criterion(data_bin, STUDENT + init)
    for k, v in model.state_dict().items():
        assert torch.equal(v, first_state["model"][k]), k

    # Through the CLI: a new stage starts at update 0 with a fresh LR schedule and meters.
    records, _ = utils.train(data_bin, tmp_path / "second", STUDENT[1], extra=init)
    second = load_checkpoint(str(tmp_path / "second" / "checkpoint_last.pt"))
    n_first = first_state["optimizer_history"][-1]["num_updates"]
    n_second = second["optimizer_history"][-1]["num_updates"]
    assert n_second == n_first // 2  # one epoch, counted from zero
    assert first_state["extra_state"]["train_iterator"]["epoch"] == 3  # the next epoch
    assert second["extra_state"]["train_iterator"]["epoch"] == 2
    inner = [r for r in records if r["_tag"] == "train_inner"]
    assert inner[0]["num_updates"] == "1"
    # and it starts from the trained weights: its first loss is far below a fresh student's
    fresh, _ = utils.train(data_bin, tmp_path / "fresh", STUDENT[1])
    fresh_first = float(utils.updates(fresh)[0][1])
    assert float(inner[0]["loss"]) < fresh_first - 0.5


def test_resumed_state_wins_over_init_student_from(data_bin, tmp_path):
    utils.train(data_bin, tmp_path / "init", STUDENT[1])
    init = ["--task", "evokd_translation", "--init-student-from"]
    init += [str(tmp_path / "init" / "checkpoint_last.pt")]
    straight, _ = utils.train(data_bin, tmp_path / "straight", STUDENT[1], extra=init, epochs=3)
    utils.train(data_bin, tmp_path / "resumed", STUDENT[1], extra=init, epochs=1)
    resumed, out = utils.train(data_bin, tmp_path / "resumed", STUDENT[1], extra=init, epochs=3)
    assert "Loaded checkpoint" in out
    first = int(utils.updates(resumed)[0][0])
    assert first > 1  # the resumed run went on from its own checkpoint_last.pt
    assert utils.updates(resumed) == [u for u in utils.updates(straight) if int(u[0]) >= first]


# ---------------------------------------------------------------------------------------
# Errors before training starts, each naming the file or flag.


def _fails(data_bin, save_dir, extra, arch=STUDENT[1]):
    code, out = utils.train_in_process(utils.train_command(data_bin, save_dir, arch, extra))
    assert code != 0
    assert not os.path.exists(os.path.join(save_dir, "checkpoint_last.pt"))
    assert "begin training epoch" not in out
    return out


def test_missing_teacher(data_bin, tmp_path):
    out = _fails(data_bin, tmp_path, kd_flags(tmp_path / "nope.pt"))
    assert "--teacher-path" in out and "nope.pt" in out and "no such file" in out


def test_teacher_that_is_not_a_checkpoint(data_bin, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    out = _fails(data_bin, tmp_path / "run", kd_flags(bogus))
    assert "bogus.pt" in out and "not a readable fairseq checkpoint" in out
    weights = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match="weights.pt: not a fairseq checkpoint"):
        load_checkpoint(str(weights), "--teacher-path")


def test_teacher_with_another_dictionary(data_bin, tmp_path):
    other = utils.make_data_bin(tmp_path / "other", n_train=60, n_valid=10)
    utils.train(other, tmp_path / "other_teacher", STUDENT[1])
    out = _fails(
        data_bin, tmp_path / "run", kd_flags(tmp_path / "other_teacher" / "checkpoint_last.pt")
    )
    n_ours = sum(1 for _ in open(os.path.join(data_bin, "dict.de.txt"))) + 4
    n_theirs = sum(1 for _ in open(os.path.join(other, "dict.de.txt"))) + 4
    assert f"has {n_theirs} entries" in out and f"has {n_ours}" in out
    assert "--teacher-path" in out


def test_init_student_from_with_other_shapes(data_bin, teacher_ckpt, tmp_path):
    flags = ["--task", "evokd_translation", "--init-student-from", str(teacher_ckpt)]
    out = _fails(data_bin, tmp_path, flags)
    assert "--init-student-from" in out and "do not fit the student" in out
    # both shapes named: the teacher's embeddings are 48 wide, the student's 32
    assert re.search(r"embed_tokens.weight: checkpoint \((\d+), 48\) vs student \(\1, 32\)", out)


def test_word_kd_without_teacher(data_bin, tmp_path):
    out = _fails(data_bin, tmp_path, ["--criterion", "word_kd", "--kd-alpha", "0.5"])
    assert "needs a teacher" in out and "--teacher-path" in out
    with pytest.raises(EvokdError):
        utils.build_task_model_criterion(
            data_bin, STUDENT + ["--task", "evokd_translation", "--criterion", "word_kd"]
        )


def test_teacher_dropout_runs_the_teacher_in_train_mode_without_changing_it(data_bin, teacher_ckpt):
    flags = STUDENT + kd_flags(teacher_ckpt) + ["--teacher-dropout", "0.3"]
    cfg, task, model, criterion = utils.build_task_model_criterion(data_bin, flags)
    teacher = task.teacher.model
    dropouts = main_dropouts(teacher)
    # one after the embeddings and one per layer, in each of the encoder and the decoder
    assert len(dropouts) == 2 * (1 + 2) and all(m.p == 0.3 for m in dropouts)
    attention = [m for n, m in teacher.named_modules() if n.endswith("self_attn.dropout_module")]
    assert attention and all(m not in dropouts for m in attention)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sample = utils.batch(task, range(8))
    one, two = task.teacher(sample, model), task.teacher(sample, model)
    assert teacher.training and not one.lprobs.requires_grad
    assert not torch.allclose(one.lprobs, two.lprobs)  # dropout on: two draws differ
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    task.train_step(sample, model, criterion, optimizer, 0)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())

    _, plain_task, plain_model, _ = utils.build_task_model_criterion(
        data_bin, STUDENT + kd_flags(teacher_ckpt)
    )
    a, b = plain_task.teacher(sample, plain_model), plain_task.teacher(sample, plain_model)
    assert not plain_task.teacher.model.training and torch.equal(a.lprobs, b.lprobs)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--teacher-dropout", "1.5"], "--teacher-dropout 1.5: expected a probability"),
        (
            ["--teacher-dropout", "0.3", "--teacher-cache", "somewhere"],
            "holds the teacher's eval-mode",
        ),
    ],
)
def test_teacher_dropout_refused(data_bin, teacher_ckpt, tmp_path, extra, message):
    out = _fails(data_bin, tmp_path, kd_flags(teacher_ckpt) + extra)
    assert message in out
