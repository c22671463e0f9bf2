"""Teacher-feedback patching: selection, error words, retrieval, analogy, patch data, resume."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from evokd import cli
from evokd.errors import EvokdError
from evokd.methods.patch import analogy, build, feedback, retrieve, run_patch, translate
from evokd.methods.patch import select as selection
from evokd.methods.patch.workspace import read_jsonl, write_jsonl
from tests import utils

# Tiny models repeat one word until the length limit: keep hypotheses short.
FAST = {"beam": 2, "max_len_a": 0.0, "max_len_b": 6, "chunk_size": 50, "max_tokens": 400}
FAST["cpu"] = True  # batches of ~25 sentences, parts of ~50
KEYS = {
    "translations": {"id", "source", "student", "teacher", "source_bpe", "student_bpe",
                     "teacher_bpe", "alignment", "nll", "chrf", "error_words"},
    "selected": {"id", "origin", "rank", "score", "nll", "chrf", "nll_percentile",
                 "chrf_percentile", "source", "student", "teacher", "error_words",
                 "source_bpe", "student_bpe", "teacher_bpe"},
    "synthesis": {"id", "origin", "source", "teacher", "words", "corrected", "kept",
                  "source_bpe", "teacher_bpe"},
    "analogy": {"id", "origin", "source", "teacher", "words", "related_to", "kept",
                "source_bpe", "teacher_bpe"},
    "patch": {"id", "origin", "from", "source", "target", "source_bpe", "target_bpe"},
}  # fmt: skip
ERROR_KEYS = {"source", "source_pieces", "source_position", "student", "teacher"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


# --- selection -------------------------------------------------------------------------------


def rows(nll, chrf):
    return [{"id": i, "nll": n, "chrf": c} for i, (n, c) in enumerate(zip(nll, chrf))]


def test_badness_percentiles_share_ties():
    got = selection.badness_percentiles([3.0, 1.0, 3.0, 2.0])
    assert got.tolist() == [3.5 / 4, 1 / 4, 3.5 / 4, 2 / 4]
    assert selection.badness_percentiles([90, 10], higher_is_worse=False).tolist() == [0.5, 1.0]


def test_selection_keeps_the_worst():
    nll = [0.5, 4.0, 1.0, 3.0, 2.0, 0.1, 5.0, 0.2, 0.3, 0.4]
    chrf = [90, 10, 95, 30, 20, 99, 50, 98, 97, 96]
    both = selection.select_worst(rows(nll, chrf), 0.3)
    # NLL percentiles of ids 6, 1, 3, 4: 1.0, 0.9, 0.8, 0.7; chrF: 0.7, 1.0, 0.8, 0.9;
    # ids 3 and 4 tie at 0.8: the lower id goes first
    assert [r["id"] for r in both] == [1, 6, 3]
    assert [r["score"] for r in both] == [0.95, 0.85, 0.8]
    assert both[0]["nll_percentile"] == 0.9 and both[0]["chrf_percentile"] == 1.0
    assert [r["rank"] for r in both] == [1, 2, 3]
    assert [r["id"] for r in selection.select_worst(rows(nll, chrf), 0.3, "nll")] == [6, 1, 3]
    assert [r["id"] for r in selection.select_worst(rows(nll, chrf), 0.2, "chrf")] == [1, 4]
    assert len(selection.select_worst(rows(nll, chrf), 0.01)) == 1  # ceil
    assert len(selection.select_worst(rows(nll, chrf), 1.0)) == 10
    # ties: the lower id first
    tied = selection.select_worst(rows([1, 1, 1], [5, 5, 5]), 0.5)
    assert [r["id"] for r in tied] == [0, 1]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), True])
def test_selection_fraction_must_be_in_zero_one(fraction):
    with pytest.raises(EvokdError, match="--select"):
        selection.select_worst(rows([1.0], [50.0]), fraction)


# --- error words -----------------------------------------------------------------------------


def test_merge_pieces():
    words, of = feedback.merge_pieces(["der", "hun@@", "d@@", "e", "läuft"])
    assert words == ["der", "hunde", "läuft"] and of == [0, 1, 1, 1, 2]


def test_error_words_from_the_alignment():
    source = ["der", "hun@@", "de", "laufen", "sehr", "schnell", "."]
    student = ["the", "cat@@", "s", "run", "fast", "."]
    teacher = ["the", "dog@@", "s", "run", "very", "quick@@", "ly", "."]
    # teacher pieces -> source pieces; "very quickly" both aligned to "schnell" (and "sehr")
    alignment = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (5, 6), (6, 7)]
    errors = feedback.error_words(source, student, teacher, alignment)
    assert all(set(e) == ERROR_KEYS for e in errors)
    got = [(e["source"], e["student"], e["teacher"]) for e in errors]
    # "fast" -> "very quickly" is a replace of 1 by 2 words: the whole student span
    assert got == [("hunde", "cats", "dogs"), ("sehr", "fast", "very"),
                   ("schnell", "fast", "quickly")]  # fmt: skip
    assert errors[0]["source_pieces"] == ["hun@@", "de"] and errors[0]["source_position"] == 1
    # an insertion (the student left a word out) and a deletion (the student added one)
    errors = feedback.error_words(
        ["er", "läuft", "schnell"], ["he", "runs", "away"], ["he", "runs", "fast", "away"],
        [(0, 0), (1, 1), (2, 2), (1, 3)],
    )  # fmt: skip
    assert [(e["source"], e["student"], e["teacher"]) for e in errors] == [("schnell", "", "fast")]
    assert feedback.error_words(["a", "b"], ["x", "y", "z"], ["x", "y"], [(0, 0), (1, 1)]) == []
    # punctuation is no error word
    assert feedback.error_words(["er", "!"], ["he", "."], ["he", "!"], [(0, 0), (1, 1)]) == []
    fb = feedback.feedback("er läuft", "he runs", "he runs", [(0, 0), (1, 1)])
    assert fb == {"chrf": 100.0, "error_words": []}


# --- retrieval and analogy -------------------------------------------------------------------


def test_retrieval_finds_exactly_the_sentences_holding_a_word():
    pool = [
        "der hund läuft .", "ein Hund und eine katze .", "die hunde spielen .",
        "kein tier .", "der hund schläft .", "hund", "der hund läuft .",
    ]  # fmt: skip
    index = retrieve.WordIndex(enumerate(pool))
    assert index.find("hund") == [0, 1, 4, 5, 6]  # whole words, any case; not "hunde"
    assert retrieve.retrieve(index, "hund", 10) == [0, 1, 4, 5, 6]
    assert retrieve.retrieve(index, "hund", 2) == [0, 1]
    # the sentence an error came from (and its duplicate 6) is never retrieved for it
    assert retrieve.retrieve(index, "hund", 10, ["der hund läuft ."]) == [1, 4, 5]
    assert retrieve.retrieve(index, "pferd", 10) == []


def test_analogy_skips_subword_fragments():
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "hund", "hun@@", "de", "katze", ",", "maus",
               "ein", "madeupword0000"]  # fmt: skip
    ids = {s: i for i, s in enumerate(symbols)}
    sentences = [[ids[w] for w in s.split()] + [2] for s in (
        "ein hund , ein katze", "ein hun@@ de", "maus hun@@ de",
    )]  # fmt: skip
    mask = analogy.word_candidates(symbols, sentences)
    whole = [s for s, ok in zip(symbols, mask) if ok]
    assert whole == ["hund", "katze", "maus", "ein"]  # no "hun@@", "de" (continuation), ","
    weight = torch.zeros(len(symbols), 3)
    weight[:, 2] = 1.0
    weight[ids["hund"]] = torch.tensor([1.0, 0.0, 0.0])
    for near, vector in (("hun@@", [1.0, 0.01, 0]), ("de", [1.0, 0.02, 0]), (",", [1, 0.03, 0]),
                         ("madeupword0000", [1, 0.04, 0]), ("katze", [1.0, 0.3, 0]),
                         ("maus", [1.0, 1.0, 0]), ("ein", [0.0, 1.0, 0])):  # fmt: skip
        weight[ids[near]] = torch.tensor(vector)
    found = analogy.nearest_words(weight, [ids["hund"]], mask, 2, exclude=[ids["hund"]])
    assert [symbols[i] for i, _ in found] == ["katze", "maus"]
    assert found[0][1] == pytest.approx(1 / math.sqrt(1.09), abs=1e-6)
    # a word of several pieces starts from the mean of its pieces
    found = analogy.nearest_words(weight, [ids["hun@@"], ids["de"]], mask, 1)
    assert [symbols[i] for i, _ in found] == ["hund"]


# --- patch data ------------------------------------------------------------------------------


def test_patch_pairs_are_deduplicated_and_replay_is_seeded():
    selected = [{"id": 0, "source_bpe": "a b", "teacher_bpe": "x"},
                {"id": 1, "source_bpe": "c", "teacher_bpe": ""}]  # fmt: skip
    synthesis = [{"id": 5, "source_bpe": "a b", "teacher_bpe": "x", "kept": True},
                 {"id": 6, "source_bpe": "d", "teacher_bpe": "y", "kept": False},
                 {"id": 7, "source_bpe": "e", "teacher_bpe": "z", "kept": True}]  # fmt: skip
    pairs = build.patch_pairs(selected, synthesis, [])
    assert pairs == [("selected", 0, "a b", "x"), ("synthesis", 7, "e", "z")]
    assert build.replay_ids(100, 5, seed=3) == build.replay_ids(100, 5, seed=3)
    assert build.replay_ids(100, 5, seed=3) != build.replay_ids(100, 5, seed=4)
    assert sorted(build.replay_ids(10, 10, seed=1)) == list(range(10))  # without replacement
    assert len(build.replay_ids(3, 7, seed=1)) == 7
    assert [build.replay_count(n, r) for n, r in ((10, 1.0), (3, 0.5), (5, 0.0), (4, 2.5))] == [
        10, 2, 0, 10
    ]  # fmt: skip


def test_torn_jsonl_line_is_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": 0}, {"id": 1}])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": 2, "sou')
    assert read_jsonl(path) == [{"id": 0}, {"id": 1}]
    assert path.read_text() == '{"id": 0}\n{"id": 1}\n'


# --- the whole run on the session data ---------------------------------------------------------


def small_plan(folder):
    plan = {
        "name": "patch-test",
        "data": "unused",
        "train": {
            "seed": 1, "optimizer": "adam", "lr": 1e-3, "max-tokens": 2000,
            "criterion": "label_smoothed_cross_entropy", "label-smoothing": 0.1,
            "share-decoder-input-output-embed": True,  # the student's own setting wins
            "num-workers": 0, "log-format": "json", "log-interval": 1,
        },
        "evaluate": {"beam": 2, "max_len_b": 8},
        "stages": [{"name": "unused", "arch": "transformer_evokd_tiny_student", "max_epoch": 1}],
    }  # fmt: skip
    path = Path(folder) / "plan.yaml"
    path.write_text(json.dumps(plan))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def student_ckpt(data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("student")
    utils.train(data_bin, save_dir, "transformer_evokd_tiny_student", epochs=1)
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def patched(student_ckpt, teacher_ckpt, data_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "run"
    plan = small_plan(out.parent)
    stats = run_patch(
        student_ckpt, teacher_ckpt, data_bin, out, synth_n=2, plan=str(plan), max_epoch=1, **FAST
    )
    return out, stats


def test_jsonl_keys(patched):
    out, stats = patched
    for name, keys in KEYS.items():
        lines = read_jsonl(out / f"{name}.jsonl")
        assert lines, name
        assert all(set(row) == keys for row in lines), name
    for row in read_jsonl(out / "translations.jsonl"):
        assert all(set(e) == ERROR_KEYS for e in row["error_words"])
        assert len(row["alignment"]) == len(row["teacher_bpe"].split())
    assert stats["translate"]["sentences"] == 200
    assert {r["origin"] for r in read_jsonl(out / "synthesis.jsonl")} == {"synthesis"}


def test_selected_are_the_worst_of_the_pool(patched):
    out, _ = patched
    translations = read_jsonl(out / "translations.jsonl")
    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 20  # ceil(0.1 x 200)
    expected = selection.select_worst(translations, 0.1, "both")
    assert [r["id"] for r in selected] == [r["id"] for r in expected]
    assert all(r["origin"] == "selected" for r in selected)
    assert sum(bool(r["error_words"]) for r in selected) > 0


def test_retrieved_sentences_hold_their_words(patched):
    out, _ = patched
    groups = retrieve.group_errors(read_jsonl(out / "selected.jsonl"))
    synthesis = read_jsonl(out / "synthesis.jsonl")
    for row in synthesis:
        assert set(row["words"]) <= set(row["source"].split())
        for word in row["words"]:
            assert row["source"] not in groups[word]["origins"]
            assert groups[word]["teacher"] <= set(row["corrected"])
        assert row["kept"] == bool(set(row["corrected"]) & set(row["teacher"].split()))
    per_word = {w: sum(w in r["words"] for r in synthesis) for w in groups}
    assert max(per_word.values()) <= 2  # --synth-n 2
    related = json.loads((out / "analogy_words.json").read_text())
    assert related and all(len(v) == 3 for v in related.values())  # --analogy-k 3
    for row in read_jsonl(out / "analogy.jsonl"):
        assert set(row["words"]) <= set(row["source"].split())
        for word in row["related_to"]:
            assert row["source"] not in groups[word]["origins"]
            assert set(row["words"]) & {neighbour for neighbour, _ in related[word]}
        assert row["kept"] == analogy.translated(row["teacher"])


def test_patch_data_is_fairseq_data(patched, data_bin):
    from fairseq.data import Dictionary, data_utils

    out, stats = patched
    pairs = read_jsonl(out / "patch.jsonl")
    n_patch = stats["build"]["patch_pairs"]
    origins = [r["origin"] for r in pairs]
    assert origins.count("replay") == n_patch  # --replay-ratio 1
    assert len(pairs) == 2 * n_patch and set(origins[:n_patch]) <= {"selected", "synthesis",
                                                                     "analogy"}  # fmt: skip
    assert len({(r["source_bpe"], r["target_bpe"]) for r in pairs[:n_patch]}) == n_patch
    for lang, key in (("de", "source_bpe"), ("en", "target_bpe")):
        vocab = Dictionary.load(str(out / "data" / f"dict.{lang}.txt"))
        items = data_utils.load_indexed_dataset(str(out / "data" / f"train.de-en.{lang}"), vocab)
        assert [vocab.string(item) for item in items] == [r[key] for r in pairs]
        original = data_utils.load_indexed_dataset(str(data_bin / f"train.de-en.{lang}"), vocab)
        for i, row in enumerate(pairs):
            if row["origin"] == "replay":
                assert torch.equal(items[i], original[row["from"]])
    for name in ["dict.de.txt", "dict.en.txt"] + [
        f"{s}.de-en.{lang}.{ext}" for s in ("valid", "test") for lang in ("de", "en")
        for ext in ("bin", "idx")
    ]:  # fmt: skip
        assert (out / "data" / name).read_bytes() == (data_bin / name).read_bytes(), name


def test_patched_student_is_trained_and_evaluated(patched, student_ckpt):
    out, stats = patched
    log = (out / "checkpoints" / "train.log").read_text()
    assert "student initialised from" in log and str(student_ckpt) in log
    record = json.loads((out / "checkpoints" / "evokd_stage.json").read_text())
    assert record["finished"] and record["updates"] >= 1 and record["data"] == str(out / "data")
    assert "--share-decoder-input-output-embed" not in record["command"]
    results = json.loads((out / "results.json").read_text())
    assert results == stats["train"]
    for name in ("student", "patched"):
        assert results[name]["bleu"] is not None and results[name]["subset"] == "test"
    assert results["patched"]["checkpoint"] == str(out / "checkpoints" / "checkpoint_best.pt")


def test_rerun_skips_finished_steps(patched, caplog):
    out, stats = patched
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with caplog.at_level("INFO", logger="evokd.methods.patch.pipeline"):
        again = run_patch(out=out, synth_n=2, plan=str(out.parent / "plan.yaml"), max_epoch=1,
                          **FAST)  # fmt: skip
    assert again == stats
    assert caplog.text.count("finished earlier, skipped") == 6
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    with pytest.raises(EvokdError, match=r"select: 0.1 there, 0.2 now.*selected.jsonl"):
        run_patch(out=out, steps=["select"], select=0.2, **FAST)


def test_damaged_patch_data_is_refused_before_training(patched, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(patched[0], out)
    for name in ("checkpoints", "results", "results.json", "steps/train.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    recorded = json.loads((out / "steps" / "build.json").read_text())["data_sha256"]
    assert sorted(recorded) == sorted(
        p.relative_to(out / "data").as_posix() for p in (out / "data").rglob("*") if p.is_file()
    )
    target = out / "data" / "train.de-en.en.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed in place
    target.write_bytes(bytes(data))
    with pytest.raises(EvokdError, match=rf"train: {target} is damaged.*patch build"):
        run_patch(out=out, steps=["train"], **FAST)
    assert not (out / "checkpoints").exists()


def test_killed_step_resumes_where_it_stopped(patched, student_ckpt, teacher_ckpt, data_bin,
                                              tmp_path, monkeypatch):  # fmt: skip
    reference = (patched[0] / "translations.jsonl").read_bytes()
    out = tmp_path / "run"
    args = (student_ckpt, teacher_ckpt, data_bin, out)
    utils.interrupt_on_call(monkeypatch, translate, "translate_chunk", 3)
    with pytest.raises(KeyboardInterrupt):
        run_patch(*args, steps=["translate"], **FAST)
    partial = out / "translations.jsonl.partial"
    chunks = partial / "chunks"
    done = [read_jsonl(chunks / f"chunk0000{c}" / "rows.jsonl") for c in range(2)]
    assert sorted(p.name for p in chunks.iterdir()) == ["chunk00000", "chunk00001"]
    assert not (out / "translations.jsonl").exists()  # only when every part is there
    assert not json.loads((out / "steps" / "translate.json").read_text())["finished"]
    (chunks / "chunk00002.tmp").mkdir()
    (chunks / "chunk00002.tmp" / "rows.jsonl").write_text('{"id": 100, "sour')  # killed mid-write
    monkeypatch.undo()
    real, calls = translate.translate_chunk, []
    monkeypatch.setattr(translate, "translate_chunk", lambda *a: calls.append(a[3]) or real(*a))
    run_patch(*args, steps=["translate"], **FAST)
    redone = sorted(i for batches in calls for batch in batches for i in batch)
    finished = sorted(row["id"] for rows in done for row in rows)
    assert sorted(redone + finished) == list(range(200))  # the finished chunks not redone
    assert (out / "translations.jsonl").read_bytes() == reference
    assert not partial.exists()


# --- raw text pools, errors --------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder made by `evokd prepare` (BPE'd text), and two checkpoints trained on it."""
    out = tmp_path_factory.mktemp("m30k") / "data-bin"
    argv = ["prepare", "multi30k", "--train-size", "300", "--eval-size", "30"]
    assert cli.main(argv + ["--vocab-size", "400", "--workers", "1", "--out", str(out)]) == 0
    save_dir = tmp_path_factory.mktemp("m30k-models")
    utils.train(out, save_dir, "transformer_evokd_tiny_student", epochs=2)
    return out, save_dir / "checkpoint1.pt", save_dir / "checkpoint2.pt"


def test_raw_pool_and_mono_files(prepared, tmp_path):
    from fairseq.data import Dictionary

    from evokd.data import load_encoder, remove_bpe

    data, student, teacher = prepared
    raw = (data / "text" / "test.raw.de").read_text(encoding="utf-8").splitlines()
    pool, mono = tmp_path / "pool.de", tmp_path / "mono.de"
    pool.write_text("\n".join(raw[:12] + [""] + raw[12:20]) + "\n", encoding="utf-8")
    train_raw = [line for line, _ in utils.read_pairs("train", 300)]
    mono.write_text("\n".join(train_raw) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    run_patch(student, teacher, data, out, pool=pool, mono=mono, select=0.5, synth_n=3,
              steps=["translate", "select", "synthesize"], **FAST)  # fmt: skip
    rows = read_jsonl(out / "translations.jsonl")
    assert [r["id"] for r in rows] == [i for i in range(21) if i != 12]  # line 12 is empty
    encoder, vocab = load_encoder(data, "de"), Dictionary.load(str(data / "dict.de.txt"))

    def binarized(line):  # BPE'd like the training text; pieces not in the dictionary: <unk>
        return vocab.string(vocab.encode_line(encoder(line), add_if_not_exist=False))

    lines = pool.read_text(encoding="utf-8").splitlines()
    for row in rows:
        assert row["source_bpe"] == binarized(lines[row["id"]])
        assert row["source"] == remove_bpe(row["source_bpe"])
    assert sum(r["source"] == encoder.tokenize(lines[r["id"]]) for r in rows) >= 15
    assert any("@@" in r["source_bpe"] for r in rows)
    assert (out / "pool" / "pool.de-en.de.idx").is_file()
    synthesis = read_jsonl(out / "synthesis.jsonl")
    assert synthesis
    for row in synthesis:
        assert row["source_bpe"] == binarized(train_raw[row["id"]])
        assert set(row["words"]) <= set(row["source"].split())


def test_errors_before_any_work(evokd_main, student_ckpt, teacher_ckpt, data_bin, tmp_path):
    out = tmp_path / "run"
    base = ["--student", student_ckpt, "--teacher", teacher_ckpt, "--data", data_bin]
    base += ["--out", out]
    missing = tmp_path / "nope.pt"
    cases = [
        (["--student", missing, "--teacher", teacher_ckpt, "--data", data_bin, "--out", out],
         [str(missing), "--student", "no such file"]),
        (["--out", out], ["--student --teacher --data: required"]),
        ([*base, "--pool", tmp_path / "absent.de"], [str(tmp_path / "absent.de"), "no such"]),
        ([*base, "--mono", student_ckpt], ["--mono needs the tokenizer and BPE of --data"]),
        ([*base, "--select", "0"], ["--select 0.0", "(0, 1]"]),
        ([*base, "--select", "1.5"], ["--select 1.5"]),
        ([*base, "--synth-n", "0"], ["--synth-n 0"]),
        ([*base, "--replay-ratio", "-1"], ["--replay-ratio -1.0"]),
        ([*base, "--plan", "nonexistent"], ["--plan nonexistent"]),
        ([*base[:-2], "--data", tmp_path / "nodata", "--out", out], ["nodata", "no such folder"]),
    ]  # fmt: skip
    for argv, expected in cases:
        code, _, err = evokd_main("patch", *argv)
        assert code == 2, (argv, err)
        assert err.startswith("evokd patch: error:"), err
        for text in expected:
            assert text in err, (argv, err)
        assert not out.exists()  # nothing written


def test_help_documents_the_keys(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["patch", "--help"])
    text = capsys.readouterr().out
    assert exit.value.code == 0
    for name, keys in KEYS.items():
        assert f"{name}.jsonl" in text
        for key in keys - {"id"}:
            assert key in text, (name, key)


def test_models_must_fit_the_data_and_steps_come_in_order(
    prepared, student_ckpt, teacher_ckpt, data_bin, tmp_path
):
    other_student = prepared[1]  # trained on another dictionary
    with pytest.raises(EvokdError, match=r"--student .*checkpoint1.pt: its encoder embeddings"):
        run_patch(other_student, teacher_ckpt, data_bin, tmp_path / "a", **FAST)
    assert not (tmp_path / "a").exists()
    foreign = tmp_path / "foreign"  # DATA with two ids of the target dictionary swapped
    shutil.copytree(data_bin, foreign)
    lines = (foreign / "dict.en.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (foreign / "dict.en.txt").write_text("".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(EvokdError, match=r"--student .*: the checkpoint was trained with .*dict"):
        run_patch(student_ckpt, teacher_ckpt, foreign, tmp_path / "c", **FAST)
    assert not (tmp_path / "c").exists()
    with pytest.raises(EvokdError, match="step select needs step translate first"):
        run_patch(student_ckpt, teacher_ckpt, data_bin, tmp_path / "b", steps=["select"], **FAST)
    with pytest.raises(EvokdError, match="was started with --teacher"):
        run_patch(out=tmp_path / "b", teacher=student_ckpt, steps=["select"], **FAST)
