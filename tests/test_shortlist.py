"""Lexical shortlists (evokd.deploy.shortlist): `evokd export --ct2 --shortlist` writes
CTranslate2's vmap.txt, and `evokd bench-translate` translates with and without it.

The model is the session's tiny teacher (conftest's ``teacher_ckpt``, two epochs on
``data_bin``), exported to CTranslate2 int8 with a shortlist built from its own training
pairs; the Dice entries are checked against an independent count over a hand-made corpus.
"""

import json
import shutil
from collections import Counter
from pathlib import Path

import ctranslate2
import pytest

from evokd import cli
from evokd.core.metrics import score
from evokd.data.folder import write_dataset
from evokd.deploy.export import EXPORT_INFO, export_ct2
from evokd.deploy.shortlist import VMAP, build, check_model, read_vmap
from evokd.deploy.workload import source_tokens
from evokd.errors import EvokdError

BEST, FREQUENT = 10, 20  # small, so that the shortlist restricts the tiny vocabulary
SPECIAL = {"<s>", "<blank>", "</s>", "<unk>"}
# BLEU of the shortlisted model may differ from the unrestricted one by at most this much
# (40 sentences of a two-epoch model; Marian reports about 0.1 on real students)
BLEU_TOLERANCE = 1.0


def lines_of(path):
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def exported(data_bin, teacher_ckpt, tmp_path_factory):
    """(model folder, printed output) of `evokd export --ct2 --shortlist`."""
    out = tmp_path_factory.mktemp("shortlist") / "model-int8"
    argv = ["export", "--ct2", teacher_ckpt, out, "--data", data_bin, "--shortlist", data_bin]
    argv += ["--shortlist-best", BEST, "--shortlist-frequent", FREQUENT]
    return out, cli.main([str(a) for a in argv])


def candidates(vmap, source):
    """The targets CTranslate2 may emit for ``source`` under ``vmap`` (read independently)."""
    allowed = set(vmap[""]) | SPECIAL
    for token in source:
        allowed |= set(vmap.get(token, ()))
    return allowed


def test_ctranslate2_translates_only_shortlisted_pieces(exported, data_bin):
    out, code = exported
    assert code == 0
    vmap = read_vmap(out / VMAP)
    assert len(vmap[""]) == FREQUENT
    assert all(len(v) <= BEST for k, v in vmap.items() if k)
    vocabulary = json.loads((out / "shared_vocabulary.json").read_text(encoding="utf-8"))
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    sources = source_tokens(data_bin, "valid", "de", "en")[:20]
    for source in sources:  # one per call: CTranslate2 joins the entries of a whole batch
        allowed = candidates(vmap, source)
        assert len(allowed) < len(vocabulary) / 2  # a real restriction
        (result,) = translator.translate_batch([source], beam_size=2, max_decoding_length=20,
                                               use_vmap=True)  # fmt: skip
        assert set(result.hypotheses[0]) <= allowed, source


def test_coverage_recorded_matches_an_independent_count(exported, data_bin):
    out, _ = exported
    info = json.loads((out / EXPORT_INFO).read_text(encoding="utf-8"))["shortlist"]
    assert (info["best"], info["frequent"], info["coverage_subset"]) == (BEST, FREQUENT, "valid")
    vmap = read_vmap(out / VMAP)
    known = {line.split(" ")[0] for line in lines_of(data_bin / "dict.en.txt")}
    text = Path(data_bin).parent / "text"
    covered = total = 0
    for src, ref in zip(lines_of(text / "valid.de"), lines_of(text / "valid.en")):
        allowed = candidates(vmap, src.split())
        covered += sum(t in allowed or t not in known for t in ref.split())  # <unk> is kept
        total += len(ref.split())
    assert info["coverage"] == pytest.approx(covered / total, abs=1e-4)
    assert 0.3 < info["coverage"] < 1


def test_shortlisted_int8_keeps_bleu(exported, data_bin):
    out, _ = exported
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    sources = source_tokens(data_bin, "valid", "de", "en")
    refs = lines_of(Path(data_bin).parent / "text" / "valid.en")
    bleu = {}
    for use_vmap in (False, True):
        results = translator.translate_batch(sources, beam_size=5, max_batch_size=8,
                                             max_decoding_length=40, use_vmap=use_vmap)  # fmt: skip
        bleu[use_vmap] = score([" ".join(r.hypotheses[0]) for r in results], refs)["bleu"]
    assert abs(bleu[True] - bleu[False]) <= BLEU_TOLERANCE, bleu


def test_greedy_output_inside_the_shortlist_is_unchanged(exported, data_bin):
    """Greedy search takes the best piece of each step: when the unrestricted output lies
    in the sentence's shortlist, every step's best piece was a candidate, and the
    shortlisted search must take the same one."""
    out, _ = exported
    vmap = read_vmap(out / VMAP)
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    inside = 0
    for source in source_tokens(data_bin, "valid", "de", "en"):
        free, restricted = (
            translator.translate_batch([source], beam_size=1, max_decoding_length=20,
                                       use_vmap=use_vmap)[0].hypotheses[0]
            for use_vmap in (False, True)
        )  # fmt: skip
        if set(free) <= candidates(vmap, source):
            inside += 1
            assert restricted == free, source
    assert inside >= 5  # the check was made


def test_built_twice_is_identical(exported, data_bin):
    out, _ = exported
    again = build(data_bin, "de", "en", best=BEST, frequent=FREQUENT)
    assert again.vmap_text() == (out / VMAP).read_text(encoding="utf-8")


# --- a hand-made corpus ---------------------------------------------------------------------

MINI = [  # (source, target)
    ("a b", "x y"),
    ("a c", "x z"),
    ("b c", "y z"),
    ("a", "x w"),
    ("d a", "w x x"),
]


@pytest.fixture
def mini(tmp_path):
    """MINI binarized: dictionaries in first-seen order, ids from 4 (fairseq's specials)."""
    folder = tmp_path / "mini"
    folder.mkdir()
    for side, lang in enumerate(("de", "en")):
        words = list(dict.fromkeys(w for pair in MINI for w in pair[side].split()))
        ids = {w: 4 + k for k, w in enumerate(words)}
        (folder / f"dict.{lang}.txt").write_text("".join(f"{w} 1\n" for w in words))
        items = [[ids[w] for w in pair[side].split()] + [2] for pair in MINI]
        write_dataset(folder / f"train.de-en.{lang}", items, 4 + len(words))
    return folder


def dice_oracle(pairs, best):
    """Per source word, its targets by Dice over sentence sets (ties: more pairs together,
    then first seen in the target dictionary), counted with sets and Counters."""
    order = list(dict.fromkeys(w for _, t in pairs for w in t.split()))
    c_src, c_tgt, both = Counter(), Counter(), Counter()
    for s, t in pairs:
        c_src.update(set(s.split()))
        c_tgt.update(set(t.split()))
        both.update((a, b) for a in set(s.split()) for b in set(t.split()))
    table = {}
    for s in dict.fromkeys(w for p, _ in pairs for w in p.split()):
        scored = [(2 * n / (c_src[s] + c_tgt[t]), n, t) for (a, t), n in both.items() if a == s]
        scored.sort(key=lambda d: (-d[0], -d[1], order.index(d[2])))
        table[s] = [t for _, _, t in scored[:best]]
    return table


def test_entries_match_an_independent_count(mini):
    shortlist = build(mini, "de", "en", best=2, frequent=1)
    assert shortlist.entries == dice_oracle(MINI, 2)
    # by hand: a is in pairs 1, 2, 4, 5 and x in the same four: dice 1; w: 2*2/(4+2)
    assert shortlist.entries["a"] == ["x", "w"]
    assert shortlist.entries["d"] == ["w", "x"]  # w: 2*1/(1+2), x: 2*1/(1+4)
    assert shortlist.frequent == ["x"]  # 5 occurrences, the others 2
    assert shortlist.info["coverage_subset"] == "train"


def test_candidates_are_the_entries_and_the_frequent(mini):
    one = build(mini, "de", "en", best=1, frequent=1)
    assert one.entries == {"a": ["x"], "b": ["y"], "c": ["z"], "d": ["w"]}
    assert one.candidates(["b", "d"]) == {"x", "y", "w"}
    # by hand: of the 11 reference pieces, all but the w of "a -> x w" are allowed
    assert one.info["coverage"] == round(10 / 11, 4)
    lines = ["\tx", "a\tx", "b\ty", "c\tz", "d\tw"]  # CTranslate2's form, source order
    assert one.vmap_text() == "".join(line + "\n" for line in lines)


# --- bad input ------------------------------------------------------------------------------


def test_shortlist_from_another_dictionary_is_refused(mini, data_bin, teacher_ckpt, tmp_path):
    other = build(mini, "de", "en")
    with pytest.raises(EvokdError) as err:
        export_ct2(teacher_ckpt, tmp_path / "out", data_bin, shortlist=other)
    assert str(mini / "dict.de.txt") in str(err.value)
    assert str(Path(data_bin) / "dict.de.txt") in str(err.value)
    assert not (tmp_path / "out").exists()


def test_model_with_a_map_of_another_vocabulary_is_refused(exported, mini, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(exported[0], out)
    (out / VMAP).write_text(build(mini, "de", "en").vmap_text(), encoding="utf-8")
    with pytest.raises(EvokdError) as err:
        check_model(out)
    assert str(out / VMAP) in str(err.value) and "vocabulary.json" in str(err.value)


# --- bench-translate ------------------------------------------------------------------------


def test_bench_translate_rows_with_and_without_shortlist(data_bin, teacher_ckpt, tmp_path):
    argv = ["bench-translate", "--teacher", teacher_ckpt, "--student", teacher_ckpt]
    argv += ["--data", data_bin, "--subset", "valid", "--beam", "1", "--max-len", "20"]
    argv += ["--threads", "1", "--latency-sentences", "0", "--student-ct2", "int8"]
    argv += ["--shortlist-data", data_bin, "--shortlist", "both"]
    argv += ["--shortlist-best", BEST, "--shortlist-frequent", FREQUENT]
    argv += ["--json", tmp_path / "bench.json"]
    assert cli.main([str(a) for a in argv]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))["rows"]
    found = [(r["system"], r["shortlist"]) for r in rows]
    assert found == [
        ("teacher (fairseq)", False),
        ("student (fairseq)", False),
        ("student (CTranslate2 int8)", False),
        ("student (CTranslate2 int8, shortlist)", True),
    ]
    assert abs(rows[3]["bleu"] - rows[2]["bleu"]) <= BLEU_TOLERANCE


def test_a_bad_bleu_budget_is_refused_before_any_work(evokd_main, tmp_path):
    """Named before anything is read: the checkpoints given do not even exist."""
    argv = ["bench-translate", "--teacher", tmp_path / "none.pt", "--student", tmp_path / "s.pt"]
    code, _, err = evokd_main(*argv, "--data", tmp_path, "--bleu-budget", "-1")
    assert code != 0 and "--bleu-budget -1.0: expected a number >= 0" in err
