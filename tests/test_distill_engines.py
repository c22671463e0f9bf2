"""`evokd distill-data --engine ctranslate2`: a fairseq teacher converted once (cached by
content) and decoded by CTranslate2, against the same teacher decoded by fairseq.

The session's teacher (two epochs) writes "a a a ..." for every sentence, on which any two
engines agree; the teacher here is trained for 15 epochs at a higher learning rate so that
its 200 translations are mostly distinct sentences of varied length (measured: 169 distinct,
and CTranslate2 float32 gives fairseq's hypothesis for all 200 on one CPU type, for 198 on
another).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from evokd import cli, files
from evokd.distill import ct2
from evokd.distill import seqkd as dd
from evokd.distill.any_teacher import distill_any
from evokd.errors import EvokdError
from tests import utils

# As in test_distill_data: several batches, each with its own length limit, reached.
MAX_TOKENS = 600
DECODING = ["--beam", "5", "--max-len-a", "0.8", "--max-len-b", "4", "--max-tokens", "600"]
SETTINGS = dict(beam=5, max_len_a=0.8, max_len_b=4, max_tokens=MAX_TOKENS, cpu=True)
TRAIN_SRC = ["train.de-en.de.bin", "train.de-en.de.idx"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_cache(tmp_path_factory):
    """One intra-op thread for both engines, and a converted-model cache of this module's."""
    threads = torch.get_num_threads()
    cache = tmp_path_factory.mktemp("ct2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv(ct2.CACHE_ENV, str(cache))
        torch.set_num_threads(1)
        yield cache
    torch.set_num_threads(threads)


def distill(teacher, data, out, *flags):
    code, output = utils.evokd_in_process(
        ["distill-data", "--teacher", teacher, "--data", data, "--out", out, *DECODING, "--cpu"]
        + list(flags),
        check=False,
    )
    return code, output


@pytest.fixture(scope="module")
def teacher_ckpt(data_bin, tmp_path_factory):
    """A tiny teacher (width 48) that translates: 15 epochs at learning rate 5e-3."""
    save_dir = tmp_path_factory.mktemp("teacher")
    flags = ["--encoder-embed-dim", "48", "--decoder-embed-dim", "48", "--lr", "5e-3"]
    flags += ["--no-epoch-checkpoints"]
    utils.train(data_bin, save_dir, "transformer_evokd_tiny_senior", extra=flags, epochs=15)
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def outputs(data_bin, teacher_ckpt, tmp_path_factory):
    """The teacher's distilled data by fairseq and by CTranslate2 float32."""
    root = tmp_path_factory.mktemp("engines")
    for name, flags in (("fairseq", ["--engine", "fairseq"]), ("ct2", ["--engine", "ctranslate2"])):
        code, output = distill(teacher_ckpt, data_bin, root / name, *flags)
        assert code == 0, output
    return root / "fairseq", root / "ct2"


def lines(folder):
    return (folder / "text" / "train.distilled.en").read_text(encoding="utf-8").splitlines()


def info(folder):
    return json.loads((folder / "distill.json").read_text())


def entries(cache):
    return sorted(p.name for p in cache.iterdir())


def test_ct2_float32_translates_like_fairseq(outputs, data_bin, teacher_ckpt):
    fairseq, ctranslate2 = outputs
    ours, theirs = lines(ctranslate2), lines(fairseq)
    same = sum(a == b for a, b in zip(ours, theirs))
    assert len(ours) == len(theirs) == 200 and same >= 190  # measured: 200
    assert len(set(theirs)) > 150 and len({len(h.split()) for h in theirs}) > 8
    for name in TRAIN_SRC:  # every pair keeps its source: the hypotheses are aligned
        assert (ctranslate2 / name).read_bytes() == (data_bin / name).read_bytes()
    # A line that differs comes from a near-tie at some step of the search, which each
    # engine's sums resolve their own way; the beams then part and can end on hypotheses
    # whose scores differ by more than a tie, either way (measured: no line differs on one
    # CPU type; on another, 2 of 200, 0.05 and 0.27 nats per token apart, one engine the
    # better on each). Both stay hypotheses the teacher scores alike, within 0.5 nats per
    # token; a converted model that scored other tokens would differ on most lines.
    differ = [i for i in range(200) if ours[i] != theirs[i]]
    if differ:
        ours_nll, theirs_nll = _nll(teacher_ckpt, data_bin, differ, ours, theirs)
        for i in differ:
            assert ours_nll[i] == pytest.approx(theirs_nll[i], abs=0.5)


def test_only_sentences_at_the_length_limit_are_scored_again(outputs, data_bin, teacher_ckpt):
    """The shortcut against its definition: rescoring only the sentences with a hypothesis
    at the length limit picks what rescoring every sentence's final beam picks (a limit of
    0 puts every sentence at it), and this data reaches the limit."""
    from evokd.core.inference import Translator, choose_device

    decoding = {"beam": 5, "lenpen": 1.0, "max_len_a": 0.8, "max_len_b": 4}
    translator = Translator(teacher_ckpt, data_bin, "train", decoding, choose_device(True))
    model = json.loads((outputs[1] / "distill.json").read_text())["ct2_model"]["folder"]
    decoder = ct2.CT2Decoder(model, data_bin, "train", "de-en", decoding,
                             translator.generator.max_len, cpu=True)  # fmt: skip
    at_limit = sentences = 0
    for batch in translator.plan_batches(MAX_TOKENS):
        sources, results, max_len = decoder.search(batch)
        shortcut, every = decoder.best(sources, results, max_len), decoder.best(sources, results, 0)
        assert [h for h, _ in shortcut] == [h for h, _ in every]
        assert [s for _, s in shortcut] == pytest.approx([s for _, s in every], abs=1e-3)
        at_limit += sum(any(len(h) >= max_len for h in r.hypotheses) for r in results)
        sentences += len(batch)
    assert sentences == 200 and 0 < at_limit < 200


def test_distill_json_records_the_engine(outputs, one_thread_and_cache):
    import ctranslate2

    fairseq, ctranslate2_out = info(outputs[0]), info(outputs[1])
    assert fairseq["fingerprint"]["engine"] == "fairseq" and "ct2_model" not in fairseq
    fingerprint = ctranslate2_out["fingerprint"]
    assert fingerprint["engine"] == "ctranslate2"
    assert fingerprint["ct2_quantization"] == "float32"
    assert fingerprint["ctranslate2"] == ctranslate2.__version__
    model = ctranslate2_out["ct2_model"]
    assert model["quantization"] == "float32" and model["convert_seconds"] is not None
    folder = one_thread_and_cache / entries(one_thread_and_cache)[0]
    assert model["folder"] == str(folder)
    assert model["model_sha256"] == files.file_digest(folder / "model.bin")
    assert folder.name.startswith(fingerprint["teacher_sha256"][:24])
    assert ctranslate2_out["decoding"] == fairseq["decoding"]


def test_converted_by_content_once(outputs, data_bin, teacher_ckpt, tmp_path, one_thread_and_cache):
    """A second distillation reuses the conversion; a copy of the checkpoint finds it too,
    other weights or another quantization make another entry; the entry equals `evokd
    export --ct2`'s model, made independently."""
    cache = one_thread_and_cache
    (entry,) = entries(cache)
    mtime = (cache / entry / "model.bin").stat().st_mtime_ns
    copy = tmp_path / "copy.pt"
    copy.write_bytes(teacher_ckpt.read_bytes())
    code, output = distill(copy, data_bin, tmp_path / "again", "--engine", "ctranslate2")
    assert code == 0, output
    again = info(tmp_path / "again")["ct2_model"]
    assert again["convert_seconds"] is None and again["folder"] == str(cache / entry)
    assert (cache / entry / "model.bin").stat().st_mtime_ns == mtime
    assert lines(tmp_path / "again") == lines(outputs[1])

    exported = tmp_path / "exported"
    assert (
        utils.evokd_in_process(
            [
                "export",
                "--ct2",
                teacher_ckpt,
                exported,
                "--data",
                data_bin,
                "--quantization",
                "float32",
            ]
        )[0]
        == 0
    )
    assert files.file_digest(exported / "model.bin") == again["model_sha256"]

    other = tmp_path / "other.pt"
    state = torch.load(teacher_ckpt, weights_only=True)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, other)
    digest = files.file_digest(other)
    folder, _, seconds = ct2.converted_model(other, digest, data_bin, "de", "en", "float32")
    assert seconds is not None and folder.name.startswith(digest[:24])
    folder, _, seconds = ct2.converted_model(other, digest, data_bin, "de", "en", "int8")
    assert seconds is not None and folder.name.split("-")[2] == "int8"
    assert len(entries(cache)) == 3 and not [n for n in entries(cache) if "partial" in n]


def test_damaged_or_unfinished_conversion_is_not_reused(data_bin, teacher_ckpt, tmp_path):
    digest = files.file_digest(teacher_ckpt)
    folder, record, _ = ct2.converted_model(
        teacher_ckpt, digest, data_bin, "de", "en", "float32", tmp_path
    )
    killed = tmp_path / f"{folder.name}.partial-999999999"  # no such process
    (killed / "model.bin").parent.mkdir()
    (killed / "model.bin").write_bytes(b"half")
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(100)
    again, _, seconds = ct2.converted_model(
        teacher_ckpt, digest, data_bin, "de", "en", "float32", tmp_path
    )
    assert again == folder and seconds is not None and not killed.exists()
    assert files.file_digest(folder / "model.bin") == record["model_sha256"]


def test_another_engine_is_not_reused(outputs, data_bin, teacher_ckpt):
    _, ctranslate2 = outputs
    code, output = distill(teacher_ckpt, data_bin, ctranslate2, "--engine", "fairseq")
    assert code == 2 and "engine: 'ctranslate2' there, 'fairseq' now" in output
    code, output = distill(
        teacher_ckpt, data_bin, ctranslate2, "--engine", "ctranslate2", "--ct2-quantization", "int8"
    )
    assert code == 2 and "ct2_quantization: 'float32' there, 'int8' now" in output
    code, output = distill(teacher_ckpt, data_bin, ctranslate2, "--engine", "ctranslate2")
    assert code == 0 and "nothing to do" in output


def test_killed_run_resumes_to_the_same_result(outputs, data_bin, teacher_ckpt, tmp_path):
    out = tmp_path / "kd"
    settings = dict(SETTINGS, chunk_size=64, engine="ctranslate2")
    with pytest.MonkeyPatch.context() as patch:
        utils.interrupt_on_call(patch, ct2.CT2Decoder, "__call__", 2)
        with pytest.raises(KeyboardInterrupt):
            dd.distill_data(teacher_ckpt, data_bin, out, **settings)
    assert sorted(p.name for p in (tmp_path / "kd.partial" / "chunks").iterdir()) == ["chunk00000"]
    with pytest.raises(EvokdError, match="engine: 'ctranslate2' there, 'fairseq' now"):
        dd.distill_data(teacher_ckpt, data_bin, out, **dict(settings, engine="fairseq"))
    # Resumed through the chain's entry point, the engine given as a seqkd: option.
    seqkd = {k: v for k, v in settings.items() if k != "cpu"}
    distill_any(teacher_ckpt, data_bin, out, cpu=True, where="stage s: seqkd", **seqkd)
    names = ["train.de-en.en.bin", "train.de-en.en.idx", "text/train.distilled.en"]
    for name in names:
        assert (out / name).read_bytes() == (outputs[1] / name).read_bytes()


def test_flag_errors(data_bin, teacher_ckpt, tmp_path, monkeypatch):
    flags = ("--engine", "fairseq", "--ct2-quantization", "int8")
    code, output = distill(teacher_ckpt, data_bin, tmp_path / "a", *flags)
    assert code == 2 and "--ct2-quantization: only with --engine ctranslate2" in output
    folder = tmp_path / "opus-mt"  # a CTranslate2 model folder: decoded by its own engine
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"")
    code, output = distill(folder, data_bin, tmp_path / "a", "--engine", "ctranslate2")
    assert code == 2 and "only for a fairseq checkpoint teacher" in output
    code, output = distill(folder, data_bin, tmp_path / "a", "--loop-fallback", "3")
    assert code == 2 and "--loop-fallback: only for a fairseq checkpoint teacher" in output
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails
    code, output = distill(teacher_ckpt, data_bin, tmp_path / "a", "--engine", "ctranslate2")
    assert code == 2 and "--engine ctranslate2" in output and "pip install" in output
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()


def test_the_engine_when_none_is_named(data_bin, teacher_ckpt, tmp_path, monkeypatch):
    """distill-data and a chain's seqkd step decode a checkpoint through CTranslate2 where it
    is installed (its folder named for it), through fairseq where it is not; a plan's
    `engine:` wins; a model folder keeps its own engine."""
    from evokd.chain.layout import Layout
    from evokd.chain.plan import load_plan
    from evokd.cli import distill_data as cli_distill

    def resolved(*flags):
        args = cli.build_parser().parse_args(
            ["distill-data", "--teacher", str(teacher_ckpt), "--data", str(data_bin),
             "--out", str(tmp_path / "x"), *flags])  # fmt: skip
        cli_distill.check_engine(args)
        return args.engine

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        f"name: e\ndata: {data_bin}\nstages:\n"
        "  - {name: t, arch: transformer_evokd_tiny_senior, max_epoch: 1}\n"
        "  - {name: a, arch: transformer_evokd_tiny_student, max_epoch: 1, seqkd: {teacher: t}}\n"
        "  - {name: b, arch: transformer_evokd_tiny_student, max_epoch: 1,\n"
        "     seqkd: {teacher: t, engine: fairseq}}\n"
        "  - {name: c, arch: transformer_evokd_tiny_student, max_epoch: 1,\n"
        "     seqkd: {teacher: t, engine: fairseq, loop-fallback: 3}}\n",
        encoding="utf-8",
    )
    plan = load_plan(str(plan_file))
    layout = Layout(plan, checkpoints=tmp_path / "ck")

    def folders():
        return [Path(layout.stage_data(plan.stage(n))).name for n in ("a", "b")]

    assert resolved() == "ctranslate2" and resolved("--engine", "fairseq") == "fairseq"
    assert folders() == [
        f"{data_bin.name}.seqkd-e-t.ctranslate2-float32",
        f"{data_bin.name}.seqkd-e-t",
    ]
    # other targets (looping ones replaced by their references): another folder
    assert (
        Path(layout.stage_data(plan.stage("c"))).name == f"{data_bin.name}.seqkd-e-t+loop-fallback3"
    )
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # not installed
    assert resolved() == "fairseq"
    assert folders() == [f"{data_bin.name}.seqkd-e-t"] * 2


def _nll(teacher, data, ids, *hypotheses):
    """The teacher's mean NLL per token of each of ``hypotheses`` (lines) of examples ids."""
    from evokd.core.inference import Translator, score_targets

    decoding = {"beam": 5, "max_len_a": 0.8, "max_len_b": 4}
    translator = Translator(teacher, data, "train", decoding, torch.device("cpu"))
    vocab = translator.task.target_dictionary
    sources = {i: translator.dataset[i]["source"][:-1] for i in ids}

    def tokens(line):
        return torch.tensor([vocab.index(w) for w in line.split()])

    return [score_targets(translator, sources, {i: tokens(h[i]) for i in ids}) for h in hypotheses]
