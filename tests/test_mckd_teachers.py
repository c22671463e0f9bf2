"""MCKD's first pseudo-labels from a teacher with its own vocabulary (a CTranslate2 model
folder) and from a labels file: the same labels as `evokd distill-data` writes, pairs kept
aligned, a file's lines prepared like the folder's own text, and what is refused."""

import hashlib
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from evokd.chain.stage import StageTrainer  # noqa: E402
from evokd.data.folder import load_side  # noqa: E402
from evokd.data.prepare import prepare, spm_model_path  # noqa: E402
from tests.llm import corpus_lines  # noqa: E402
from tests.test_mckd import ARCH, MICRO  # noqa: E402
from tests.test_teachers import N_TRAIN, convert, marian  # noqa: E402

DECODING = ["--beam", "2", "--max-len-a", "0.5", "--max-len-b", "4", "--batch-size", "4"]
EMPTY = (3, 7)  # lines of the labels file left empty (the second holds only spaces)
OWN = 10  # a line of the labels file that is not the reference
SENTENCE = "A man in a blue shirt is standing on the street."
COPIED = [f"train.de-en.{lang}.{ext}" for lang in ("de", "en") for ext in ("bin", "idx")] + [
    "text/train.distilled.en", "text/train.distilled.ids", "text/train.teacher.en",
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder made by `evokd prepare` (48 training pairs), a CTranslate2 teacher converted
    from a random Marian model, and a plan file holding test_mckd's tiny training flags."""
    root = tmp_path_factory.mktemp("mckd_teachers")
    data = root / "data"
    prepare("multi30k", data, train_size=N_TRAIN, eval_size=8, vocab_size=300)
    plan = root / "plan.yaml"
    stages = [{"name": "s", "arch": ARCH, "max_epoch": 1}]
    plan.write_text(json.dumps({"data": "unused", "train": MICRO, "stages": stages}))
    ct2 = convert(marian(root / "stops", eos_bias=2.0), root / "ct2")
    return SimpleNamespace(root=root, data=data, plan=plan, ct2=ct2)


def mckd(evokd_main, world, out, *first):
    return evokd_main(
        "mckd", *first, "--data", world.data, "--out", out, "--arch", ARCH, "--stages", "1",
        "--max-epoch", "1", "--seed", "3", "--plan", world.plan, "--gpus", "0",
        "--no-evaluate", *DECODING,
    )  # fmt: skip


def column(folder, lang):
    return [side.tolist() for side in load_side(folder, "train", "de-en", lang)]


def ids_of(folder):
    return [int(i) for i in (folder / "text" / "train.distilled.ids").read_text().split()]


def test_ctranslate2_teacher_labels_equal_distill_data(world, evokd_main, tmp_path):
    out, expected = tmp_path / "run", tmp_path / "distilled"

    def stop(trainer, stage):
        raise KeyboardInterrupt  # the first labels and the halves are made before training

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageTrainer, "train", stop)
        code, _, err = mckd(evokd_main, world, out, "--teacher", world.ct2)
    assert code == 130, err
    code, _, err = evokd_main("distill-data", "--teacher", world.ct2, "--data", world.data,
                              "--out", expected, "--cpu", *DECODING)  # fmt: skip
    assert code == 0, err
    labels = out / "labels" / "teacher"
    for name in COPIED:  # the same labels, pairs and raw outputs, byte for byte
        assert (labels / name).read_bytes() == (expected / name).read_bytes(), name
    ids = ids_of(labels)
    sources, teacher = column(labels, "de"), column(labels, "en")
    assert sources == [column(world.data, "de")[i] for i in ids]  # each label with its source
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["A"] + split["B"]) == list(range(len(ids)))
    for half in ("A", "B"):  # the halves hold the pool's pairs, still aligned
        folder = out / "labels" / "stage1" / half
        assert column(folder, "de") == [sources[j] for j in split[half]]
        assert column(folder, "en") == [teacher[j] for j in split[half]]
    record = json.loads((out / "mckd_settings.json").read_text())["first_labels"]
    assert record["kind"] == "ctranslate2" and record["path"] == str(world.ct2)
    assert record["batch_size"] == 4 and record["on_bad_output"] == "drop"
    assert "teacher" not in json.loads((out / "mckd_settings.json").read_text())


def moses(line):
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang="en").tokenize(line, return_str=True, escape=True).lower()


def oracle(line, data):
    """``line`` tokenized, lowercased and BPE'd with sacremoses and sentencepiece directly."""
    import sentencepiece as spm

    model = spm.SentencePieceProcessor(model_file=str(spm_model_path(data)))
    pieces = model.encode(moses(line), out_type=str)
    words = []
    for piece in pieces:  # subword-nmt style: "@@" ends every piece but a word's last
        if piece.startswith("\u2581"):
            words.append([])
            piece = piece[1:]
        if piece:
            words[-1].append(piece)
    return " ".join("@@ ".join(w) for w in words if w)


@pytest.fixture(scope="module")
def from_file(world, tmp_path_factory):
    """A whole run (K = 1) on a labels file: the references, two empty lines, one sentence
    of our own."""
    import evokd.cli

    root = tmp_path_factory.mktemp("labels")
    lines = corpus_lines("en", N_TRAIN)
    lines[EMPTY[0]], lines[EMPTY[1]], lines[OWN] = "", "   ", SENTENCE
    path = root / "labels.en"
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    out = root / "run"
    argv = ["mckd", "--labels", path, "--data", world.data, "--out", out, "--arch", ARCH,
            "--stages", "1", "--max-epoch", "1", "--seed", "3", "--plan", world.plan,
            "--gpus", "0", "--no-evaluate", *DECODING]  # fmt: skip
    assert evokd.cli.main([str(a) for a in argv]) == 0
    return SimpleNamespace(path=path, out=out, argv=argv, lines=lines)


def test_labels_file_goes_through_the_folders_preparation(world, from_file):
    from fairseq.data import Dictionary

    labels = from_file.out / "labels" / "teacher"
    kept = [i for i in range(N_TRAIN) if i not in EMPTY]
    assert ids_of(labels) == kept  # the empty lines' pairs dropped, none shifted
    assert column(labels, "de") == [column(world.data, "de")[i] for i in kept]
    refs = column(world.data, "en")  # `evokd prepare` made these from the same raw lines
    vocab = Dictionary.load(str(world.data / "dict.en.txt"))
    own = vocab.encode_line(oracle(SENTENCE, world.data), add_if_not_exist=False).tolist()
    assert vocab.unk() not in own
    assert column(labels, "en") == [own if i == OWN else refs[i] for i in kept]
    info = json.loads((labels / "distill.json").read_text())
    assert info["counts"]["empty"] == 2 and info["counts"]["dropped"] == 2
    assert info["examples"] == N_TRAIN - 2


def test_labels_file_run_is_recorded_and_scored_on_the_pool(world, from_file):
    from sacrebleu.metrics import BLEU

    out, n = from_file.out, N_TRAIN - 2
    report = json.loads((out / "mckd.json").read_text())
    source = report["first_labels"]
    digest = hashlib.sha256(from_file.path.read_bytes()).hexdigest()
    assert source["kind"] == "file" and source["path"] == str(from_file.path)
    assert source["sha256"] == digest and (source["pairs"], source["of"]) == (n, N_TRAIN)
    assert report["labels"][0]["made_by"] == "labels file"
    assert f"labels file {from_file.path} (sha256 {digest[:12]})" in (out / "mckd.md").read_text()
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["A"] + split["B"]) == list(range(n))
    assert report["final"]["pairs"] == n and len(column(out / "labels" / "final", "en")) == n
    # stage 1 scored against the references of the pool's pairs: all but one are equal
    refs = [x for i, x in enumerate(corpus_lines("en", N_TRAIN)) if i not in EMPTY]
    assert report["labels"][0]["pairs"] == n and report["labels"][0]["bleu"] < 100
    tokenized = [moses(x) for x in refs]
    hyps = list(tokenized)
    hyps[[i for i in range(N_TRAIN) if i not in EMPTY].index(OWN)] = moses(SENTENCE)
    bleu = BLEU(tokenize="none").corpus_score(hyps, [tokenized]).score
    assert report["labels"][0]["bleu"] == pytest.approx(bleu)


def test_other_labels_are_refused_on_rerun(from_file, evokd_main):
    path = from_file.path
    before = sorted(from_file.out.rglob("*"))
    other = path.with_name("other.en")
    other.write_text(path.read_text().replace("\n\n", "\nA dog.\n", 1), encoding="utf-8")
    code, _, err = evokd_main(*[other if a == path else a for a in from_file.argv])
    assert code == 2 and "made with other settings" in err
    assert "first_labels.path" in err and "first_labels.sha256" in err
    assert sorted(from_file.out.rglob("*")) == before


@pytest.mark.parametrize(
    "first, message",
    [
        (["--labels", "SHORT"], "--labels SHORT: 47 lines, but the training set of --data has 48"),
        (["--labels", "GOOD", "--teacher", "CT2"], "--teacher and --labels: give exactly one"),
        ([], "--teacher and --labels: give exactly one"),
        (
            ["--labels", "GOOD", "--teacher-model", "m"],
            "--teacher-model: only for a teacher, not with --labels",
        ),
        (["--labels", "MISSING"], "--labels MISSING: no such file"),
    ],
)
def test_refused_before_any_work(world, evokd_main, tmp_path, first, message):
    paths = {"SHORT": tmp_path / "short.en", "GOOD": tmp_path / "good.en", "CT2": world.ct2,
             "MISSING": tmp_path / "missing.en"}  # fmt: skip
    lines = corpus_lines("en", N_TRAIN)
    paths["SHORT"].write_text("".join(f"{x}\n" for x in lines[:-1]), encoding="utf-8")
    paths["GOOD"].write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    first = [str(paths.get(a, a)) for a in first]
    for name, path in paths.items():
        message = message.replace(name, str(path))
    out = tmp_path / "out"
    code, _, err = mckd(evokd_main, world, out, *first)
    assert code == 2 and message in err, err
    assert not out.exists()
