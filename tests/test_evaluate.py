"""`evokd evaluate` (scores, parameter count, checkpoint averaging, errors) and the report."""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evokd import cli
from evokd.chain.report import markdown_table, write_report
from evokd.errors import EvokdError
from evokd.evaluation.averaging import AVERAGED_KEY, average_last_checkpoints
from evokd.evaluation.evaluate import evaluate_checkpoint
from tests import utils

# Tiny models trained for an epoch or two repeat one word until --max-len-b: keep it short.
FAST = ["--beam", "2", "--max-len-b", "8"]


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- the fixture data: no text/ folder, references from fairseq-generate's T- lines ----------


@pytest.fixture(scope="module")
def epochs_dir(teacher_ckpt, tmp_path_factory):
    """A copy of the teacher's two epoch checkpoints (averaging writes next to them)."""
    folder = tmp_path_factory.mktemp("epochs")
    for name in ("checkpoint1.pt", "checkpoint2.pt"):
        shutil.copy(teacher_ckpt.parent / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def averaged_result(epochs_dir, data_bin, tmp_path_factory):
    """`evokd evaluate --average-last 2` on the fixture data, as JSON."""
    out = tmp_path_factory.mktemp("results") / "teacher.json"
    argv = [epochs_dir / "checkpoint_last.pt", "--data", data_bin, "--average-last", 2]
    assert cli.main(["evaluate", *map(str, argv), "--out", str(out), *FAST]) == 0
    return read_json(out)


def test_outputs_are_the_files(averaged_result, data_bin):
    result = averaged_result
    hyps_tok = lines_of(result["hypotheses_tok"])
    refs = lines_of(result["references"])
    assert result["subset"] == "test" and result["beam"] == 2
    assert result["n_sentences"] == len(hyps_tok) == len(refs) == 40  # make_data_bin's test
    assert "tok:none" in result["bleu_signature"]
    # The references are the test text as fairseq-generate printed it: words or <<unk>>.
    text = lines_of(data_bin.parent / "text" / "valid.en")
    for ref, line in zip(refs, text):
        assert len(ref.split()) == len(line.split())
        assert all(r in (w, "<<unk>>") for r, w in zip(ref.split(), line.split()))
    # Without raw references: no sacreBLEU/chrF, and a note saying so.
    assert result["sacrebleu"] is None and result["chrf"] is None
    assert any("raw" in note for note in result["notes"])
    # Detokenizing only moves spaces and undoes the Moses escapes (html.unescape's oracle).
    hyps = lines_of(result["hypotheses"])
    assert len(hyps) == 40
    assert [re.sub(r"\s", "", h) for h in hyps] == [
        re.sub(r"\s", "", html.unescape(h)) for h in hyps_tok
    ]
    log = lines_of(result["log"])
    assert sum(line.startswith("H-") for line in log) == 40
    # fairseq prints the seconds to 0.1 s, the rate from the unrounded time
    assert abs(40 / result["sentences_per_second"] - result["seconds"]) <= 0.05 + 1e-6
    assert result["seconds"] <= result["wall_seconds"]


def test_tokenized_bleu_is_fairseq_generates_bleu4(evokd_main, averaged_result, data_bin, tmp_path):
    """Stock fairseq-generate scores its own output with its BLEU4 (token ids, no smoothing)
    against the T- references: evokd evaluate's tokenized BLEU must be the same number."""
    from evokd.distill.seqkd import distill_data

    # A tiny model matches no 4-gram of the real references (fairseq's BLEU4 is then 0,
    # sacrebleu's smoothed): the test set holds the real pairs, then the same sources with
    # the model's own translations as references.
    checkpoint, data = averaged_result["checkpoint"], tmp_path / "data"
    decoding = {"beam": 2, "max_len_a": 0, "max_len_b": 8}
    distill_data(checkpoint, data_bin, data, "test", keep_references=True, cpu=True, **decoding)
    out = tmp_path / "result.json"
    code, _, err = evokd_main("evaluate", checkpoint, "--data", data, "--out", out, *FAST)
    assert code == 0, err
    result = read_json(out)
    log = utils.generate_in_process(
        [str(data), "--path", checkpoint, "--user-dir", utils.EVOKD_DIR, "--gen-subset", "test"]
        + ["--remove-bpe", "--beam", "2", "--max-len-b", "8", "--max-tokens", "8000"]
        + ["--required-batch-size-multiple", "1", "--cpu"]
    )
    match = re.search(r"BLEU4 = ([\d.]+), [\d.]+/[\d.]+/[\d.]+/([\d.]+) ", log)
    bleu4, four_grams = float(match.group(1)), float(match.group(2))
    assert result["n_sentences"] == 80 and four_grams > 0 and 5 < bleu4 < 95
    assert abs(result["bleu"] - bleu4) <= 0.01, (result["bleu"], bleu4)


def test_a_same_size_foreign_dictionary_is_refused(evokd_main, data_bin, teacher_ckpt, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(data_bin, foreign)
    lines = (foreign / "dict.en.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]  # the same symbols and size, two ids swapped
    (foreign / "dict.en.txt").write_text("".join(lines), encoding="utf-8")
    code, out, err = evokd_main("evaluate", teacher_ckpt, "--data", foreign, *FAST)
    assert code == 2 and out == ""
    assert f"{foreign}/dict.en.txt" in err and f"{data_bin}/dict.en.txt" in err
    assert "symbols differ" in err and "CHECKPOINT" in err
    assert not list(teacher_ckpt.parent.glob("*.generate.log"))


def test_parameters_are_the_models(averaged_result, data_bin):
    from fairseq import checkpoint_utils

    state = torch.load(averaged_result["checkpoint"], weights_only=True)
    tensors = sum(t.numel() for k, t in state["model"].items() if not k.endswith(".version"))
    models, _ = checkpoint_utils.load_model_ensemble(
        [averaged_result["checkpoint"]], arg_overrides={"data": str(data_bin)}
    )
    assert averaged_result["parameters"] == tensors  # no tied weights in this model
    assert averaged_result["parameters"] == sum(p.numel() for p in models[0].parameters())
    assert averaged_result["architecture"] == "transformer_evokd_tiny_senior"


def test_average_is_the_elementwise_mean(averaged_result, epochs_dir):
    assert averaged_result["checkpoint"] == str(epochs_dir / "averaged_last2.pt")
    assert averaged_result["averaged"] == [
        str(epochs_dir / "checkpoint2.pt"),
        str(epochs_dir / "checkpoint1.pt"),
    ]
    first, second = (
        torch.load(epochs_dir / name, weights_only=True)["model"]
        for name in ("checkpoint1.pt", "checkpoint2.pt")
    )
    averaged = torch.load(epochs_dir / "averaged_last2.pt", weights_only=True)
    assert list(averaged["model"]) == list(first)
    for key, value in averaged["model"].items():
        assert torch.equal(value, (first[key] + second[key]) / 2), key
    assert not torch.equal(
        first["encoder.embed_tokens.weight"], second["encoder.embed_tokens.weight"]
    )
    assert [r["file"] for r in averaged[AVERAGED_KEY]["inputs"]] == [
        "checkpoint2.pt",
        "checkpoint1.pt",
    ]


def test_average_is_reused_never_overwritten(averaged_result, epochs_dir, tmp_path):
    folder = tmp_path / "ckpts"
    shutil.copytree(epochs_dir, folder)
    output = folder / "averaged_last2.pt"
    before = output.read_bytes()
    assert (
        average_last_checkpoints(folder / "checkpoint_best.pt", 2) == output
    )  # same inputs: reused
    assert output.read_bytes() == before
    state = torch.load(folder / "checkpoint1.pt", weights_only=True)
    state["model"]["encoder.embed_tokens.weight"] += 1
    torch.save(state, folder / "checkpoint1.pt")
    with pytest.raises(EvokdError, match="averaged_last2.pt exists"):
        average_last_checkpoints(folder, 2)
    assert output.read_bytes() == before


def test_average_needs_enough_checkpoints(evokd_main, epochs_dir, data_bin):
    code, _, err = evokd_main(
        "evaluate", epochs_dir / "checkpoint_last.pt", "--data", data_bin, "--average-last", 3
    )
    assert code == 2
    assert str(epochs_dir) in err and "need at least 3" in err
    assert "\n" not in err.strip()


# --- a folder made by `evokd prepare`: tokenized and raw references --------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("m30k") / "data-bin"
    argv = ["prepare", "multi30k", "--train-size", "300", "--eval-size", "50"]
    assert cli.main(argv + ["--vocab-size", "500", "--workers", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def prepared_results(prepared, tmp_path_factory):
    """The test split evaluated twice: as binarized (through the CLI), and from its raw
    text files (through the library, as the chain runner calls it)."""
    save_dir = tmp_path_factory.mktemp("m30k-model")
    utils.train(prepared, save_dir, "transformer_evokd_tiny_student", epochs=1)
    ckpt = save_dir / "checkpoint_last.pt"
    out = tmp_path_factory.mktemp("m30k-results")
    argv = ["evaluate", ckpt, "--data", prepared, "--out", out / "subset.json", *FAST]
    assert cli.main([str(a) for a in argv]) == 0
    text = prepared / "text"
    raw = evaluate_checkpoint(
        str(ckpt),
        str(prepared),
        src_file=str(text / "test.raw.de"),
        ref_file=str(text / "test.raw.en"),
        beam=2,
        max_len_b=8,
        out_dir=str(out / "raw"),
    )
    return {"subset": read_json(out / "subset.json"), "raw": raw, "out": out}


def test_raw_reference_metrics(prepared_results, prepared):
    result = prepared_results["subset"]
    text = prepared / "text"
    hyps, hyps_tok = lines_of(result["hypotheses"]), lines_of(result["hypotheses_tok"])
    refs_tok = lines_of(text / "test.tok.en")
    # 50 is not a multiple of 8: ve-fairseq would drop the last 2 without our flag.
    assert result["n_sentences"] == len(hyps) == 50
    assert result["references"] == str(text / "test.tok.en")
    assert len(hyps_tok) == len(refs_tok) == 50
    # the files evokd wrote, scored by the sacrebleu command line
    raw_file = text / "test.raw.en"
    sacre = _sacrebleu_cli(raw_file, result["hypotheses"], "-lc")
    chrf = _sacrebleu_cli(raw_file, result["hypotheses"], "-m", "chrf", "--chrf-lowercase")
    bleu = _sacrebleu_cli(text / "test.tok.en", result["hypotheses_tok"], "-tok", "none")
    assert result["sacrebleu"] == pytest.approx(sacre["score"], abs=5e-5)
    assert result["chrf"] == pytest.approx(chrf["score"], abs=5e-5) and result["chrf"] > 0
    assert result["bleu"] == pytest.approx(bleu["score"], abs=5e-5)
    for key, found in (("sacrebleu", sacre), ("chrf", chrf), ("bleu", bleu)):
        assert result[f"{key}_signature"] == found["signature"]
    assert "case:lc" in result["chrf_signature"] and "tok:13a" in result["sacrebleu_signature"]
    assert result["notes"] == []


def test_raw_text_files_score_like_the_binarized_split(prepared_results):
    subset, raw = prepared_results["subset"], prepared_results["raw"]
    assert raw["subset"] is None and raw["src_file"].endswith("test.raw.de")
    out_dir = prepared_results["out"] / "raw"
    assert raw["hypotheses"] == str(out_dir / "checkpoint_last.test.raw.de.hyp.en")
    assert raw["log"] == str(out_dir / "checkpoint_last.test.raw.de.generate.log")
    assert lines_of(raw["hypotheses_tok"]) == lines_of(subset["hypotheses_tok"])
    assert lines_of(raw["references"]) == lines_of(subset["references"])
    for key in ("n_sentences", "bleu", "sacrebleu", "chrf", "parameters", "chrf_signature"):
        assert raw[key] == subset[key], key


def _sacrebleu_cli(refs, hyps, *flags):
    """The sacrebleu command line's score (4 decimals) and signature of a hypothesis file."""
    cmd = [str(Path(sys.executable).parent / "sacrebleu"), str(refs), "-i", str(hyps), "-w", "4"]
    done = subprocess.run(cmd + ["--force", *flags], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# --- the metrics: golden values of the sacrebleu command line (2.6.0), computed once ---------

HYPS_TOK = ["a man is riding a horse on the beach .", "two dogs play in the snow .",
            "it &apos;s a small red car ."]  # fmt: skip
REFS_TOK = ["a man rides a horse on the beach .", "two dogs are playing in the snow .",
            "it &apos;s a little red car ."]  # fmt: skip
REFS_RAW = ["A man rides a horse on the beach.", "Two dogs are playing in the snow.",
            "It's a little red car."]  # fmt: skip
HYPS_DETOK = ["a man is riding a horse on the beach.", "two dogs play in the snow.",
              "it's a small red car."]  # fmt: skip
# sacrebleu REF -i HYP -w 4 with: -tok none --force; -lc; -m chrf --chrf-lowercase
GOLDEN = {"bleu": 50.6557, "sacrebleu": 50.1337, "chrf": 62.2496}


def test_metrics_are_the_sacrebleu_command_lines():
    from evokd.core.metrics import detokenize, score

    assert detokenize(HYPS_TOK, "en") == HYPS_DETOK
    scores = score(HYPS_TOK, REFS_TOK, HYPS_DETOK, REFS_RAW)
    for key, value in GOLDEN.items():
        assert scores[key] == pytest.approx(value, abs=5e-5), key
    assert scores["bleu_signature"] == SIGNATURES["bleu_signature"]
    assert scores["sacrebleu_signature"] == SIGNATURES["sacrebleu_signature"]
    assert scores["chrf_signature"] == SIGNATURES["chrf_signature"]
    assert set(score(HYPS_TOK, REFS_TOK)) == {"bleu", "bleu_signature"}  # no raw references


def test_sentence_chrf_is_the_command_lines():
    from evokd.core.metrics import sentence_chrf

    # sacrebleu R -i H -m chrf --sentence-level -w 4 (case-sensitive, sacrebleu's defaults)
    assert sentence_chrf(HYPS_TOK[0], REFS_TOK[0]) == pytest.approx(70.9715, abs=5e-5)
    assert sentence_chrf(HYPS_TOK[0].upper(), REFS_TOK[0]) < 70


def test_fairseq_generate_output_is_parsed_once():
    from evokd.core.generate import in_order, parse, score_output

    log = [
        "S-1\tein hund .",
        "T-1\tthe dog .",
        "H-1\t-0.5\ta dog .",
        "D-1\t-0.5\ta dog .",
        "P-1\t-0.4 -0.5 -0.6 -0.5",
        "H-1\t-0.9\tdog .",  # the second of --nbest 2
        "H-0\t-0.1\thello\tworld",  # a tab inside the text stays
        "2026-01-01 10:00:00 | INFO | fairseq_cli.generate | Translated 1,002 sentences "
        "(12,345 tokens) in 0.3s (6.67 sentences/s, 30.00 tokens/s)",
    ]
    out = parse(log, wall_seconds=2.5)
    assert out.hypotheses == {1: "a dog .", 0: "hello\tworld"}
    assert out.targets == {1: "the dog ."}
    assert (out.sentences, out.tokens, out.seconds) == (1002, 12345, 0.3)
    assert (out.sentences_per_second, out.wall_seconds) == (6.67, 2.5)
    assert in_order(out.hypotheses, 2, "hypotheses", "log") == ["hello\tworld", "a dog ."]
    with pytest.raises(EvokdError, match="1 references for 2 sentences .missing ids 0."):
        in_order(out.targets, 2, "references", "log")
    assert parse(["no summary"]).seconds is None
    with pytest.raises(EvokdError, match="1 tokenized references for 2 sentences"):
        score_output(out, 2, "en", ["the dog ."])


# --- errors before any work ----------------------------------------------------------------


def test_errors_name_what_is_wrong(evokd_main, data_bin, teacher_ckpt, tmp_path):
    src, ref, empty = tmp_path / "a.de", tmp_path / "a.en", tmp_path / "empty.en"
    src.write_text("ein hund .\nzwei hunde .\n", encoding="utf-8")
    ref.write_text("a dog .\n", encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    missing = tmp_path / "nope.pt"
    cases = [
        ([missing, "--data", data_bin], [str(missing), "no such file"]),
        ([teacher_ckpt, "--data", tmp_path / "nodata"], ["nodata", "no such folder"]),
        ([teacher_ckpt, "--data", data_bin, "--subset", "dev9"], ["dev9", "test", "valid"]),
        ([teacher_ckpt, "--data", data_bin, "--src-file", src, "--ref-file", ref], ["2 lines"]),
        ([teacher_ckpt, "--data", data_bin, "--src-file", src, "--ref-file", empty], ["empty"]),
        ([teacher_ckpt, "--data", data_bin, "--src-file", src], ["--ref-file"]),
        ([teacher_ckpt, "--data", data_bin, "--beam", 0], ["--beam 0"]),
        ([teacher_ckpt, "--data", data_bin, "--max-tokens", -5], ["--max-tokens -5"]),
    ]
    for argv, expected in cases:
        code, out, err = evokd_main("evaluate", *argv)
        assert code == 2, (argv, err)
        assert err.startswith("evokd evaluate: error:") and err.count("\n") == 1, err
        for text in expected:
            assert text in err, (argv, err)
        assert not list(teacher_ckpt.parent.glob("*.generate.log")) and out == ""


# --- the results report --------------------------------------------------------------------

SIGNATURES = {
    "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:2.6.0",
    "sacrebleu_signature": "nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0",
    "chrf_signature": "nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|version:2.6.0",
}


def stage(name, parameters, teacher=None, init_from=None, scores=None, **extra):
    bleu, sacre, chrf = scores or (None, None, None)
    row = dict(stage=name, architecture="transformer_evokd_student", parameters=parameters)
    row.update(teacher=teacher, init_from=init_from, bleu=bleu, sacrebleu=sacre, chrf=chrf)
    row.update(updates=extra.get("updates"), wall_seconds=extra.get("wall_seconds"))
    return {**row, **(SIGNATURES if bleu is not None else {})}


def test_report_writes_table_json_and_plot(tmp_path):
    rows = [
        stage("student", 1_234_567, scores=(30.111, 29.5, 55.25), updates=1000, wall_seconds=65),
        stage("senior_teacher", 9_876_543, scores=(34.32, 33.0, 58.5), updates=2000),
        stage("junior_student", 1_234_567, "senior_teacher", scores=(31.0, 30.0, 56.0)),
        stage("master_student", 1_234_567, "senior_teacher", "junior_student", updates=500),
    ]
    paths = write_report(tmp_path / "results", rows, title="tiny EKD", command=["evokd", "x"])
    assert sorted(p.name for p in paths.values()) == ["results.json", "results.md", "results.png"]
    markdown = paths["markdown"].read_text(encoding="utf-8")
    table = markdown_table(rows)
    assert table in markdown and "# tiny EKD" in markdown
    lines = {line.split(" | ")[0][2:]: line for line in table.splitlines()[2:]}
    assert lines["student"] == (
        "| student | 1,234,567 | - | - | 30.11 | 29.50 | 55.25 | 1,000 | 1m 05s |"
    )
    assert "| 9,876,543 | - | - | 34.32 | 33.00 | 58.50 | 2,000 | - |" in lines["senior_teacher"]
    assert "| senior_teacher | - | 31.00 | 30.00 | 56.00 |" in lines["junior_student"]
    assert lines["master_student"] == (
        "| master_student | 1,234,567 | senior_teacher | junior_student | - | - | - | 500 | - |"
    )
    for signature in SIGNATURES.values():
        assert f"`{signature}`" in markdown
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["rows"] == rows and record["command"] == "evokd x"
    assert record["signatures"]["chrf"] == [SIGNATURES["chrf_signature"]]
    png = paths["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_report_without_scores_still_plots(tmp_path):
    paths = write_report(tmp_path, [stage("student", 1000)])
    assert "| student | 1,000 | - | - | - | - | - | - | - |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="repeat"):
        write_report(tmp_path, [stage("a", 1), stage("a", 2)])
