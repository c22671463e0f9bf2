"""`evokd prepare`: tokenization, cleaning, BPE, binarization, the IWSLT14 recipe, and errors."""

import gzip
import hashlib
import io
import re
import tarfile

import pytest

from evokd.cli import main
from evokd.data import bpe, corpora, iwslt14
from evokd.data import prepare as prep
from evokd.data import prepare_steps as steps
from evokd.data.moses import CleanConfig, Cleaner, Tokenizer
from evokd.data.textio import visible
from evokd.errors import EvokdError

TRAIN, EVAL = 300, 50  # Multi30k pairs used by the shared preparation


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def lines_of(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def snapshot(folder):
    """Every file under ``folder`` with its contents and modification time."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def fake_binarize(calls=None):
    """Stands in for fairseq-preprocess (slow to start) where a test is about something else."""

    def binarize(out, src, tgt, workers):
        if calls is not None:
            calls.append(out)
        for path in prep.binarized_files(out, src, tgt):
            path.write_text("")

    return binarize


def small_text_corpus(folder, n_train=40, n_eval=5):
    """A text corpus of simple numbered sentences, files ``folder/{train,valid,test}.{de,en}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        write(folder / f"{split}.de", [f"Satz {i} im {split} ist gut." for i in range(n)])
        write(folder / f"{split}.en", [f"Sentence {i} in {split} is good." for i in range(n)])
    return corpora.text_corpus(*(str(folder / s) for s in corpora.SPLITS))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The first 300/50/50 pairs of the shipped Multi30k, prepared for real."""
    out = tmp_path_factory.mktemp("m30k") / "data-bin"
    metadata = prep.prepare_corpus(
        corpora.multi30k(), out, vocab_size=400, train_size=TRAIN, eval_size=EVAL, workers=1
    )
    return out, metadata


# --- a real preparation -------------------------------------------------------------------


def test_outputs_are_aligned(prepared):
    out, metadata = prepared
    expected = {"train": TRAIN, "valid": EVAL, "test": EVAL}
    assert metadata["pairs"] == expected
    for split, n in expected.items():
        kinds = ("bpe", "tok") if split == "train" else ("bpe", "tok", "raw")
        for lang in ("de", "en"):
            for kind in kinds:
                assert len(lines_of(prep.text_path(out, split, lang, kind))) == n
    assert prep.spm_model_path(out).is_file() and (out / "text" / "spm.vocab").is_file()
    assert not (out / prep.MARKER).exists()
    assert not list(out.rglob("*.partial"))


def test_text_round_trips(prepared):
    out, _ = prepared
    for split in corpora.SPLITS:
        for lang in ("de", "en"):
            tok = lines_of(prep.text_path(out, split, lang, "tok"))
            pieces = lines_of(prep.text_path(out, split, lang, "bpe"))
            assert [bpe.remove_bpe(line) for line in pieces] == tok
            assert all(line == line.lower() for line in tok)
            assert not any(bpe.WORD_START in line for line in pieces)
            if split != "train":  # raw references line up with the tokenized ones
                raw = lines_of(prep.text_path(out, split, lang, "raw"))
                assert [Tokenizer(lang)(line) for line in raw] == tok
    train_bpe = lines_of(prep.text_path(out, "train", "de"))
    assert any("@@ " in line for line in train_bpe)  # words were split
    assert lines_of(prep.text_path(out, "train", "en", "tok"))[0] == (
        "two young , white males are outside near many bushes ."
    )


def test_binarized_data_loads(prepared):
    from fairseq.data import Dictionary, data_utils

    out, metadata = prepared
    assert (out / "dict.de.txt").read_bytes() == (out / "dict.en.txt").read_bytes()
    dictionary = Dictionary.load(str(out / "dict.de.txt"))
    assert metadata["binarized"]["dictionary_size"] == len(dictionary)
    for split, n in metadata["pairs"].items():
        for lang in ("de", "en"):
            data = data_utils.load_indexed_dataset(str(out / f"{split}.de-en.{lang}"), dictionary)
            assert len(data) == n
    data = data_utils.load_indexed_dataset(str(out / "valid.de-en.en"), dictionary)
    assert dictionary.string(data[0]) == lines_of(prep.text_path(out, "valid", "en"))[0]
    files = metadata["binarized"]["files"]
    assert files["train.de"]["sentences"] == TRAIN and files["train.de"]["tokens"] > TRAIN


def test_metadata(prepared, tmp_path):
    out, metadata = prepared
    assert prep.read_metadata(out) == metadata
    assert metadata["corpus"] == "multi30k" and metadata["lowercase"] is True
    assert metadata["clean"] is None and metadata["vocab_size"] == 400
    assert {"sacremoses", "sentencepiece"} <= set(metadata["versions"])
    assert metadata["sources"]["train"][0].endswith("train.de.gz")
    with pytest.raises(EvokdError, match=re.escape(str(tmp_path))):
        prep.read_metadata(tmp_path)


def test_finished_output_is_left_alone(prepared, capsys):
    out, _ = prepared
    before = snapshot(out)
    with pytest.raises(EvokdError, match="--force"):
        prep.prepare_corpus(corpora.multi30k(), out, vocab_size=400, train_size=TRAIN)
    assert main(["prepare", "multi30k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evokd prepare: error:" in err and "exists" in err and "--force" in err
    assert snapshot(out) == before


# --- cleaning -----------------------------------------------------------------------------


def test_cleaner_follows_clean_corpus_n():
    long_word = "x" * 1001
    pairs = [
        ("a b c", "x y z", True),  # kept
        ("", "x", False),  # empty side
        ("a", "x y", False),  # ratio 2 > 1.5
        ("a b", "x y z", True),  # ratio 1.5 is not more than 1.5
        ("a b c", "x y", True),
        (" ".join(["w"] * 176), " ".join(["v"] * 176), False),  # more than 175 tokens
        (" ".join(["w"] * 175), " ".join(["v"] * 175), True),
        (f"a {long_word}", "x y", False),  # a token over 1000 characters
        ("a  b\t", " x y", True),  # whitespace normalized
        ("a | b", "x y", True),  # '|' deleted (the first pair had none)
    ]
    cleaner = Cleaner(CleanConfig(ratio=1.5, min_tokens=1, max_tokens=175))
    kept = [cleaner(s, t) for s, t, _ in pairs]
    assert [k is not None for k in kept] == [keep for _, _, keep in pairs]
    assert kept[8] == ("a b", "x y") and kept[9] == ("a b", "x y")
    assert (cleaner.seen, cleaner.kept) == (len(pairs), 6)


def test_cleaning_in_the_pipeline(tmp_path):
    corpus = small_text_corpus(tmp_path / "raw", n_train=4)
    write(tmp_path / "raw" / "train.de", ["Ja.", "Ein Hund läuft.", "", "Zwei Hunde"])
    write(tmp_path / "raw" / "train.en", ["Yes, that is so right.", "A dog runs.", "Hm.", "Dogs"])
    corpus.check()
    out = tmp_path / "out"
    (out / "text").mkdir(parents=True)
    steps.tokenize_step(corpus, out, CleanConfig(), None, None)
    # "ja ." vs 7 tokens: ratio; empty side; "zwei hunde" vs "dogs": ratio 2
    assert lines_of(prep.text_path(out, "train", "de", "tok")) == ["ein hund läuft ."]
    assert lines_of(prep.text_path(out, "train", "en", "tok")) == ["a dog runs ."]
    assert len(lines_of(prep.text_path(out, "test", "en", "tok"))) == 5  # never cleaned


# --- screening: invisible characters, empty sides, pairs too long -------------------------


def test_visible_removes_format_characters_after_nfc():
    invisible = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e"
    assert visible(f"a{invisible}b") == ("ab", 7)
    assert visible("Mu\u0308ller") == ("M\u00fcller", 0)  # NFC composes, removes nothing
    assert visible("\ufb01x\u00b2 \uff21") == ("\ufb01x\u00b2 \uff21", 0)  # not NFKC
    assert visible("plain text") == ("plain text", 0)


def test_prepare_reports_dropped_and_flagged_pairs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(steps, "binarize_step", fake_binarize())
    raw = tmp_path / "raw"
    small_text_corpus(raw)
    train_de = [f"Satz {i} im train ist gut." for i in range(40)]
    train_en = [f"Sentence {i} in train is good." for i in range(40)]
    write(raw / "train.de", train_de + [
        "Ein Hund\u200b läuft.",  # kept, one invisible character removed
        "",  # empty side: dropped
        "\u200b\u00ad ",  # empty once the invisible characters are gone: dropped
        " ".join(["wort"] * 5000),  # 5,000 words: too long for 1024 positions
        "Mu\u0308ller kommt.",
    ])  # fmt: skip
    write(raw / "train.en", train_en + [
        "A dog\ufeff runs.", "Hello.", "Hi.", " ".join(["word"] * 5000), "Muller comes.",
    ])  # fmt: skip
    write(raw / "valid.de", ["\ufeffSatz 0 im valid ist gut."] + [f"Satz {i}." for i in range(4)])
    write(raw / "valid.en", [""] + [f"Sentence {i}." for i in range(4)])  # kept, flagged
    out = tmp_path / "out"
    argv = ["prepare", "text", "--out", str(out), "--vocab-size", "60", "--workers", "1"]
    argv += [f"--{s}={raw / s}" for s in corpora.SPLITS]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metadata = prep.read_metadata(out)
    assert metadata["pairs"] == {"train": 43, "valid": 5, "test": 5}
    assert metadata["max_positions"] == 1024 and "NFC" in metadata["normalization"]
    zero = dict.fromkeys(("empty_side", "cleaned", "invisible_characters", "too_long"), 0)
    assert metadata["screening"] == {
        "train": {**zero, "empty_side": 2, "invisible_characters": 1, "too_long": 1,
                  "characters_removed": 2},
        "valid": {**zero, "empty_side": 1, "invisible_characters": 1, "characters_removed": 1},
        "test": {**zero, "characters_removed": 0},
    }  # fmt: skip
    assert set(metadata["screening_reasons"]) == set(zero)
    assert "train: 2 with an empty side (dropped)" in printed
    assert "1 too long for the models' positions (fairseq-train skips them)" in printed
    assert "valid: 1 with an empty side (kept but flagged)" in printed
    tok_de = lines_of(prep.text_path(out, "train", "de", "tok"))
    assert tok_de[40:] == ["ein hund läuft .", " ".join(["wort"] * 5000), "m\u00fcller kommt ."]
    assert lines_of(prep.text_path(out, "train", "en", "tok"))[40] == "a dog runs ."
    assert lines_of(prep.text_path(out, "valid", "de", "raw"))[0] == "Satz 0 im valid ist gut."
    assert lines_of(prep.text_path(out, "valid", "en", "tok"))[0] == ""
    # the limit counts BPE tokens and the end-of-sentence token, on either side
    lengths = [len(line.split()) for line in lines_of(prep.text_path(out, "train", "de"))]
    over = {n: sum(1 for k in lengths if k + 1 > n) for n in (6, 1024)}
    assert steps.too_long(out, "de", "en", 1024)["train"] == over[1024] == 1
    assert steps.too_long(out, "de", "en", 6)["train"] >= over[6] > 1


# --- IWSLT14 ------------------------------------------------------------------------------


def iwslt_archive(path):
    """A miniature de-en.tgz: one talk of 48 lines (one dropped by cleaning), 5 test sets."""
    header = {
        "de": ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks</keywords>",
               "<speaker>Jane Doe</speaker>", "<talkid>1</talkid>",
               "<title>Mein Vortrag</title>", "<description>Über Dinge.</description>"],
        "en": ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks</keywords>",
               "<speaker>Jane Doe</speaker>", "<talkid>1</talkid>",
               "<title>My Talk</title>", "<description>About things.</description>"],
    }  # fmt: skip
    body = {
        "de": [f"Satz {i} ist gut." for i in range(45)] + ["Ja."],
        "en": [f"Sentence {i} is good." for i in range(45)] + ["Yes, that is so right."],
    }
    files = {f"train.tags.de-en.{lang}": header[lang] + body[lang] for lang in ("de", "en")}
    for n, name in enumerate(iwslt14.TEST_SETS):
        for lang, text in (("de", f"Guten Morgen {n}."), ("en", f"Good morning’s {n}.")):
            files[f"{name}.de-en.{lang}.xml"] = [
                '<?xml version="1.0" encoding="UTF-8"?>',
                "<mteval>",
                f'<doc docid="{n}"><talkid>{n}</talkid><title>T</title>',
                f'<seg id="1"> {text} </seg>',
                f'  <seg id="2">\tZweite {n}</seg>  ',
                "</doc>",
                "</mteval>",
            ]
    with tarfile.open(path, "w:gz") as tar:
        for name, lines in files.items():
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            info = tarfile.TarInfo(f"de-en/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_iwslt14_recipe(tmp_path):
    archive = iwslt_archive(tmp_path / "de-en.tgz")
    out = tmp_path / "iwslt"
    metadata = prep.prepare_corpus(iwslt14.Iwslt14(archive), out, vocab_size=120, workers=1)
    kept = {
        "de": ["&lt; speaker &gt; jane doe &lt; / speaker &gt;", "mein vortrag", "über dinge ."]
        + [f"satz {i} ist gut ." for i in range(45)],
        "en": ["&lt; speaker &gt; jane doe &lt; / speaker &gt;", "my talk", "about things ."]
        + [f"sentence {i} is good ." for i in range(45)],
    }  # "Ja." / "Yes, that is so right." is dropped by cleaning
    for lang in ("de", "en"):
        tok = {s: lines_of(prep.text_path(out, s, lang, "tok")) for s in corpora.SPLITS}
        assert tok["valid"] == [kept[lang][22], kept[lang][45]]  # pairs 23 and 46
        assert tok["train"] == [t for k, t in enumerate(kept[lang], 1) if k % 23]
    raw_valid_de = lines_of(prep.text_path(out, "valid", "de", "raw"))
    assert raw_valid_de == ["Satz 19 ist gut.", "Satz 42 ist gut."]
    test_raw = lines_of(prep.text_path(out, "test", "en", "raw"))
    assert test_raw == [line for n in range(5) for line in (f"Good morning's {n}.", f"Zweite {n}")]
    test_tok = lines_of(prep.text_path(out, "test", "en", "tok"))
    assert test_tok[:2] == ["good morning &apos;s 0 .", "zweite 0"]
    assert metadata["pairs"] == {"train": 46, "valid": 2, "test": 10}
    assert metadata["clean"] == CleanConfig().to_dict() and metadata["valid_every"] == 23
    assert (out / "dict.de.txt").read_bytes() == (out / "dict.en.txt").read_bytes()
    assert (out / "test.de-en.en.bin").is_file()


def test_iwslt14_offline_says_use_archive(tmp_path, monkeypatch, capsys):
    unreachable = "http://127.0.0.1:9/de-en.tgz"
    with pytest.raises(EvokdError, match="--archive") as err:
        iwslt14.download(tmp_path / "cache", url=unreachable, timeout=2)
    assert unreachable in str(err.value)
    monkeypatch.setattr(iwslt14, "URL", unreachable)
    out = tmp_path / "out"
    argv = ["prepare", "iwslt14", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    assert "--archive" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache" / "de-en.tgz").exists()


# --- bad inputs ---------------------------------------------------------------------------


def test_sides_of_different_lengths(tmp_path):
    corpus = small_text_corpus(tmp_path / "raw")
    write(tmp_path / "raw" / "valid.en", ["one", "two", "three"])
    with pytest.raises(EvokdError) as err:
        prep.prepare_corpus(corpus, tmp_path / "out")
    message = str(err.value)
    assert "valid.de has 5 lines" in message and "valid.en has 3" in message
    assert not (tmp_path / "out").exists()


def test_empty_and_missing_files(tmp_path, capsys):
    corpus = small_text_corpus(tmp_path / "raw")
    (tmp_path / "raw" / "test.de").write_text("")
    with pytest.raises(EvokdError, match=r"test\.de: empty file"):
        prep.prepare_corpus(corpus, tmp_path / "out")
    (tmp_path / "raw" / "test.de").unlink()
    with pytest.raises(EvokdError, match=r"test\.de: no such file"):
        prep.prepare_corpus(corpus, tmp_path / "out")
    argv = ["prepare", "multi30k", "--raw-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "x")]
    assert main(argv) == 2  # no train.de etc. there
    assert re.search(r"evokd prepare: error: .*raw/val\.de: no such file", capsys.readouterr().err)
    assert main(["prepare", "multi30k", "--archive", "de-en.tgz"]) == 2
    assert "--archive is only used with corpus iwslt14" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_foreign_folder_is_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    write(out / "notes.txt", ["do not delete"])
    before = snapshot(out)
    for force in (False, True):
        with pytest.raises(EvokdError, match="not made by `evokd prepare`"):
            prep.prepare_corpus(small_text_corpus(tmp_path / "raw"), out, force=force)
    assert snapshot(out) == before


def test_vocab_size_too_small(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "binarize_step", fake_binarize())
    with pytest.raises(EvokdError, match="--vocab-size 10 is too small"):
        prep.prepare_corpus(small_text_corpus(tmp_path / "raw"), tmp_path / "out", vocab_size=10)


# --- resuming and rebuilding --------------------------------------------------------------


def test_resume_skips_finished_steps(tmp_path, monkeypatch):
    corpus = small_text_corpus(tmp_path / "raw")
    out = tmp_path / "out"
    encode_file = bpe.Encoder.encode_file
    encoded = []

    def interrupted_encode(self, src, dst, desc=None):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # Ctrl-C while encoding the third file
        encoded.append(dst)
        return encode_file(self, src, dst, desc)

    monkeypatch.setattr(bpe.Encoder, "encode_file", interrupted_encode)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_corpus(corpus, out, vocab_size=60)
    assert (out / prep.MARKER).exists() and not list(out.rglob("*.partial"))
    assert prep.check_out(out) == "resume"
    before = snapshot(out / "text")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(steps, "Tokenizer", must_not_run)
    monkeypatch.setattr(bpe, "train", must_not_run)
    monkeypatch.setattr(bpe.Encoder, "encode_file", encode_file)
    with pytest.raises(EvokdError, match="other settings.*vocab_size.*--force"):
        prep.prepare_corpus(corpus, out, vocab_size=70)
    calls = []
    monkeypatch.setattr(steps, "binarize_step", fake_binarize(calls))
    metadata = prep.prepare_corpus(corpus, out, vocab_size=60)
    assert calls == [out] and not (out / prep.MARKER).exists()
    assert metadata["pairs"] == {"train": 40, "valid": 5, "test": 5}
    after = snapshot(out / "text")
    assert all(after[path] == before[path] for path in before)  # nothing redone
    assert len([p for p in after if p not in before]) == 4 + 1  # 4 BPE files, prepare.json


def test_force_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "binarize_step", fake_binarize())
    corpus = small_text_corpus(tmp_path / "raw")
    out = tmp_path / "out"
    prep.prepare_corpus(corpus, out, vocab_size=60)
    write(out / "text" / "stale.txt", ["left from before"])
    metadata = prep.prepare_corpus(corpus, out, vocab_size=70, force=True)
    assert metadata["vocab_size"] == 70 and prep.read_metadata(out)["vocab_size"] == 70
    assert not (out / "text" / "stale.txt").exists()


# --- the shipped corpus -------------------------------------------------------------------


def test_shipped_multi30k_matches_its_readme():
    readme = (corpora.MULTI30K_DIR / "README.md").read_text(encoding="utf-8")
    sums = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)}
    sizes = {"train": 29000, "val": 1014, "test": 1000}
    assert sorted(sums) == sorted(f"{s}.{lang}" for s in sizes for lang in ("de", "en"))
    for name, digest in sums.items():
        data = gzip.decompress((corpora.MULTI30K_DIR / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name
        assert data.count(b"\n") == sizes[name.split(".")[0]]


def test_tatoeba_splits_are_contiguous_blocks(tmp_path):
    """Lines 1-20,000 train, 20,001-21,000 valid, 21,001-22,000 test; the rest unused."""
    for lang in ("de", "en"):
        lines = [f"{lang} {i}" for i in range(1, 22051)]
        (tmp_path / f"tatoeba.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = corpora.tatoeba(tmp_path)
    corpus.check()
    pairs = {split: list(corpus.pairs(split)) for split in ("train", "valid", "test")}
    assert [len(p) for p in pairs.values()] == [20000, 1000, 1000]
    assert pairs["train"][0] == ("de 1", "en 1") and pairs["train"][-1] == ("de 20000", "en 20000")
    assert pairs["valid"][0] == ("de 20001", "en 20001")
    assert pairs["test"][-1] == ("de 22000", "en 22000")
    assert corpus.sources()["test"][0].endswith("tatoeba.de:21001-22000")
    (tmp_path / "tatoeba.en").write_text("\n".join(["x"] * 21500) + "\n", encoding="utf-8")
    (tmp_path / "tatoeba.de").write_text("\n".join(["x"] * 21500) + "\n", encoding="utf-8")
    with pytest.raises(EvokdError, match="21500 lines; the tatoeba splits need 22000"):
        corpora.tatoeba(tmp_path).check()
    with pytest.raises(EvokdError, match="--raw-dir None: expected a folder holding tatoeba.de"):
        corpora.tatoeba(None)
