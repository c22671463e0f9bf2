"""The report's statistics: sacrebleu's paired bootstrap, learning curves from fairseq's
logs, and the mean and deviation over seeds."""

import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from evokd.chain import curves, seeds
from evokd.chain.report import (
    costs_markdown,
    markdown_table,
    seeds_table,
    significance_table,
    write_report,
)
from evokd.chain.results import costs, default_pairs
from evokd.evaluation import significance
from evokd.evaluation.evaluate import evaluate_checkpoint
from tests import utils

WORDS = "a man in a red shirt is riding a horse on the beach while two dogs play".split()


def noisy(refs, rate, rng):
    """Each reference word replaced by a random word with probability ``rate``."""
    return [
        " ".join(w if rng.random() > rate else rng.choice(WORDS) for w in r.split()) for r in refs
    ]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """40 references and two systems' hypotheses, as lists and as files."""
    rng = random.Random(1)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(40)]
    found = {"refs": refs, "base": noisy(refs, 0.5, rng), "sys": noisy(refs, 0.3, rng)}
    folder = tmp_path_factory.mktemp("texts")
    for name, lines in list(found.items()):
        found[f"{name}_file"] = folder / f"{name}.txt"
        found[f"{name}_file"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return found


# --- significance ----------------------------------------------------------------------------


# sacrebleu refs.txt -i base.txt sys.txt --paired-bs --paired-bs-n 300 -w 4 with
# SACREBLEU_SEED=7, one metric per run (``-m bleu --tokenize none --force``; ``-m chrf``), on
# the ``texts`` fixture written to files: computed once with sacrebleu 2.6.0's command line.
# (score, mean, 95% half-width) of the baseline and the system, and the p-value (1/301).
GOLDEN_BOOTSTRAP = {
    "bleu": ((26.8811, 27.1059, 6.9561), (53.9360, 53.5762, 9.8976), 0.0033),
    "chrf": ((47.7585, 47.9404, 6.3959), (66.4309, 66.3908, 7.4216), 0.0033),
}


def test_bootstrap_is_sacrebleus_command_line(texts, monkeypatch):
    base, system, refs = texts["base"], texts["sys"], texts["refs"]
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    found = significance.compare(base, system, refs, n_samples=300, seed=7)
    assert set(found) == {"bleu", "chrf"} and "SACREBLEU_SEED" not in os.environ
    close = {"abs": 5e-5}
    for key, (own_base, own_sys, p_value) in GOLDEN_BOOTSTRAP.items():
        result = found[key]
        got_base = (result["baseline"], result["baseline_mean"], result["baseline_ci"])
        got_sys = (result["system"], result["system_mean"], result["system_ci"])
        assert got_base == pytest.approx(own_base, **close), key
        assert got_sys == pytest.approx(own_sys, **close), key
        assert result["p_value"] == pytest.approx(p_value, abs=5e-5) and result["p_value"] > 0
        assert result["difference"] == pytest.approx(own_sys[0] - own_base[0], abs=1e-4)
        low, high = result["system_interval"]
        assert (high + low) / 2 == pytest.approx(own_sys[1], **close)
        assert (high - low) / 2 == pytest.approx(own_sys[2], **close)
        assert result["n_samples"] == 300 and result["seed"] == 7 and result["n_sentences"] == 40
        assert "bs:300" in result["signature"] and "seed:7" in result["signature"]
    assert found["bleu"]["metric"] == "BLEU" and found["chrf"]["metric"] == "chrF2"
    assert "tok:none" in found["bleu"]["signature"]
    assert "case:mixed" in found["chrf"]["signature"]
    # the seed is the one given (seed 8: 10.3520 by the same command line), and sacrebleu's
    # variable is put back as it was
    monkeypatch.setenv("SACREBLEU_SEED", "99")
    other = significance.compare(base, system, refs, n_samples=300, seed=8)
    assert other["bleu"]["system_ci"] == pytest.approx(10.3520, **close)
    assert os.environ["SACREBLEU_SEED"] == "99"


def test_compare_evaluations_scores_like_evaluate(texts):
    """From the files an evaluation names: tokenized BLEU on the tokenized files, chrF on
    the detokenized hypotheses and the raw references, exactly as evaluate scores them."""

    def evaluation(hyps):
        return {
            "data": "d", "subset": None, "src_file": "src", "ref_file": str(texts["refs_file"]),
            "n_sentences": 40, "hypotheses": str(hyps), "hypotheses_tok": str(hyps),
            "references": str(texts["refs_file"]), "chrf": 1.0,
        }  # fmt: skip

    found = significance.compare_evaluations(
        evaluation(texts["base_file"]), evaluation(texts["sys_file"]), n_samples=200, seed=3
    )
    refs = texts["refs"]
    # the scores of GOLDEN_BOOTSTRAP (the text is lowercase: chrF case-insensitive or not)
    for side, k in (("baseline", 0), ("system", 1)):
        assert found["bleu"][side] == pytest.approx(GOLDEN_BOOTSTRAP["bleu"][k][0], abs=5e-5)
        assert found["chrf"][side] == pytest.approx(GOLDEN_BOOTSTRAP["chrf"][k][0], abs=5e-5)
    # SACREBLEU_SEED=3 sacrebleu ... --paired-bs-n 200 -m chrf --chrf-lowercase -w 4
    assert found["chrf"]["p_value"] == pytest.approx(0.0050, abs=5e-5)
    assert found["chrf"]["system_ci"] == pytest.approx(7.0265, abs=5e-5)
    assert "case:lc" in found["chrf"]["signature"]

    with pytest.raises(ValueError, match="n_sentences"):
        significance.compare_evaluations(
            evaluation(texts["base_file"]), {**evaluation(texts["sys_file"]), "n_sentences": 3}
        )
    with pytest.raises(ValueError, match="aligned"):
        significance.compare(texts["base"][:-1], texts["sys"], refs)
    with pytest.raises(ValueError, match="seed"):
        significance.compare(texts["base"], texts["sys"], refs, seed=0)


def test_default_pairs():
    names = [
        "student_model", "junior_teacher", "senior_teacher", "junior_student",
        "senior_student", "master_student", "TAKD_assistant_teacher", "TAKD_student",
    ]  # fmt: skip
    pairs = default_pairs(names, extra=[["master_student", "junior_student"]])
    assert pairs == [
        ("junior_student", "student_model"),
        ("senior_student", "student_model"),
        ("master_student", "student_model"),
        ("TAKD_student", "student_model"),
        ("master_student", "senior_student"),
        ("master_student", "TAKD_student"),
        ("master_student", "junior_student"),
    ]
    # only stages that exist; a pair once
    extra = [["junior_student", "student_model"], ["nope", "student_model"]]
    assert default_pairs(["student_model", "junior_student"], extra) == [
        ("junior_student", "student_model")
    ]
    assert default_pairs(["master_student", "senior_student"]) == [
        ("master_student", "senior_student")
    ]
    with pytest.raises(ValueError, match="pair"):
        default_pairs(names, extra=[["a", "b", "c"]])


# --- curves from real fairseq logs -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data_bin, tmp_path_factory):
    """A micro model trained 2 epochs (validation every 2 updates and at each epoch's end,
    with --eval-bleu), once with each log format; its log written as the chain writes it."""
    root = tmp_path_factory.mktemp("trained")
    extra = ["--validate-interval-updates", "2", "--eval-bleu"]
    extra += ["--eval-bleu-args", '{"beam": 1, "max_len_b": 8}']
    logs = {}
    for fmt in ("json", "simple"):
        save_dir = root / fmt
        _, out = utils.train(
            data_bin, save_dir, "transformer_evokd_tiny_student", extra + ["--log-format", fmt], 2
        )
        logs[fmt] = save_dir / "train.log"
        logs[fmt].write_text(f"\n$ fairseq-train ...\n{out}", encoding="utf-8")
    return root, logs


def count_validations(log_path):
    text = log_path.read_text(encoding="utf-8")
    return sum(1 for line in text.splitlines() if " | valid | " in line)


def test_one_point_per_validation(trained):
    _, logs = trained
    points = {fmt: curves.stage_points(path) for fmt, path in logs.items()}
    n = count_validations(logs["json"])
    assert (
        n >= 3
        and len(points["json"]) == n
        and len(points["simple"]) == count_validations(logs["simple"])
    )
    records = [r for r in utils.parse_json_log(logs["json"].read_text()) if r["_tag"] == "valid"]
    assert [p["num_updates"] for p in points["json"]] == [
        int(r["valid_num_updates"]) for r in records
    ]
    assert [p["loss"] for p in points["json"]] == [float(r["valid_loss"]) for r in records]
    assert all(p["bleu"] is not None and p["subset"] == "valid" for p in points["json"])
    updates = [p["num_updates"] for p in points["json"]]
    assert updates == sorted(updates) and len(set(updates)) == len(updates)
    # both formats hold the same numbers
    assert points["simple"] == points["json"]
    assert curves.final_updates(logs["json"]) == updates[-1]


def test_resumed_log_keeps_the_latest_run(trained, tmp_path):
    _, logs = trained
    once = curves.stage_points(logs["json"])
    twice = tmp_path / "train.log"  # the whole run again, as after a kill before the end
    twice.write_text(logs["json"].read_text() * 2, encoding="utf-8")
    assert curves.stage_points(twice) == once


def test_init_from_continues_the_source_line(trained, tmp_path):
    _, logs = trained
    own = [(p["num_updates"], p["bleu"]) for p in curves.stage_points(logs["json"])]
    last = curves.final_updates(logs["json"])
    stages = [
        {"name": "junior_student", "log": logs["json"]},
        {"name": "master_student", "log": logs["simple"], "init_from": "junior_student"},
        {"name": "third", "log": logs["json"], "init_from": "master_student"},
        {"name": "carried", "log": logs["json"], "init_from": "junior_student",
         "carries_updates": True},
        {"name": "senior_student", "log": logs["json"], "init_from": "some/checkpoint.pt"},
        {"name": "not_trained", "log": tmp_path / "missing.log"},
    ]  # fmt: skip
    found = curves.chain_curves(stages)
    assert found["metric"] == "bleu"
    lines = found["curves"]
    assert lines["junior_student"] == own and lines["senior_student"] == own
    assert lines["master_student"] == [(x + last, y) for x, y in own]
    assert lines["third"] == [(x + 2 * last, y) for x, y in own]
    assert lines["carried"] == own and lines["not_trained"] == []
    assert found["offsets"]["third"] == 2 * last
    assert found["continues"] == {
        "master_student": "junior_student",
        "third": "master_student",
        "carried": "junior_student",
    }
    # the line carries on where its source stopped
    assert lines["master_student"][0][0] > lines["junior_student"][-1][0]
    # an explicit stop count, and loss on request
    stages[0]["updates"] = 100
    found = curves.chain_curves(stages, metric="loss")
    assert found["metric"] == "loss"
    assert [x for x, _ in found["curves"]["master_student"]] == [x + 100 for x, _ in own]

    png = tmp_path / "curves.png"
    drawn = curves.write_curves(stages, png, title="micro chain")
    # what it drew: BLEU by default, every stage's points, the master's after junior's 100
    assert drawn["metric"] == "bleu" and drawn["curves"]["junior_student"] == own
    assert drawn["curves"]["master_student"] == [(x + 100, y) for x, y in own]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert curves.write_curves(stages[-1:], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="cycle"):
        curves.chain_curves([{"name": "a", "init_from": "b"}, {"name": "b", "init_from": "a"}])


def test_compare_two_real_evaluations(data_bin, trained):
    """Two checkpoints evaluated by evokd evaluate, compared from the files it wrote."""
    root, _ = trained
    outs = [root / "json" / f"checkpoint{epoch}.valid.json" for epoch in (1, 2)]
    for epoch, out in zip((1, 2), outs):
        checkpoint = root / "json" / f"checkpoint{epoch}.pt"
        evaluate_checkpoint(checkpoint, data_bin, "valid", beam=1, max_len_b=8, cpu=True, out=out)
    found = significance.compare_evaluations(outs[0], outs[1], n_samples=200, seed=5)
    assert list(found) == ["bleu"]  # no raw references in this data: no chrF
    first, second = (json.loads(out.read_text()) for out in outs)
    assert found["bleu"]["baseline"] == first["bleu"] and found["bleu"]["system"] == second["bleu"]
    # the files it compared, through the sacrebleu command line with the same seed
    first_hyps, second_hyps, refs = (
        first["hypotheses_tok"],
        second["hypotheses_tok"],
        first["references"],
    )
    cmd = [str(Path(sys.executable).parent / "sacrebleu"), refs, "-i", first_hyps, second_hyps]
    cmd += ["--paired-bs", "--paired-bs-n", "200", "-m", "bleu", "-tok", "none", "--force"]
    cmd += ["-f", "json"]
    env = {**os.environ, "SACREBLEU_SEED": "5"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    own = json.loads(done.stdout)[1]["BLEU"]
    assert found["bleu"]["p_value"] == pytest.approx(own["p_value"], abs=1e-9)
    assert found["bleu"]["system_ci"] == pytest.approx(own["ci"], abs=1e-9)
    rows = significance.compare_stages(
        {"student_model": outs[0], "junior_student": outs[1], "master_student": None},
        default_pairs(["student_model", "junior_student", "master_student"]),
        n_samples=200,
        seed=5,
    )
    assert [(r["system_stage"], r["baseline_stage"], r["key"]) for r in rows] == [
        ("junior_student", "student_model", "bleu")
    ]
    assert rows[0]["p_value"] == found["bleu"]["p_value"]


# --- seeds -----------------------------------------------------------------------------------


def test_mean_and_std_over_two_seeds():
    rows = {
        1: [
            {"stage": "student_model", "bleu": 3.0, "sacrebleu": 2.5, "chrf": 20.0},
            {"stage": "senior_student", "bleu": 5.0, "sacrebleu": None, "chrf": 30.0,
             "seqkd_teacher": "senior_teacher"},
        ],
        2: [
            {"stage": "student_model", "bleu": 4.0, "sacrebleu": 3.5, "chrf": 22.0},
            {"stage": "senior_student", "bleu": 6.5, "sacrebleu": 4.0, "chrf": 31.0},
        ],
    }  # fmt: skip
    found = {row["stage"]: row for row in seeds.aggregate(rows)}
    assert list(found) == ["student_model", "senior_student"]
    student = found["student_model"]
    assert student["n_seeds"] == 2 and student["seeds"] == [1, 2]
    assert student["bleu_mean"] == 3.5
    assert student["bleu_std"] == pytest.approx((((3 - 3.5) ** 2 + (4 - 3.5) ** 2) / 1) ** 0.5)
    assert student["chrf_mean"] == 21.0 and student["chrf_std"] == pytest.approx(2**0.5)
    senior = found["senior_student"]
    assert senior["bleu_std"] == pytest.approx(statistics.stdev([5.0, 6.5]))
    assert senior["sacrebleu_mean"] == 4.0 and senior["sacrebleu_std"] is None
    assert senior["sacrebleu_n"] == 1 and senior["sacrebleu_values"] == [None, 4.0]
    assert senior["seqkd_teacher"] == "senior_teacher"

    table = seeds_table(seeds.aggregate(rows))
    assert "| student_model | 2 | 3.50 ± 0.71 | 3.00 ± 0.71 | 21.00 ± 1.41 |" in table
    assert "| senior_student | 2 | 5.75 ± 1.06 | 4.00 (n=1) | 30.50 ± 0.71 |" in table


# --- the report ------------------------------------------------------------------------------


def test_report_tables_and_curves(texts, tmp_path):
    rows = [
        {"stage": "student_model", "parameters": 1000, "bleu": 3.0},
        {"stage": "senior_teacher", "parameters": 4000, "bleu": 9.0},
        {"stage": "senior_student", "parameters": 1000, "bleu": 5.0,
         "seqkd_teacher": "senior_teacher"},
        {"stage": "master_student", "parameters": 1000, "bleu": 6.0,
         "teacher": "senior_teacher", "seqkd_teacher": "senior_teacher"},
    ]  # fmt: skip
    table = markdown_table(rows)
    assert "| senior_student | 1,000 | senior_teacher (seq) | - |" in table
    assert "| master_student | 1,000 | senior_teacher (word+seq) | - |" in table
    assert "| student_model | 1,000 | - | - |" in table

    result = significance.compare(texts["base"], texts["sys"], texts["refs"], n_samples=100)
    tests = [
        {"system_stage": "senior_student", "baseline_stage": "student_model", "key": k, **r}
        for k, r in result.items()
    ]
    sig = significance_table(tests)
    bleu = result["bleu"]
    low, high = bleu["system_interval"]
    assert (
        f"| senior_student | student_model | tokenized BLEU | {bleu['baseline']:.2f} | "
        f"{bleu['system']:.2f} | {bleu['difference']:+.2f} | [{low:.2f}, {high:.2f}] | "
        f"{bleu['p_value']:.4f} |"
    ) in sig
    assert "| chrF |" in sig

    seed_rows = seeds.aggregate({1: rows, 2: rows})
    plain = write_report(tmp_path / "plain", rows)
    markdown = plain["markdown"].read_text()
    assert "## " not in markdown and "curves.png" not in markdown
    assert "significance" not in json.loads(plain["json"].read_text())

    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    paths = write_report(folder, rows, significance=tests, seed_rows=seed_rows)
    markdown = paths["markdown"].read_text()
    assert sig in markdown and seeds_table(seed_rows) in markdown
    assert "## Over seeds (1, 2)" in markdown and "![validation curves](curves.png)" in markdown
    record = json.loads(paths["json"].read_text())
    assert record["significance"][0]["p_value"] == tests[0]["p_value"]
    assert record["seeds"][0]["bleu_mean"] == 3.0


def test_costs_against_no_teacher_and_the_wall_time():
    """Hand-computed: the plain 'base' stage takes 2 s per update, so the KD stage's 50
    updates cost 100 s without a teacher; with its 150 s and a 30 s cache the chain is
    (80 + 150 + 30) / (80 + 100) = 1.444x. Three steps in two job slots, from t=100 to
    t=400: 300 s of wall time for 80 + 150 + 30 = 260 s of steps, 0.87 at once."""

    def row(stage, teacher, updates, seconds):
        return {"stage": stage, "teacher": teacher, "seqkd_teacher": None,
                "architecture": "tiny", "updates": updates, "wall_seconds": seconds}  # fmt: skip

    rows = [row("base", None, 40, 80.0), row("kd", "big", 50, 150.0)]
    jobs = [
        {"step": "stage:base", "jobs": 2, "started": 100.0, "ended": 180.0},
        {"step": "cache:big", "jobs": 2, "started": 100.0, "ended": 130.0},
        {"step": "stage:kd", "jobs": 2, "started": 250.0, "ended": 400.0},
    ]
    found = costs(rows, [{"seconds": 30.0}], jobs)
    assert found["chain_seconds"] == 260.0 and found["no_teacher_seconds"] == 100.0 + 80.0
    assert found["ratio"] == pytest.approx(260 / 180)
    expected = {"jobs": 2, "steps": 3, "span_seconds": 300.0, "busy_seconds": 260.0}
    assert found["wall"] == {**expected, "parallelism": pytest.approx(260 / 300)}
    text = costs_markdown(found)
    assert "1.44x" in text and "Wall time with --jobs 2: 5m00s" in text and "4m20s" in text
    assert costs(rows, [{"seconds": 30.0}])["wall"] is None  # a run without job records
