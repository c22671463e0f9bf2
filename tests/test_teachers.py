"""Teachers with their own vocabulary: CTranslate2, Hugging Face (seq2seq and causal LM) and
an OpenAI-compatible server (`transformers serve`), through `evokd distill-data --teacher`.

The models are built here from configs with random weights and saved as a user saves them
(a Marian model with its sentencepiece tokenizer, converted with CTranslate2's own converter;
a Llama-style LM with a chat template), offline. Random models write nonsense, so these tests
check the plumbing: every pair aligned, counts and policies in the metadata, kill and resume
equal to an uninterrupted run, and the errors.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from evokd.data.folder import load_side  # noqa: E402
from evokd.data.prepare import prepare  # noqa: E402
from evokd.errors import EvokdError  # noqa: E402
from evokd.teachers import text  # noqa: E402
from tests import faults  # noqa: E402
from tests.llm import corpus_lines, free_port, llama, serve  # noqa: E402

N_TRAIN = 48


def marian(root, eos_bias):
    """A 1+1-layer Marian de-en model with a sentencepiece tokenizer trained on 300 lines;
    ``eos_bias`` on the end-of-sentence logit (0: it never stops before the cap)."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    root.mkdir(parents=True, exist_ok=True)
    vocab = {}
    for lang in ("de", "en"):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus_lines(lang)), model_prefix=str(root / f"sp.{lang}"),
            vocab_size=300, model_type="unigram", minloglevel=2, num_threads=1,
        )  # fmt: skip
        for line in (root / f"sp.{lang}.vocab").read_text(encoding="utf-8").splitlines():
            vocab.setdefault(line.split("\t")[0], len(vocab))
    for special in ("</s>", "<unk>", "<pad>"):
        vocab.setdefault(special, len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = MarianTokenizer(str(root / "sp.de.model"), str(root / "sp.en.model"),
                          str(root / "vocab.json"), source_lang="de", target_lang="en")  # fmt: skip
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        forced_eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = MarianMTModel(config)
    model.final_logits_bias[0, tok.eos_token_id] = eos_bias
    folder = root / "marian"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def convert(folder, out):
    """The Marian ``folder`` converted into ``out`` as ``ct2-transformers-converter --model
    FOLDER --output_dir OUT --copy_files source.spm target.spm`` converts it (the command's
    own converter class, in this process)."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(folder), copy_files=["source.spm", "target.spm"]).convert(str(out))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder made by `evokd prepare` and the teachers: ``ct2`` (stops early), ``ct2_cut``
    (never stops before the cap), ``hf`` (the Marian folder itself), ``llm``."""
    root = tmp_path_factory.mktemp("teachers")
    data = root / "data"
    prepare("multi30k", data, train_size=N_TRAIN, eval_size=8, vocab_size=300)
    stops = marian(root / "stops", eos_bias=2.0)
    never = marian(root / "never", eos_bias=0.0)
    return {
        "data": data,
        "hf": stops,
        "ct2": convert(stops, root / "ct2"),
        "ct2_cut": convert(never, root / "ct2_cut"),
        "llm": llama(root),
        "root": root,
    }


def distill(evokd_main, world, teacher, out, *extra):
    argv = ["distill-data", "--teacher", teacher, "--data", world["data"], "--out", out,
            "--beam", "2", "--max-len-a", "0.5", "--max-len-b", "4", "--batch-size", "4",
            "--chunk-size", "8", "--cpu", *extra]  # fmt: skip
    code, stdout, stderr = evokd_main(*argv)
    return code, stdout, stderr


def info(out):
    return json.loads((Path(out) / "distill.json").read_text(encoding="utf-8"))


def column(folder, lang, subset="train"):
    return [side.tolist() for side in load_side(folder, subset, "de-en", lang)]


def check_aligned(data, out, policy):
    """Every distilled pair holds its own example's source; a bad output's pair is gone
    (drop) or holds the reference (reference); the counts add up."""
    meta = info(out)
    ids = [int(i) for i in (out / "text" / "train.distilled.ids").read_text().split()]
    raw = (out / "text" / "train.teacher.en").read_text(encoding="utf-8").split("\n")[:-1]
    counts, n = meta["counts"], meta["source_examples"]
    bad = counts["empty"] + counts["unparsed"] + counts["cut"]
    assert n == N_TRAIN == len(raw)
    assert ids == sorted(set(ids)) and len(ids) == meta["examples"]
    assert column(out, "de") == [column(data, "de")[i] for i in ids]
    if policy == "drop":
        assert meta["examples"] == n - bad and counts["dropped"] == bad
        assert all(raw[i] for i in ids)  # only good outputs stayed
    else:
        assert ids == list(range(n)) and counts["references_kept"] == bad
        refs = column(data, "en")
        for i, target in enumerate(column(out, "en")):
            assert (target == refs[i]) or raw[i], i  # a bad output's pair keeps its reference
    return meta


def test_kind_from_path(world, tmp_path):
    assert text.teacher_kind(world["ct2"]) == "ctranslate2"
    assert text.teacher_kind(world["hf"]) == "huggingface"
    assert text.teacher_kind("http://127.0.0.1:1/v1") == "server"
    (tmp_path / "empty").mkdir()
    for wrong in (tmp_path / "empty", tmp_path / "missing", "http://127.0.0.1:1/"):
        with pytest.raises(EvokdError, match="--teacher") as exc:
            text.teacher_kind(wrong)
        assert str(wrong) in str(exc.value)
    with pytest.raises(EvokdError, match="CTranslate2 model folder"):
        text.teacher_kind(tmp_path / "empty")


def test_prompt_and_reply_parsing(tmp_path):
    template = text.load_prompt()
    prompt = text.render_prompt(template, "de", "en", "Ein Hund {x}.")
    assert "German" in prompt and "English" in prompt and "Ein Hund {x}." in prompt
    assert text.parse_reply('  "A dog runs."  ') == "A dog runs."
    for bad in ("", "  ", None, "A dog.\nNote: literal", "{source}"):
        assert text.parse_reply(bad) is None
    assert text.reply_translation("A dog.", cut=True).problem == "cut"
    assert text.reply_translation("one\ntwo").problem == "unparsed"
    assert text.reply_translation("").problem == "empty"
    no_field = tmp_path / "p.txt"
    no_field.write_text("Translate please.")
    with pytest.raises(EvokdError, match="no {source}"):
        text.load_prompt(no_field)


def test_word_level_kd_refuses_another_vocabulary(world):
    with pytest.raises(EvokdError) as exc:
        text.check_word_level_teacher(world["ct2"], world["data"], "de", "en")
    message = str(exc.value)
    assert str(world["ct2"]) in message and "dict.de.txt" in message and "entries" in message


def test_ctranslate2_teacher(world, evokd_main, tmp_path):
    out = tmp_path / "ct2"
    code, stdout, _ = distill(evokd_main, world, world["ct2"], out)
    assert code == 0, stdout
    meta = check_aligned(world["data"], out, "drop")
    assert meta["fingerprint"]["teacher"]["kind"] == "ctranslate2"
    # The BPE'd targets are the teacher's output tokenized and lowercased, like training text.
    lines = (out / "text" / "train.distilled.en").read_text(encoding="utf-8").splitlines()
    raw = (out / "text" / "train.teacher.en").read_text(encoding="utf-8").splitlines()
    ids = [int(i) for i in (out / "text" / "train.distilled.ids").read_text().split()]
    for line, i in zip(lines, ids):
        assert line.replace("@@ ", "") == " ".join(raw[i].lower().split())
    assert meta["counts"]["pieces"] == sum(len(line.split()) for line in lines)
    # A rerun with the same settings does nothing; other settings are refused by name.
    code, stdout, _ = distill(evokd_main, world, world["ct2"], out)
    assert code == 0 and "nothing to do" in stdout
    code, _, stderr = distill(evokd_main, world, world["ct2"], out, "--on-bad-output", "reference")
    assert code == 2 and "on_bad_output" in stderr


def test_bad_outputs_policies(world, evokd_main, tmp_path):
    """A teacher cut by the cap on every sentence: `drop` leaves nothing and says so;
    `reference` keeps every pair with its reference; --keep-references adds the real pairs."""
    out = tmp_path / "cut"
    code, _, stderr = distill(evokd_main, world, world["ct2_cut"], out)
    assert code == 2 and "every one of the 48 outputs was bad" in stderr
    code, stdout, _ = distill(
        evokd_main, world, world["ct2_cut"], out, "--on-bad-output", "reference"
    )
    assert code == 0, stdout
    meta = check_aligned(world["data"], out, "reference")
    assert meta["counts"]["cut"] == N_TRAIN and meta["examples"] == N_TRAIN
    assert column(out, "en") == column(world["data"], "en")
    both = tmp_path / "both"
    code, _, _ = distill(evokd_main, world, world["ct2"], both, "--keep-references")
    assert code == 0
    meta = info(both)
    assert meta["training_pairs"] == N_TRAIN + meta["examples"]
    assert column(both, "de")[:N_TRAIN] == column(world["data"], "de")
    assert column(both, "en")[:N_TRAIN] == column(world["data"], "en")


def test_kill_and_resume_equals_an_uninterrupted_run(world, evokd_main, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert distill(evokd_main, world, world["ct2"], whole)[0] == 0
    argv = ["distill-data", "--teacher", world["ct2"], "--data", world["data"], "--out", resumed,
            "--beam", "2", "--max-len-a", "0.5", "--max-len-b", "4", "--batch-size", "4",
            "--chunk-size", "8", "--cpu"]  # fmt: skip
    faults.killed_run(argv, "evokd.core.build:save_chunk", n=3, when="after")
    assert not resumed.exists() and (tmp_path / "resumed.partial" / "chunks").is_dir()
    assert evokd_main(*argv)[0] == 0
    for name in ("train.de-en.de.bin", "train.de-en.en.bin", "train.de-en.en.idx",
                 "text/train.distilled.en", "text/train.teacher.en"):  # fmt: skip
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    assert info(whole)["counts"] == info(resumed)["counts"]


def test_huggingface_teachers(world, evokd_main, tmp_path):
    """The Marian folder itself (it stops at once: empty outputs, kept as references) and the
    causal LM asked with the prompt through its chat template."""
    for name in ("hf", "llm"):
        out = tmp_path / name
        code, stdout, _ = distill(
            evokd_main, world, world[name], out, "--on-bad-output", "reference"
        )
        assert code == 0, stdout
        meta = check_aligned(world["data"], out, "reference")
        assert meta["fingerprint"]["teacher"]["kind"] == "huggingface"
    assert info(tmp_path / "hf")["counts"]["empty"] == N_TRAIN  # a translation of nothing


@pytest.fixture(scope="module")
def server(world):
    """`transformers serve` on the tiny LM folder, offline, on 127.0.0.1; stopped after."""
    with serve(world["llm"], world["root"] / "serve.log") as url:
        yield url


def test_server_teacher(world, server, evokd_main, tmp_path):
    model = str(world["llm"])
    out = tmp_path / "served"
    argv = ["distill-data", "--teacher", server, "--teacher-model", model, "--data", world["data"],
            "--out", out, "--max-len-a", "0.5", "--max-len-b", "4", "--batch-size", "4",
            "--chunk-size", "8", "--concurrency", "2", "--on-bad-output", "reference"]  # fmt: skip
    # Killed one request at a time, before the 5th reply is read (its chunk of 8 unfinished):
    # the 5 replies received come from the reply cache on resume, the others from the server.
    faults.killed_run(argv + ["--concurrency", "1"], "evokd.teachers.server:read_answer", n=5,
                      when="before")  # fmt: skip
    assert not out.exists()
    assert evokd_main(*argv)[0] == 0
    meta = check_aligned(world["data"], out, "reference")
    assert meta["server_requests"] == N_TRAIN - 5
    assert meta["fingerprint"]["teacher"]["model"] == model
    assert not Path(f"{out}.partial").exists()


def test_server_errors(world, server):
    settings = text.TeacherSettings(src_lang="de", tgt_lang="en", model="no-such-model", retries=0)
    with pytest.raises(EvokdError, match="does not serve it") as exc:
        text.open_teacher(server, settings)
    assert str(world["llm"]) in str(exc.value)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = text.TeacherSettings(src_lang="de", tgt_lang="en", model="m", retries=1, timeout=2)
    with pytest.raises(EvokdError, match="no usable answer") as exc:
        text.open_teacher(dead, settings)
    assert dead in str(exc.value)


def test_raw_training_sources_found_again(world):
    """`evokd prepare` keeps no raw training text: it is read again from the corpus and
    matched to the tokenized pairs (the shipped Multi30k, no cleaning: its first lines)."""
    from evokd.distill.text import raw_sources

    found = raw_sources(world["data"], "train", "de", "en")
    assert found == corpus_lines("de", N_TRAIN)
    valid = raw_sources(world["data"], "valid", "de", "en")
    assert len(valid) == len(column(world["data"], "de", "valid"))


@pytest.mark.parametrize("retries", [0, 2])
def test_distill_data_asks_a_dead_server_retries_plus_one_times(
    world, evokd_main, tmp_path, retries
):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = distill(evokd_main, world, dead, tmp_path / "out", "--teacher-model", "m",
                           "--retries", str(retries), "--timeout", "2")  # fmt: skip
    assert code == 2 and f"no usable answer from {dead}/models after {retries + 1} tries" in err
    assert not (tmp_path / "out").exists()


def test_sliced_training_sources_read_again(tmp_path):
    """A sliced corpus (Tatoeba's lines 1-20,000) records PATH:FIRST-LAST; reading the record
    again gives the same training pairs."""
    from evokd.data import corpora

    for lang in ("de", "en"):
        lines = [f"{lang} {i}" for i in range(1, 22001)]
        (tmp_path / f"tatoeba.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sliced = corpora.tatoeba(tmp_path)
    again, files = corpora.recorded_corpus("tatoeba", sliced.sources()["train"])
    assert files == [str(tmp_path.resolve() / f"tatoeba.{lang}") for lang in ("de", "en")]
    pairs = list(again.pairs("train"))
    assert len(pairs) == 20000 and pairs[-1] == ("de 20000", "en 20000")
    plain, _ = corpora.recorded_corpus("text", [str(tmp_path / "tatoeba.de")] * 2)
    assert next(plain.pairs("train")) == ("de 1", "de 1")
