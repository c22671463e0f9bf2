"""Sequence-level KD data: equal to fairseq-generate, readable by fairseq-train, resumable."""

import json
import re
import shutil

import pytest
import torch

from evokd import cli
from evokd import files as steps
from evokd.distill import seqkd as dd
from evokd.errors import EvokdError
from tests import utils

# Small batches: several batches, each with its own maximum length (A * widest source + B),
# which the tiny teacher's hypotheses reach; A and B below the defaults (1.2, 10) for speed.
MAX_TOKENS = 600
DECODING = ["--beam", "5", "--max-len-a", "0.8", "--max-len-b", "4"]
SPLIT_FILES = [f"{s}.de-en.{lang}.{ext}" for s in ("valid", "test") for lang in ("de", "en")
               for ext in ("bin", "idx")]  # fmt: skip
TRAIN_SRC = ["train.de-en.de.bin", "train.de-en.de.idx"]
TRAIN_TGT = ["train.de-en.en.bin", "train.de-en.en.idx"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(teacher_ckpt):
    """One intra-op thread, here and in fairseq-generate/-train: the same arithmetic in both,
    and no spinning threads on a shared CPU (the session teacher is trained before)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(data_bin, tmp_path_factory):
    """The session data with a text/ folder, as `evokd prepare` leaves one."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    shutil.copytree(data_bin, root)
    shutil.copytree(data_bin.parent / "text", root / "text")
    (root / "text" / "prepare.json").write_text('{"corpus": "test"}\n')
    return root


@pytest.fixture(scope="module")
def distilled(prepared, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "data"
    code = cli.main(
        ["distill-data", "--teacher", str(teacher_ckpt), "--data", str(prepared), "--out", str(out)]
        + ["--engine", "fairseq"]  # fairseq's beam search, compared with fairseq-generate's
        + DECODING
        + ["--max-tokens", str(MAX_TOKENS), "--cpu"]
    )
    assert code == 0
    return out


def _bytes(folder, names):
    return {name: (folder / name).read_bytes() for name in names}


def _strings(folder, lang="en"):
    """The sentences of the training subset's side ``lang``, as fairseq reads them."""
    from fairseq.data import Dictionary, data_utils

    vocab = Dictionary.load(str(folder / f"dict.{lang}.txt"))
    items = data_utils.load_indexed_dataset(str(folder / f"train.de-en.{lang}"), vocab)
    assert all(item[-1] == vocab.eos() and (item[:-1] != vocab.eos()).all() for item in items)
    return [vocab.string(item) for item in items]


def test_targets_equal_fairseq_generate(distilled, prepared, teacher_ckpt):
    out = utils.generate_in_process(
        [str(prepared), "--user-dir", utils.EVOKD_DIR, "--path", str(teacher_ckpt)]
        + ["--gen-subset", "train", "--max-tokens", str(MAX_TOKENS), *DECODING]
        + ["--required-batch-size-multiple", "1", "--cpu"]
    )
    generated = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M))
    assert len(generated) == 200
    expected = [generated[str(i)] for i in range(200)]
    assert _strings(distilled) == expected
    text = (distilled / "text" / "train.distilled.en").read_text(encoding="utf-8")
    assert text.splitlines() == expected
    # The tiny teacher's hypotheses run to the maximum length of their batch.
    assert len({len(h.split()) for h in expected}) > 3


def test_loops_are_sequences_of_one_to_three_tokens_repeated():
    assert dd.loops([4, 5, 5, 5, 6], 3) and not dd.loops([4, 5, 5, 6, 5], 3)
    assert dd.loops([1, 2, 1, 2, 1, 2], 3) and not dd.loops([1, 2, 1, 2], 3)
    assert dd.loops([9, 1, 1, 2, 1, 1, 2, 1, 1, 2, 9], 3)  # "1 1 2" three times
    assert not dd.loops([1, 2, 3, 4] * 3, 3)  # four tokens: longer than a loop
    assert dd.loops([7, 7], 2) and not dd.loops([], 2)


def _looping(line, times=3):
    """The same rule on the text, by a regular expression: 1 to 3 words, ``times`` in a row."""
    pattern = r"(?:^| )((?:\S+ ){0,2}\S+)(?: \1){" + str(times - 1) + r"}(?= |$)"
    return re.search(pattern, line) is not None


def test_looping_targets_fall_back_to_their_references(distilled, prepared, teacher_ckpt, tmp_path):
    out = tmp_path / "fallback"
    info = dd.distill_data(
        teacher_ckpt, prepared, out, beam=5, max_len_a=0.8, max_len_b=4, max_tokens=MAX_TOKENS,
        engine="fairseq", loop_fallback=14, cpu=True,
    )  # fmt: skip
    hyps, refs = _strings(distilled), _strings(prepared)
    # the tiny teacher writes "a a a ..." for every sentence: 14 in a row in some of them
    looping = [i for i, h in enumerate(hyps) if _looping(h, 14)]
    assert 0 < len(looping) < len(hyps)
    assert _strings(out) == [refs[i] if i in looping else h for i, h in enumerate(hyps)]
    assert info["replaced_by_reference"] == len(looping) and info["loop_fallback"] == 14
    assert info["fingerprint"]["loop_fallback"] == 14
    assert _bytes(out, TRAIN_SRC) == _bytes(prepared, TRAIN_SRC)  # the sources as they were
    with pytest.raises(EvokdError, match="made with other settings"):
        dd.distill_data(teacher_ckpt, prepared, out, beam=5, max_len_a=0.8, max_len_b=4,
                        max_tokens=MAX_TOKENS, engine="fairseq", cpu=True)  # fmt: skip
    with pytest.raises(EvokdError, match="--loop-fallback 1: expected 0"):
        dd.distill_data(teacher_ckpt, prepared, tmp_path / "x", loop_fallback=1)


def test_translation_settings_from_the_parser_are_the_composed_configs(data_bin):
    """The Translator's task and beam search are set up from fairseq-generate's parsed flags,
    without composing the whole FairseqConfig through Hydra: the settings are fairseq's
    composed config's, field for field."""
    import dataclasses

    from fairseq.dataclass.configs import GenerationConfig
    from fairseq.tasks.translation import TranslationConfig
    from omegaconf import OmegaConf

    from evokd.core.runtime import parse_config, translation_args

    flags = ["--beam=4", "--lenpen=0.6", "--max-len-a=1.2", "--max-len-b=10"]
    flags += ["--print-alignment=hard", "--max-source-positions=64"]
    args = translation_args(str(data_bin), "de", "en", flags)
    argv = [data_bin, "--task", "translation", "--source-lang", "de", "--target-lang", "en"]
    composed = parse_config(argv + flags, parser="generation")
    for config, node in (
        (TranslationConfig, composed.task),
        (GenerationConfig, composed.generation),
    ):
        expected = OmegaConf.to_container(node, resolve=True)
        found = config.from_namespace(args)
        names = [f.name for f in dataclasses.fields(config) if not f.name.startswith("_")]
        assert len(names) > 20
        assert {n: getattr(found, n) for n in names} == {n: expected[n] for n in names}
    assert (args.beam, args.max_source_positions, args.source_lang) == (4, 64, "de")


def test_everything_but_the_targets_is_copied(distilled, prepared):
    names = ["dict.de.txt", "dict.en.txt", "preprocess.log"] + SPLIT_FILES + TRAIN_SRC
    assert _bytes(distilled, names) == _bytes(prepared, names)
    for path in (prepared / "text").iterdir():
        assert (distilled / "text" / path.name).read_bytes() == path.read_bytes()
    assert _strings(distilled) != _strings(prepared)
    assert not distilled.with_name("data.partial").exists()
    info = json.loads((distilled / "distill.json").read_text())
    assert info["decoding"] == dict(beam=5, lenpen=1.0, max_len_a=0.8, max_len_b=4, max_tokens=600)
    assert info["examples"] == info["training_pairs"] == 200
    assert info["teacher_sha256"] == steps.file_digest(info["teacher"])
    lengths = [len(s.split()) for s in _strings(distilled)]
    assert info["hypothesis_avg_length"] == pytest.approx(sum(lengths) / 200, abs=1e-3)
    references = [len(s.split()) for s in _strings(prepared)]
    assert info["reference_avg_length"] == pytest.approx(sum(references) / 200, abs=1e-3)


def test_written_like_fairseq_preprocess(data_bin, tmp_path):
    """Rewriting the original targets through our writer gives the original files."""
    from fairseq.data import Dictionary, data_utils

    from evokd.data.folder import write_dataset

    vocab = Dictionary.load(str(data_bin / "dict.en.txt"))
    items = data_utils.load_indexed_dataset(str(data_bin / "train.de-en.en"), vocab)
    write_dataset(tmp_path / "train.de-en.en", list(items), len(vocab))
    assert _bytes(tmp_path, TRAIN_TGT) == _bytes(data_bin, TRAIN_TGT)


def test_killed_run_resumes_to_the_same_result(
    distilled, prepared, teacher_ckpt, tmp_path, monkeypatch
):
    out = tmp_path / "kd"
    partial = tmp_path / "kd.partial"
    settings = dict(max_len_a=0.8, max_len_b=4, max_tokens=MAX_TOKENS, chunk_size=64)
    settings.update(keep_references=True, cpu=True)
    real = utils.interrupt_on_call(monkeypatch, dd, "compute_chunk", 2)
    with pytest.raises(KeyboardInterrupt):
        dd.distill_data(teacher_ckpt, prepared, out, **settings)
    assert not out.exists()
    assert sorted(p.name for p in (partial / "chunks").iterdir()) == ["chunk00000"]

    with pytest.raises(EvokdError, match="other settings .*beam: 5 there, 4 now"):
        dd.distill_data(teacher_ckpt, prepared, out, beam=4, **settings)
    other = tmp_path / "other.pt"
    state = torch.load(teacher_ckpt, weights_only=True)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, other)
    with pytest.raises(EvokdError, match=f"teacher: {teacher_ckpt} .* there, {other}"):
        dd.distill_data(other, prepared, out, **settings)

    def counted(calls):
        monkeypatch.setattr(dd, "compute_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
        return calls

    resumed = counted([])
    info = dd.distill_data(teacher_ckpt, prepared, out, **settings)
    straight = counted([])
    dd.distill_data(teacher_ckpt, prepared, tmp_path / "straight", **settings)
    assert len(resumed) == len(straight) - 1 > 0  # the finished chunk was not redone
    assert not partial.exists() and info["training_pairs"] == 400
    # The real pairs, then the same sources with the targets of the uninterrupted run.
    real_src, real_tgt = _bytes(prepared, TRAIN_SRC), _bytes(prepared, TRAIN_TGT)
    assert (out / TRAIN_SRC[0]).read_bytes() == 2 * real_src[TRAIN_SRC[0]]
    teacher_tgt = (distilled / TRAIN_TGT[0]).read_bytes()
    assert (out / TRAIN_TGT[0]).read_bytes() == real_tgt[TRAIN_TGT[0]] + teacher_tgt
    assert _strings(out, "de") == 2 * _strings(prepared, "de")
    assert _strings(out) == _strings(prepared) + _strings(distilled)
    for name in ("text/train.distilled.en", *SPLIT_FILES):
        assert (out / name).read_bytes() == (distilled / name).read_bytes()

    assert dd.distill_data(teacher_ckpt, prepared, out, **settings)["done"]  # nothing to do
    with pytest.raises(EvokdError, match=r"--out .*kd: made with other settings .*beam: 5 there"):
        dd.distill_data(teacher_ckpt, prepared, out, beam=4, **settings)

    # Stock fairseq-train trains on all of them: 400 pairs an epoch.
    records, log = utils.train(out, tmp_path / "student", "transformer_evokd_tiny_student")
    assert re.search(r"train de-en 400 examples", log)
    assert sum(int(r["bsz"]) for r in records if r["_tag"] == "train_inner") == 400


def test_bad_inputs_are_errors_naming_the_file(prepared, teacher_ckpt, tmp_path):
    with pytest.raises(EvokdError, match=f"--teacher {tmp_path}/none.pt: no such file"):
        dd.distill_data(tmp_path / "none.pt", prepared, tmp_path / "a", cpu=True)
    with pytest.raises(EvokdError, match=f"--data {tmp_path}/none: no such folder"):
        dd.distill_data(teacher_ckpt, tmp_path / "none", tmp_path / "a", cpu=True)
    with pytest.raises(EvokdError, match=f"--data {prepared}: Dataset not found: nosuch"):
        dd.distill_data(teacher_ckpt, prepared, tmp_path / "a", subset="nosuch", cpu=True)
    other = tmp_path / "other"
    shutil.copytree(prepared, other)
    for lang in ("de", "en"):
        with open(other / f"dict.{lang}.txt", "a", encoding="utf-8") as f:
            f.write("zzz 1\n")
    with pytest.raises(EvokdError, match="has 1400 entries but the data's .* has 1401"):
        dd.distill_data(teacher_ckpt, other, tmp_path / "a", cpu=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
