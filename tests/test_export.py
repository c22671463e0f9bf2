"""`evokd export --ct2` and `evokd bench-translate`: CTranslate2 models of fairseq checkpoints.

One folder made by `evokd prepare` and two tiny models trained on it for an epoch (a
wider "teacher" and a narrower "student"); bench-translate runs once with beam 1 and its
outputs serve several tests.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ctranslate2
import pytest
import torch

from evokd import cli
from evokd.core.checkpoint import register_safe_globals
from evokd.data import remove_bpe
from evokd.deploy.export import EXPORT_INFO, MODEL_FILE, export_ct2
from evokd.errors import EvokdError
from tests import utils

# Models trained for an epoch repeat a word until the length limit: keep it short.
MAX_LEN = 20
SYSTEMS = [
    "teacher (fairseq)",
    "student (fairseq)",
    "student (CTranslate2 float32)",
    "student (CTranslate2 int8)",
]
ROW_KEYS = {
    "system", "engine", "checkpoint", "quantization", "compute_type", "parameters", "seconds",
    "sentences_per_second", "speedup", "bleu", "sacrebleu", "chrf", "bleu_lost", "hypotheses",
}  # fmt: skip


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "multi30k.de-en"
    argv = ["prepare", "multi30k", "--train-size", "300", "--eval-size", "30"]
    assert cli.main(argv + ["--vocab-size", "400", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def models(prepared, tmp_path_factory):
    """(teacher, student) checkpoints, trained in this process for one epoch each."""
    root = tmp_path_factory.mktemp("models")
    wider = ["--encoder-embed-dim", "48", "--decoder-embed-dim", "48"]
    jobs = [
        ("teacher", "transformer_evokd_tiny_senior", wider),
        ("student", "transformer_evokd_tiny_student", []),
    ]
    for name, arch, extra in jobs:  # one at a time: fairseq's config is process-global
        utils.train(prepared, root / name, arch, extra)
    return root / "teacher" / "checkpoint_last.pt", root / "student" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def bench(prepared, models, tmp_path_factory):
    """`evokd bench-translate` with beam 1, its work folder kept; (JSON, printed table)."""
    root = tmp_path_factory.mktemp("bench")
    teacher, student = models
    argv = ["bench-translate", "--teacher", teacher, "--student", student, "--data", prepared]
    argv += ["--beam", "1", "--max-len", MAX_LEN, "--batch-size", "8", "--threads", "1"]
    argv += ["--work-dir", root / "work", "--json", root / "bench.json"]
    code, out = _main_capturing(argv)
    assert code == 0, out
    with open(root / "bench.json", encoding="utf-8") as f:
        return json.load(f), out, root / "work"


def _main_capturing(argv):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main([str(a) for a in argv])
    return code, buffer.getvalue()


def _sacrebleu_cli(refs, hyps, *flags):
    """The sacrebleu command line's score (4 decimals) of a hypothesis file."""
    cmd = [str(Path(sys.executable).parent / "sacrebleu"), str(refs), "-i", str(hyps), "-w", "4"]
    cmd += ["--force", "-b", *flags]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


# --- bench-translate ---------------------------------------------------------------------------


def test_bench_reports_the_four_systems(bench, prepared):
    result, printed, _ = bench
    rows = result["rows"]
    assert [r["system"] for r in rows] == SYSTEMS
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        # the rate is the sentences over the seconds (fairseq prints them to 0.1 s)
        assert row["seconds"] * row["sentences_per_second"] == pytest.approx(
            30, abs=0.05 * row["sentences_per_second"] + 0.01
        )
        speedup = row["sentences_per_second"] / rows[0]["sentences_per_second"]
        assert row["speedup"] == pytest.approx(speedup, abs=1e-3)
        assert row["bleu_lost"] == pytest.approx(rows[1]["bleu"] - row["bleu"], abs=1e-4)
        assert row["system"] in printed
    # the student's files, scored by the sacrebleu command line (prepared: raw references)
    text, work = prepared / "text", bench[2]
    bleu = _sacrebleu_cli(text / "test.tok.en", work / "student.hyp.tok.en", "-tok", "none")
    chrf = _sacrebleu_cli(text / "test.raw.en", work / "student.hyp.en", "-m", "chrf",
                          "--chrf-lowercase")  # fmt: skip
    sacre = _sacrebleu_cli(text / "test.raw.en", work / "student.hyp.en", "-lc")
    assert rows[1]["bleu"] == pytest.approx(bleu, abs=5e-5)
    assert rows[1]["chrf"] == pytest.approx(chrf, abs=5e-5)
    assert rows[1]["sacrebleu"] == pytest.approx(sacre, abs=5e-5)
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert [r["quantization"] for r in rows[2:]] == ["float32", "int8"]
    assert rows[3]["model_bytes"] < rows[2]["model_bytes"]
    meta = result["meta"]
    assert (meta["n_sentences"], meta["beam"], meta["threads"]) == (30, 1, 1)
    assert (meta["max_len"], meta["batch_size"], meta["subset"]) == (MAX_LEN, 8, "test")
    assert "tok:none" in meta["bleu_signature"]
    assert "| system | sentences/s | speed-up | BLEU |" in printed


def test_bench_ct2_float32_translates_like_fairseq(bench):
    """Greedy search with the same weights in float32: the same hypotheses.

    Only the order of floating-point operations differs between the engines, so a
    near-tie between two tokens may flip; on 30 sentences we allow 3 such flips.
    """
    result, _, work = bench
    fairseq = lines_of(work / "student.hyp.en")
    ct2 = lines_of(work / "student-ct2-float32.hyp.en")
    same = sum(a == b for a, b in zip(fairseq, ct2))
    assert len(ct2) == len(fairseq) == 30 and same >= 27
    assert result["rows"][2]["same_as_fairseq_student"] == same / 30
    # identical hypotheses, identical scores
    if same == 30:
        assert result["rows"][2]["bleu"] == result["rows"][1]["bleu"]


# --- export ------------------------------------------------------------------------------------


def test_export_loads_in_ctranslate2_and_matches_fairseq(prepared, models, bench, tmp_path):
    """The exported model, fed the prepared BPE'd source text directly, gives fairseq's
    greedy output (the bench's fairseq run of the student, beam 1, same length limit)."""
    _, student = models
    out = tmp_path / "fp32"
    info = export_ct2(student, out, quantization="float32")  # data: the checkpoint's own
    assert info["data"] == str(prepared.resolve()) and info["quantization"] == "float32"
    assert (info["source_lang"], info["target_lang"]) == ("de", "en")
    assert info["architecture"] == "transformer_evokd_tiny_student"
    assert json.loads((out / EXPORT_INFO).read_text()) == info
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    source = [line.split() for line in lines_of(prepared / "text" / "test.de")]
    results = translator.translate_batch(
        source, beam_size=1, max_decoding_length=MAX_LEN, max_batch_size=8
    )
    hyps = [remove_bpe(" ".join(r.hypotheses[0])) for r in results]
    fairseq = lines_of(bench[2] / "student.hyp.tok.en")
    assert sum(a == b for a, b in zip(hyps, fairseq)) >= 27  # see the test above


def test_int8_model_is_smaller(models, prepared, evokd_main, tmp_path):
    _, student = models
    sizes = {}
    for quantization in ("float32", "int8"):
        out = tmp_path / quantization
        code, printed, err = evokd_main(
            "export", "--ct2", student, out, "--data", prepared, "--quantization", quantization
        )
        assert code == 0, err
        assert f"{out}: CTranslate2" in printed and quantization in printed
        sizes[quantization] = (out / MODEL_FILE).stat().st_size
        ctranslate2.Translator(str(out), device="cpu")  # loads
    assert sizes["int8"] < 0.6 * sizes["float32"]


def test_existing_output_is_refused_without_force(models, prepared, evokd_main, tmp_path):
    _, student = models
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = evokd_main("export", "--ct2", student, out, "--data", prepared)
    assert code == 2 and f"{out} exists; pass --force" in err
    # --force replaces a model folder, never another folder
    code, _, err = evokd_main("export", "--ct2", student, out, "--data", prepared, "--force")
    assert code == 2 and "not a CTranslate2 model folder" in err
    assert (out / "notes.txt").read_text() == "keep me" and not (out / MODEL_FILE).exists()
    model = tmp_path / "int8"
    assert evokd_main("export", "--ct2", student, model, "--data", prepared)[0] == 0
    stamp = (model / MODEL_FILE).stat().st_mtime_ns
    code, _, err = evokd_main("export", "--ct2", student, model, "--data", prepared)
    assert code == 2 and (model / MODEL_FILE).stat().st_mtime_ns == stamp
    code, _, err = evokd_main(
        "export", "--ct2", student, model, "--quantization", "float32", "--force"
    )
    assert code == 0, err
    assert json.loads((model / EXPORT_INFO).read_text())["quantization"] == "float32"
    assert not (tmp_path / "int8.partial").exists()


def test_input_errors_name_the_file(models, prepared, evokd_main, tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint_best.pt"
    code, _, err = evokd_main("export", "--ct2", missing, tmp_path / "out")
    assert code == 2 and f"CKPT {missing}: no such file" in err
    # a data folder without the target dictionary
    data = tmp_path / "data"
    data.mkdir()
    for path in prepared.glob("test.*"):
        shutil.copy(path, data / path.name)
    shutil.copy(prepared / "dict.de.txt", data / "dict.de.txt")
    code, _, err = evokd_main("export", "--ct2", models[1], tmp_path / "out", "--data", data)
    assert code == 2 and "no dict.en.txt" in err
    assert not (tmp_path / "out").exists()
    code, _, err = evokd_main(
        "bench-translate", "--teacher", missing, "--student", models[1], "--data", prepared
    )
    assert code == 2 and f"--teacher {missing}: no such file" in err


def test_checkpoint_data_folder_gone(models, tmp_path):
    """Without --data the checkpoint's training folder is used; when it is gone, say so."""
    register_safe_globals()
    state = torch.load(models[1], map_location="cpu", weights_only=True)
    state["cfg"]["task"]["data"] = str(tmp_path / "moved")
    state["cfg"]["model"].data = str(tmp_path / "moved")
    moved = tmp_path / "moved.pt"
    torch.save(state, moved)
    with pytest.raises(EvokdError, match="moved does not exist; pass --data DATA_BIN"):
        export_ct2(moved, tmp_path / "out")


def test_student_of_evokd_translation_exports_without_its_teacher(models, prepared, tmp_path):
    """A KD student records --task evokd_translation and its teacher's path; exporting
    needs neither (CTranslate2's converter alone would set that task up and fail)."""
    register_safe_globals()
    state = torch.load(models[1], map_location="cpu", weights_only=True)
    gone = str(tmp_path / "gone" / "teacher.pt")
    args = state["cfg"]["model"]
    args.task, args.teacher_path, args.init_student_from = "evokd_translation", gone, gone
    state["cfg"]["task"].update(_name="evokd_translation", teacher_path=gone)
    student = tmp_path / "kd_student.pt"
    torch.save(state, student)
    info = export_ct2(student, tmp_path / "out", data=prepared, quantization="int8")
    assert info["architecture"] == "transformer_evokd_tiny_student"
    ctranslate2.Translator(str(tmp_path / "out"), device="cpu")


def test_ctranslate2_not_installed(models, monkeypatch, evokd_main, tmp_path):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails
    code, _, err = evokd_main("export", "--ct2", models[1], tmp_path / "out")
    assert code == 2 and 'pip install -e ".[ct2]"' in err
    assert not (tmp_path / "out").exists()


def test_unsupported_model_is_refused_before_writing(models, prepared, tmp_path):
    register_safe_globals()
    state = torch.load(models[1], map_location="cpu", weights_only=True)
    state["cfg"]["model"].activation_fn = "tanh"  # fairseq has it, CTranslate2 does not
    tanh = tmp_path / "tanh.pt"
    torch.save(state, tanh)
    with pytest.raises(
        EvokdError, match=r"(?s)tanh.pt: CTranslate2 cannot convert it: .*activation-fn tanh"
    ):
        export_ct2(tanh, tmp_path / "out", data=prepared)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
