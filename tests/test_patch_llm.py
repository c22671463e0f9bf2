"""MT-Patcher with an LLM teacher: the strict reading of the patcher's replies (recorded
replies, written down), and the whole LLM patch pipeline against a tiny random Llama served
by a real `transformers serve` on 127.0.0.1, offline.

A random model writes nonsense: every reply of its own is unparseable, which the tests count.
The replies that make sentences flagged are recorded ones, put in the reply cache under the
key of the prompt the run asks, as a patcher would have answered them."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from evokd.data import load_encoder  # noqa: E402
from evokd.data.prepare import prepare  # noqa: E402
from evokd.errors import EvokdError  # noqa: E402
from evokd.files import read_json, write_json  # noqa: E402
from evokd.methods.patch import STEPS, run_patch  # noqa: E402
from evokd.methods.patch.llm import Prompts, parse_analogy, parse_feedback, parse_sentence  # noqa: E402
from evokd.methods.patch.llm_steps import write_report  # noqa: E402
from evokd.methods.patch.workspace import Workspace, read_jsonl  # noqa: E402
from evokd.teachers import text  # noqa: E402
from tests import faults, utils  # noqa: E402
from tests.llm import corpus_lines, free_port, llama, serve  # noqa: E402

N_POOL = 10
SOURCE = "ein hund läuft über die straße ."
GOOD = '{"errors": [{"source": "Hund", "student": "cat", "correction": "dog"}], "translation": "A dog runs."}'  # noqa: E501
GOOD_VALUE = {"errors": [{"source": "Hund", "student": "cat", "correction": "dog"}],
              "translation": "A dog runs."}  # fmt: skip

FEEDBACK = [
    (GOOD, GOOD_VALUE),
    ("```json\n" + GOOD + "\n```", GOOD_VALUE),
    ('  {"errors": [], "translation": "a dog runs across the street ."}\n',
     {"errors": [], "translation": "a dog runs across the street ."}),
    ('{"errors": [{"source": "über die", "student": "", "correction": "across the"}], '
     '"translation": "A dog runs across the street."}',
     {"errors": [{"source": "über die", "student": "", "correction": "across the"}],
      "translation": "A dog runs across the street."}),
    ("Here is my review: " + GOOD, None),  # prose around the JSON
    (GOOD + " I hope this helps.", None),
    ('{"errors": [{"source": "Hund", "student": "cat"', None),  # truncated
    ('{"errors": [], "translation": "A dog.", "score": 3}', None),  # an extra field
    ('{"mistakes": [], "translation": "A dog."}', None),  # a wrong field
    ('{"errors": [{"source": "Hund", "student": "cat"}], "translation": "A dog."}', None),
    ('{"errors": [{"source": "Katze", "student": "cat", "correction": "dog"}], '
     '"translation": "A dog."}', None),  # an error word not in the source
    ('{"errors": [{"source": "und", "student": "", "correction": "and"}], '
     '"translation": "A dog."}', None),  # only part of a word of the source
    ('{"errors": {"source": "Hund"}, "translation": "A dog."}', None),
    ('{"errors": [], "translation": ""}', None),
    ('{"errors": [], "translation": "A dog.\\nA cat."}', None),
    ('[{"errors": [], "translation": "A dog."}]', None),
    ("", None),
    (None, None),
]  # fmt: skip
SENTENCES = [
    ('{"sentence": "Der Hund schläft."}', "Der Hund schläft."),
    ('```\n{"sentence": "Der  Hund schläft. "}\n```', "Der Hund schläft."),
    ('{"sentence": ""}', None),
    ('{"sentence": "Der Hund.\\nDie Katze."}', None),
    ('Sure! {"sentence": "Der Hund schläft."}', None),
    ('{"sentences": ["Der Hund schläft."]}', None),
    ('{"sentence": ["Der Hund schläft."]}', None),
    ('{"sentence": "Der Hund', None),
]  # fmt: skip
ANALOGIES = [
    ('{"category": ["Katze", "hund", "Maus", "Pferd", "Kuh"], "semantic": ["Welpe", "katze"]}',
     {"category": ["Katze", "Maus", "Pferd"], "semantic": ["Welpe"]}),
    ('{"category": [], "semantic": ["Welpe"]}', None),
    ('{"category": ["Katze"], "semantic": [3]}', None),
    ('{"category": ["Katze"], "semantic": "Welpe"}', None),
    ('{"category": ["Katze"]}', None),
    ('{"category": ["Katze"], "semantic": ["Welpe"]} and more', None),
]  # fmt: skip


@pytest.mark.parametrize("reply, expected", FEEDBACK)
def test_feedback_replies(reply, expected):
    assert parse_feedback(reply, SOURCE) == expected


@pytest.mark.parametrize("reply, expected", SENTENCES)
def test_sentence_replies(reply, expected):
    assert parse_sentence(reply) == expected


@pytest.mark.parametrize("reply, expected", ANALOGIES)
def test_analogy_replies(reply, expected):
    assert parse_analogy(reply, "Hund", 3) == expected


def test_prompts_are_files_a_user_overrides(tmp_path):
    shipped = Prompts(None, "de", "en")
    asked = shipped.render("feedback", source=SOURCE, translation="a cat runs .")
    assert "German source: " + SOURCE in asked and "English translation" in asked
    assert '{"errors": [{"source": "...", "student": "...", "correction": "..."}]' in asked
    (tmp_path / "feedback.txt").write_text("{src_lang} {source} -> {translation}\n")
    mine = Prompts(tmp_path, "de", "en")
    assert mine.render("feedback", source="a", translation="b") == "German a -> b"
    assert mine.templates["synthesis"] == shipped.templates["synthesis"]
    (tmp_path / "context.txt").write_text("a sentence, please\n")
    with pytest.raises(EvokdError, match=r"context.txt: holds no \{word\}"):
        Prompts(tmp_path, "de", "en")
    with pytest.raises(EvokdError, match="no such folder"):
        Prompts(tmp_path / "missing", "de", "en")


def test_report_reads_the_step_records(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "steps").mkdir()
    records = {
        "translate": {"judged": 20, "flagged": 6, "unparsed": 3,
                      "llm": {"calls": 20, "cached": 0, "seconds": 1.5, "prompt_tokens": 900,
                              "completion_tokens": 300}},
        "synthesize": {"unparsed": 2, "written": 10, "kept": 7,
                       "llm": {"calls": 12, "cached": 4, "seconds": 0.25, "prompt_tokens": 600,
                               "completion_tokens": 100}},
        "analogy": {"unparsed": 1, "words": 8, "unparsed_contexts": 5, "written": 11, "kept": 9,
                    "llm": {"calls": 30, "cached": 0, "seconds": 2.0, "prompt_tokens": 0,
                            "completion_tokens": 0}},
        "train": {"student": {"bleu": 12.5}, "patched": {"bleu": 13.25}},
    }  # fmt: skip
    for step, stats in records.items():
        write_json(ws.record_path(step), {"step": step, "finished": True, "stats": stats})
    assert write_report(ws) == read_json(tmp_path / "report.json") == {
        "judged": 20, "flagged": 6,
        "unparsed": {"feedback": 3, "synthesis": 2, "analogy": 1, "contexts": 5},
        "contexts": {"written": 10, "kept": 7},
        "analogies": {"words": 8, "written": 11, "kept": 9},
        "calls": {"calls": 62, "cached": 4, "seconds": 3.75, "prompt_tokens": 1500,
                  "completion_tokens": 400},
        "bleu": {"before": 12.5, "after": 13.25},
    }  # fmt: skip


# --- the pipeline against a served model -----------------------------------------------------

SETTINGS = {"cpu": True, "beam": 1, "max_len_a": 0.0, "max_len_b": 6, "chunk_size": 4,
            "llm_max_tokens": 8, "llm_samples": 2, "analogy_k": 2}  # fmt: skip
FAST = ["--cpu", "--beam", "1", "--max-len-a", "0", "--max-len-b", "6", "--chunk-size", "4",
        "--llm-max-tokens", "8", "--llm-samples", "2", "--analogy-k", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder made by `evokd prepare`, a student trained on it for an epoch, a pool file of
    its first training sources, the tiny LM served."""
    root = tmp_path_factory.mktemp("patch-llm")
    data = root / "data"
    prepare("multi30k", data, train_size=40, eval_size=8, vocab_size=300)
    utils.train(data, root / "student", "transformer_evokd_tiny_student", epochs=1)
    pool = root / "pool.de"
    pool.write_text("\n".join(corpus_lines("de", N_POOL)) + "\n", encoding="utf-8")
    folder = llama(root, positions=2048)  # the patch prompts are long for its 400 tokens
    with serve(folder, root / "serve.log") as url:
        yield {"root": root, "data": data, "student": root / "student" / "checkpoint_last.pt",
               "pool": pool, "llm": folder, "url": url, "cache": root / "replies"}  # fmt: skip


def argv(world, out, step="translate", *extra):
    return ["patch", step, "--student", world["student"], "--teacher", world["url"],
            "--teacher-model", world["llm"], "--data", world["data"], "--pool", world["pool"],
            "--out", out, "--reply-cache", world["cache"], *FAST, *extra]  # fmt: skip


def cached_replies(world):
    return len(list(Path(world["cache"]).glob("*/*.json")))


@pytest.fixture(scope="module")
def judged(world):
    """The translate step killed before the 6th reply is read (one request at a time), then
    resumed."""
    out = world["root"] / "judged"
    faults.killed_run(argv(world, out, "translate", "--concurrency", "1"),
                      "evokd.teachers.server:read_answer", n=6, when="before")  # fmt: skip
    assert cached_replies(world) == 6  # the 6th was received and kept before the kill
    utils.evokd_in_process(argv(world, out))
    return out


def test_killed_run_resumes_from_the_reply_cache(world, judged):
    stats = read_json(judged / "steps" / "translate.json")["stats"]
    # The 10 sentences are one batch, so one chunk, unfinished when killed: the 6 replies
    # received come from the cache, the 4 others from the server.
    assert stats["llm"]["calls"] == N_POOL - 6
    assert stats["llm"]["cached"] == 6
    assert cached_replies(world) == N_POOL
    assert stats["judged"] == N_POOL
    assert stats["unparsed"] == N_POOL and stats["flagged"] == 0  # a random model's nonsense


def test_every_row_keeps_its_own_sentence(world, judged):
    rows = read_jsonl(judged / "translations.jsonl")
    encoder = load_encoder(world["data"], "de")
    lines = corpus_lines("de", N_POOL)
    assert [r["id"] for r in rows] == list(range(N_POOL))
    assert [r["source_bpe"] for r in rows] == encoder.encode_lines(lines)
    for row in rows:
        assert set(row) == {"id", "source", "student", "source_bpe", "student_bpe", "parsed",
                            "errors", "correction", "teacher", "teacher_bpe"}  # fmt: skip
        assert not row["parsed"] and row["errors"] == [] and row["teacher_bpe"] == ""


def test_a_rerun_makes_no_call(world, judged, tmp_path):
    out = tmp_path / "again"
    utils.evokd_in_process(argv(world, out))
    stats = read_json(out / "steps" / "translate.json")["stats"]
    assert stats["llm"]["calls"] == 0 and stats["llm"]["cached"] == N_POOL
    assert (out / "translations.jsonl").read_bytes() == (judged / "translations.jsonl").read_bytes()


def server_teacher(world):
    settings = text.TeacherSettings(
        src_lang="de", tgt_lang="en", model=str(world["llm"]), reply_cache=str(world["cache"]),
        max_len_a=0, max_len_b=6,
    )  # fmt: skip
    return text.open_teacher(world["url"], settings)


def record(teacher, body, reply, **key):
    answer = {"choices": [{"message": {"role": "assistant", "content": reply},
                           "finish_reason": "stop"}]}  # fmt: skip
    path = teacher.cache_path(body, **key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, answer)


def test_whole_pipeline_with_recorded_replies(world, judged, tmp_path):
    """Three sentences get a patcher's reply (one error each), one error a new sentence and its
    translation; everything else is the served model's nonsense."""
    rows = read_jsonl(judged / "translations.jsonl")
    prompts, teacher = Prompts(None, "de", "en"), server_teacher(world)
    flagged = {}
    for row in rows[:3]:
        word = row["source"].split()[1]
        reply = json.dumps({"errors": [{"source": word, "student": "", "correction": "dog"}],
                            "translation": f"A dog number {row['id']}."})  # fmt: skip
        asked = prompts.render("feedback", source=row["source"], translation=row["student"])
        record(teacher, teacher.prompt_body(asked, 8, 0.0), reply, sample=0)
        flagged[row["id"]] = (row, word.lower())
    pairs = list(dict.fromkeys((w, rows[i]["source"]) for i, (_, w) in flagged.items()))
    word, origin = pairs[0]
    asked = prompts.render("synthesis", word=word, correction="dog", source=origin)
    sentence = f"Hier ist {word} ."
    record(
        teacher, teacher.prompt_body(asked, 8, 1.0), json.dumps({"sentence": sentence}), sample=0
    )
    record(teacher, teacher.body(sentence), "It is here.")

    out = tmp_path / "patched"  # every step but train (fairseq-train, tested in test_patch.py)
    run_patch(world["student"], world["url"], world["data"], out, pool=world["pool"],
              steps=STEPS[:-1], **SETTINGS, teacher_model=str(world["llm"]),
              reply_cache=str(world["cache"]))  # fmt: skip
    report = read_json(out / "report.json")
    n_pairs = len(pairs)
    assert report["judged"] == N_POOL and report["flagged"] == 3
    assert report["unparsed"] == {"feedback": N_POOL - 3, "synthesis": 2 * n_pairs - 1,
                                  "analogy": n_pairs, "contexts": 0}  # fmt: skip
    assert report["contexts"] == {"written": 1, "kept": 1}
    assert report["analogies"] == {"words": 0, "written": 0, "kept": 0}
    # New calls: the synthesis samples not recorded, one analogy request per pair.
    assert report["calls"]["calls"] == (2 * n_pairs - 1) + n_pairs
    assert report["calls"]["cached"] == N_POOL + 1 + 1
    assert report["calls"]["seconds"] > 0
    assert report["bleu"] == {"before": None, "after": None}  # not trained

    en = load_encoder(world["data"], "en")
    patch = read_jsonl(out / "patch.jsonl")
    by_origin = {o: [r for r in patch if r["origin"] == o] for o in ("selected", "synthesis")}
    assert sorted(r["from"] for r in by_origin["selected"]) == sorted(flagged)
    for row in by_origin["selected"]:
        assert row["source_bpe"] == flagged[row["from"]][0]["source_bpe"]
        assert row["target_bpe"] == en(f"A dog number {row['from']}.")
    [synth] = by_origin["synthesis"]
    [written] = read_jsonl(out / "synthesis.jsonl")
    assert set(written) == {"id", "origin", "sentence", "source", "teacher", "words", "corrected",
                            "problem", "kept", "source_bpe", "teacher_bpe"}  # fmt: skip
    assert (written["sentence"], written["words"], written["kept"]) == (sentence, [word], True)
    assert synth["source_bpe"] == load_encoder(world["data"], "de")(sentence)
    assert synth["target_bpe"] == en("It is here.")
    assert sum(r["origin"] == "replay" for r in patch) == 4  # --replay-ratio 1

    # Demonstrations over the same pool: the recorded replies become the pairs.
    demo = tmp_path / "demo"
    utils.evokd_in_process(argv(world, demo, "demonstrations", "--sample", N_POOL))
    asked = read_jsonl(demo / "demonstrations" / "prompts.jsonl")
    assert [r["id"] for r in asked] == list(range(N_POOL))
    pairs_out = read_jsonl(demo / "demonstrations" / "pairs.jsonl")
    assert [p["id"] for p in pairs_out] == sorted(flagged)
    for pair in pairs_out:
        assert pair["messages"][0] == {"role": "user", "content": pair["prompt"]}
        assert json.loads(pair["messages"][1]["content"])["translation"] == (
            f"A dog number {pair['id']}."
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher_model": "no-such-model"}, "does not serve it"),
        ({"teacher": "dead"}, "no usable answer"),
        ({"timeout": 1e-4}, "timed out"),
    ],
)
def test_server_errors_are_clear(world, tmp_path, change, message):
    settings = {"teacher_model": str(world["llm"]), "retries": 0, "timeout": 5, "cpu": True}
    teacher = world["url"]
    if change.pop("teacher", None):
        teacher = f"http://127.0.0.1:{free_port()}/v1"
    settings.update(change)
    with pytest.raises(EvokdError, match=message) as exc:
        run_patch(world["student"], teacher, world["data"], tmp_path / "out",
                  pool=world["pool"], steps=["translate"], **settings)  # fmt: skip
    assert teacher in str(exc.value) or settings["teacher_model"] in str(exc.value)


def test_a_local_causal_lm_keeps_its_replies(world, tmp_path):
    """The same calls through a Hugging Face causal-LM folder: sampled replies and translations
    are kept by (model, prompt, settings, sample), so a second teacher on the same cache calls
    nothing."""
    settings = text.TeacherSettings(src_lang="de", tgt_lang="en", reply_cache=str(tmp_path))
    prompts = ["Ein Hund.", "Eine Katze."]
    with text.open_teacher(world["llm"], settings) as llm:
        first = llm.complete(prompts, 4, temperature=1.0, samples=2)
        assert llm.usage["calls"] == 4 and llm.usage["cached"] == 0
        assert 0 < llm.usage["completion_tokens"] <= 4 * 4 and llm.usage["prompt_tokens"] > 0
        translated = llm.translate(prompts)
        assert llm.usage["calls"] == 4 + 2
    assert [len(group) for group in first] == [2, 2]
    assert len(list(tmp_path.glob("*/*.json"))) == 4 + 2
    with text.open_teacher(world["llm"], settings) as llm:
        assert llm.complete(prompts, 4, temperature=1.0, samples=2) == first
        assert llm.translate(prompts) == translated
        assert llm.usage["calls"] == 0 and llm.usage["cached"] == 4 + 2
