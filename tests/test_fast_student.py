"""Deep-encoder / shallow-decoder students, and `evokd bench-translate`'s deployment figures.

The registered fast students build with their layer splits; micro versions of them (the
registered depths at micro widths) train for an epoch, export to CTranslate2 and
translate there as in fairseq; the fixed-length cost measurement gives outputs of exactly
the references' lengths in both engines; latency comes from one-sentence calls.
"""

import json

import pytest

from evokd import cli
from evokd.deploy import bench_translate, engines, timing, workload
from evokd.errors import EvokdError
from tests import utils

ctranslate2 = pytest.importorskip("ctranslate2")

# Micro widths; the depths stay those of each architecture.
MICRO = [
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]  # fmt: skip
FAST = {  # architecture: (encoder layers, decoder layers, width, pre-norm)
    "transformer_evokd_tiny_student_5_1": (5, 1, 64, False),
    "transformer_evokd_tiny_student_5_1_prenorm": (5, 1, 64, True),
    "transformer_evokd_student_6_1": (6, 1, 128, False),
}
MAX_LEN = 20
N_TEST = 30


def _build(data, arch, extra=()):
    from fairseq import tasks

    from evokd.core.runtime import parse_config

    cfg = parse_config([data, "--user-dir", utils.EVOKD_DIR, "--arch", arch, *extra])
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def _train(data, save_dir, arch, extra=()):
    """One epoch of a micro model of ``arch``; returns its checkpoint_last.pt."""
    argv = [str(data), "--user-dir", utils.EVOKD_DIR]
    argv += ["--arch", arch, "--save-dir", str(save_dir), *MICRO, *utils.TRAIN_FLAGS]
    argv += ["--max-epoch", "1", "--criterion", "label_smoothed_cross_entropy", *extra]
    code, out = utils.train_in_process(argv)
    assert code == 0, out[-2000:]
    records = utils.parse_json_log(out)
    assert utils.updates(records), out[-2000:]  # it trained at least a step
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "multi30k.de-en"
    argv = ["prepare", "multi30k", "--train-size", "300", "--eval-size", str(N_TEST)]
    assert cli.main(argv + ["--vocab-size", "400", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def models(prepared, tmp_path_factory):
    """teacher, 3+3 student, 5+1 student and 6+1 student."""
    root = tmp_path_factory.mktemp("models")
    jobs = [
        ("teacher", "transformer_evokd_tiny_senior", ["--encoder-embed-dim", "48",
                                                      "--decoder-embed-dim", "48"]),
        ("student_3_3", "transformer_evokd_tiny_student", []),
        ("student_5_1", "transformer_evokd_tiny_student_5_1", []),
        ("student_6_1", "transformer_evokd_student_6_1", []),
    ]  # fmt: skip
    return {name: _train(prepared, root / name, arch, extra) for name, arch, extra in jobs}


def _bench(argv, out):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main([str(a) for a in argv + ["--json", out]])
    assert code == 0, buffer.getvalue()
    with open(out, encoding="utf-8") as f:
        return json.load(f), buffer.getvalue()


@pytest.fixture(scope="module")
def greedy(prepared, models, tmp_path_factory):
    """bench-translate, beam 1, the three students, everything also in CTranslate2 float32."""
    root = tmp_path_factory.mktemp("greedy")
    argv = ["bench-translate", "--teacher", models["teacher"], "--data", prepared]
    for name in ("student_3_3", "student_5_1", "student_6_1"):
        argv += ["--student", models[name]]
    argv += ["--beam", "1", "--max-len", MAX_LEN, "--batch-size", "8", "--threads", "1"]
    argv += ["--student-ct2", "float32", "--teacher-ct2", "float32", "--cpu"]
    argv += ["--latency-sentences", "4", "--work-dir", root / "work"]
    result, printed = _bench(argv, root / "bench.json")
    return result, printed, root


# --- the architectures -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(FAST))
def test_fast_students_have_their_split(prepared, arch):
    encoder, decoder, width, prenorm = FAST[arch]
    model = _build(prepared, arch)
    assert (len(model.encoder.layers), len(model.decoder.layers)) == (encoder, decoder)
    assert model.encoder.embed_tokens.embedding_dim == width
    layers = [*model.encoder.layers, *model.decoder.layers]
    assert [layer.normalize_before for layer in layers] == [prenorm] * (encoder + decoder)
    # pre-norm stacks end with a layer norm of their own (fairseq adds it), post-norm do not
    assert (model.encoder.layer_norm is not None, model.decoder.layer_norm is not None) == (
        prenorm,
        prenorm,
    )
    assert model.decoder.layers[0].fc1.out_features == (512 if width == 64 else 1024)
    # flags still override the defaults
    model = _build(prepared, arch, ["--decoder-layers", "2"])
    assert len(model.decoder.layers) == 2


def test_fast_tiny_student_is_no_larger_than_the_tiny_student(prepared):
    def parameters(arch):
        return sum(p.numel() for p in _build(prepared, arch).parameters())

    fast = parameters("transformer_evokd_tiny_student_5_1")
    assert fast <= parameters("transformer_evokd_tiny_student")
    # at the paper's size the 6+1 student is smaller than the 6+6 one
    assert parameters("transformer_evokd_student_6_1") < parameters("transformer_evokd_student")


# --- export and translation --------------------------------------------------------------------


def test_fast_students_export_and_translate_like_fairseq(greedy):
    """Greedy search with the same weights in float32: the same hypotheses (a near-tie may
    flip between engines: 3 of 30 allowed, as in test_export)."""
    result, _, _ = greedy
    rows = {r["system"]: r for r in result["rows"]}
    for shape in ("3+3 (32)", "5+1 (32)", "6+1 (32)"):
        row = rows[f"student {shape} (CTranslate2 float32)"]
        assert row["same_as_fairseq"] >= 27 / N_TEST, row
        assert row["model_bytes"] > 0
    assert rows["teacher (CTranslate2 float32)"]["same_as_fairseq"] >= 27 / N_TEST
    # the exported architectures are the registered ones
    work = greedy[2] / "work"
    info = json.loads((work / "student_5_1_32-ct2-float32" / "evokd_export.json").read_text())
    assert info["architecture"] == "transformer_evokd_tiny_student_5_1"


def test_bench_reports_throughput_latency_and_files(greedy):
    result, printed, root = greedy
    rows = result["rows"]
    assert [r["system"] for r in rows] == [
        "teacher (fairseq)",
        "student 3+3 (32) (fairseq)",
        "student 5+1 (32) (fairseq)",
        "student 6+1 (32) (fairseq)",
        "student 3+3 (32) (CTranslate2 float32)",
        "student 5+1 (32) (CTranslate2 float32)",
        "student 6+1 (32) (CTranslate2 float32)",
        "teacher (CTranslate2 float32)",
    ]
    base, reference = rows[0], rows[1]
    for row in rows:
        assert row["beam"] == 1 and row["system"] in printed
        # tokens per second over the sentences' time (fairseq: its rate, seconds rounded)
        seconds = N_TEST / row["sentences_per_second"]
        assert row["target_tokens_per_second"] == pytest.approx(
            row["target_tokens"] / seconds, rel=0.01, abs=0.1
        )
        assert row["target_tokens"] >= N_TEST  # at least one token a sentence
        assert 0 < row["latency_median_ms"] <= row["latency_p90_ms"]
        # the ratios are over the teacher in fairseq and the first student in fairseq
        speedup = row["sentences_per_second"] / base["sentences_per_second"]
        assert row["speedup"] == pytest.approx(speedup, abs=1e-3)
        latency = base["latency_median_ms"] / row["latency_median_ms"]
        assert row["latency_speedup"] == pytest.approx(latency, abs=1e-3)
        assert row["bleu_lost"] == pytest.approx(reference["bleu"] - row["bleu"], abs=1e-4)
        assert 0 <= row["bleu"] <= 100
    assert result["meta"]["beams"] == [1] and result["meta"]["latency_sentences"] == 4
    # the table and the plot beside the JSON
    assert (root / "bench.md").read_text().startswith("| system | sentences/s | speed-up |")
    assert (root / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- fixed lengths -----------------------------------------------------------------------------


def test_fixed_length_outputs_have_the_reference_lengths(prepared, models):
    """Both engines, beam 5 and greedy, every batch of the plan: exactly L tokens."""
    from evokd.deploy.export import export_ct2

    run = workload.Workload(prepared, "test", "de", "en", batch_size=8, max_len=MAX_LEN,
                                threads=1, device="cpu")  # fmt: skip
    run.fix_lengths()
    assert sorted(i for _, ids in run.batches for i in ids) == list(range(N_TEST))
    assert all(len(ids) <= 8 for _, ids in run.batches)
    student = models["student_5_1"]
    folder = prepared.parent / "s51-int8"
    export_ct2(student, folder, prepared, "int8", force=True)
    ct2 = engines.load_ct2(folder, threads=1)
    for beam in (5, 1):
        fairseq = engines.fairseq_translator(student, prepared, "test", beam, "cpu")
        for call in (run.fairseq_call(fairseq), run.ct2_call(ct2, beam)):
            hyps, _ = run.batched(call, run.batches)
            assert [len(h) for h in hyps] == run.lengths
    # free to stop, the model gives other lengths: the lengths above were forced
    free, _ = engines.translate_fairseq(fairseq, list(range(N_TEST)), max_len=MAX_LEN)
    assert [len(h) for h in free] != run.lengths


@pytest.fixture(scope="module")
def fixed(prepared, models, tmp_path_factory):
    root = tmp_path_factory.mktemp("fixed")
    argv = ["bench-translate", "--fixed-length", "--teacher", models["teacher"]]
    argv += ["--student", models["student_6_1"]]
    argv += ["--data", prepared, "--beam", "5", "1", "--batch-size", "8", "--threads", "1"]
    argv += ["--student-ct2", "int8", "--teacher-ct2", "int8", "--cpu"]
    argv += ["--latency-sentences", "3", "--profile", root / "profile", "--repeat", "2"]
    result, printed = _bench(argv, root / "fixed.json")
    return result, printed, root


def test_fixed_length_is_a_cost_measurement(fixed, prepared):
    result, printed, root = fixed
    meta, rows = result["meta"], result["rows"]
    assert meta["fixed_length"] and "no BLEU" in meta["mode"] and meta["max_len"] is None
    assert meta["repeat"] == 2 and "fastest of 2" in meta["timing"]
    assert "cost measurement" in printed and "BLEU |" not in printed
    assert [r["beam"] for r in rows] == [5] * 4 + [1] * 4
    for row in rows:
        assert row["bleu"] is None and row["bleu_lost"] is None
        if row["engine"] == "ctranslate2":  # the same lengths as fairseq's, sentence by sentence
            assert row["same_length_as_fairseq"] == 1.0
    # every system did the same work: the references' target tokens
    lengths = workload.reference_lengths(prepared, "test", "de", "en")
    assert {r["target_tokens"] for r in rows} == {sum(lengths)}
    assert (root / "fixed.png").is_file() and (root / "fixed.md").is_file()
    profiles = sorted(p.name for p in (root / "profile").iterdir())
    assert profiles == sorted(f"{n}.beam{b}.txt" for n in ("teacher", "student") for b in (5, 1))
    assert "inference_step" in (root / "profile" / "teacher.beam5.txt").read_text()


# --- latency -----------------------------------------------------------------------------------


def test_latency_comes_from_one_sentence_calls(prepared, models, monkeypatch):
    """The warm-up and every latency call translate one sentence, the first N in order."""
    calls = {"fairseq": [], "ct2": []}
    real_fairseq, real_ct2 = engines.translate_fairseq, engines.translate_ct2

    def fairseq(translator, ids, **kwargs):
        calls["fairseq"].append(list(ids))
        return real_fairseq(translator, ids, **kwargs)

    def ct2(translator, source, **kwargs):
        calls["ct2"].append(list(source))
        return real_ct2(translator, source, **kwargs)

    monkeypatch.setattr(engines, "translate_fairseq", fairseq)
    monkeypatch.setattr(engines, "translate_ct2", ct2)
    result = bench_translate.run_bench_translate(
        models["teacher"], [models["student_5_1"]], prepared, beams=[1], batch_size=8,
        threads=1, cpu=True, fixed_length=True, latency_sentences=4, student_ct2=["int8"],
    )  # fmt: skip
    source = workload.source_tokens(prepared, "test", "de", "en")
    n_batches = len(workload.fixed_length_batches(
        workload.reference_lengths(prepared, "test", "de", "en"),
        [len(s) for s in source], 8))  # fmt: skip
    latency_ids = [[0], [0], [1], [2], [3]]  # one untimed call, then one call per sentence
    assert calls["fairseq"][:5] == latency_ids  # the teacher
    assert calls["fairseq"][5 + n_batches : 10 + n_batches] == latency_ids  # the student
    assert len(calls["fairseq"]) == 2 * (5 + n_batches)
    assert calls["ct2"][:5] == [[source[i[0]]] for i in latency_ids]
    assert len(calls["ct2"]) == 5 + n_batches
    assert all(r["latency_median_ms"] > 0 for r in result["rows"])


def test_repeats_keep_each_systems_fastest_round():
    def row(sps, median, p90):
        return {"sentences_per_second": sps, "latency_median_ms": median, "latency_p90_ms": p90}

    rounds = [[row(10, 5.0, 9.0), row(30, 2.0, 4.0)], [row(12, 6.0, 8.0), row(20, 1.0, 5.0)]]
    assert timing.fastest(rounds) == [row(12, 5.0, 8.0), row(30, 1.0, 4.0)]


def test_compare_returns_new_rows_with_the_ratios():
    def row(model, engine, sps, median, bleu, **extra):
        return {"model": model, "engine": engine, "sentences_per_second": sps,
                "latency_median_ms": median, "bleu": bleu, "checkpoint": "c", **extra}  # fmt: skip

    rows = [
        row("teacher", "fairseq", 10.0, 8.0, 30.0),
        row("student", "fairseq", 20.0, 4.0, 28.0, hypotheses_ids=[[1, 2], [3]]),
        row("student", "ctranslate2", 50.0, None, 27.5, hypotheses_tokens=[["a", "b"], []]),
    ]
    before = json.loads(json.dumps(rows))
    found = timing.compare(rows, keep=False)
    assert rows == before  # the rows given are left as they were
    assert [r["speedup"] for r in found] == [1.0, 2.0, 5.0]
    assert [r["latency_speedup"] for r in found] == [1.0, 2.0, None]
    assert [r["bleu_lost"] for r in found] == [-2.0, 0.0, 0.5]
    assert found[2]["same_length_as_fairseq"] == 0.5 and found[2]["checkpoint"] is None
    assert all("hypotheses_ids" not in r and "hypotheses_tokens" not in r for r in found)


# --- errors ------------------------------------------------------------------------------------


def test_bad_flags_are_named(prepared, models):
    args = (models["teacher"], [models["student_5_1"]], prepared)
    with pytest.raises(EvokdError, match="--profile: only with --fixed-length"):
        bench_translate.run_bench_translate(*args, profile_dir="p")
    with pytest.raises(EvokdError, match="--teacher-ct2 int4: expected one of"):
        bench_translate.run_bench_translate(*args, teacher_ct2=["int4"])
    with pytest.raises(EvokdError, match="--beam: give at least one"):
        bench_translate.run_bench_translate(*args, beams=[])
    with pytest.raises(EvokdError, match="--latency-sentences"):
        bench_translate.run_bench_translate(*args, latency_sentences=-1)
