"""Statistics across seeds, against values computed by hand (not by the scipy calls the
code makes): Student's t with 3 degrees of freedom has a closed-form distribution
function, and the exact Wilcoxon p-value of a few seeds is a count of sign patterns."""

import json
import math

import pytest

from evokd.chain import seeds
from evokd.chain.plan import Plan, Stage
from evokd.chain.results import report_seeds
from evokd.evaluation.seeds import across_seeds

T_975_DF3 = 3.182446305  # Student's t, 97.5th percentile, 3 degrees of freedom (tables)


def t_cdf_df3(t):
    """Student's t distribution function with 3 degrees of freedom, in closed form."""
    x = t / math.sqrt(3)
    return 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi


def test_four_seeds_against_hand_computed_values():
    # differences 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, var 14/3
    found = across_seeds([11, 12, 13, 16], [10, 10, 10, 10])
    sd = math.sqrt(14 / 3)
    se = sd / 2
    assert found["n"] == 4
    assert found["differences"] == [1, 2, 3, 6]
    assert found["mean"] == pytest.approx(3.0)
    assert found["sd"] == pytest.approx(2.1602469, abs=1e-6)
    assert found["ci"] == pytest.approx([3 - T_975_DF3 * se, 3 + T_975_DF3 * se], abs=1e-6)
    assert found["ci"] == pytest.approx([-0.4374, 6.4374], abs=1e-4)
    t = 3 / se
    assert found["t"] == pytest.approx(2.7774603, abs=1e-6)
    assert found["t_p"] == pytest.approx(2 * (1 - t_cdf_df3(t)), abs=1e-9)
    # every sign positive: 1 of the 16 sign patterns on each side is as extreme
    assert found["wilcoxon"] == 0
    assert found["wilcoxon_p"] == pytest.approx(2 / 16)
    assert found["wilcoxon_min_p"] == pytest.approx(0.125)


def test_mixed_signs():
    # differences 0.5, -1, 2, 3: ranks 1, 2, 3, 4; the negative ranks sum to 2. Sign
    # patterns whose negative ranks sum to 2 or less: {}, {1}, {2}: p = 2 * 3/16
    found = across_seeds([1.5, 1.0, 4.0, 5.0], [1.0, 2.0, 2.0, 2.0])
    assert found["differences"] == pytest.approx([0.5, -1.0, 2.0, 3.0])
    assert found["wilcoxon"] == 2
    assert found["wilcoxon_p"] == pytest.approx(0.375)
    mean, sd = 1.125, math.sqrt(((-0.625) ** 2 + 2.125**2 + 0.875**2 + 1.875**2) / 3)
    assert found["mean"] == pytest.approx(mean)
    assert found["sd"] == pytest.approx(sd)
    assert found["t_p"] == pytest.approx(2 * (1 - t_cdf_df3(mean / (sd / 2))), abs=1e-9)
    assert found["ci"][0] < 0 < found["ci"][1]


def test_five_seeds_cannot_reach_five_percent_with_wilcoxon():
    found = across_seeds([5, 6, 7, 8, 9], [1, 1, 1, 1, 1])
    assert found["wilcoxon_p"] == pytest.approx(2 / 32) == found["wilcoxon_min_p"]
    assert found["t_p"] < 0.01  # the t-test, which assumes normal differences, can


def test_one_seed_and_no_difference():
    one = across_seeds([30.0], [29.0])
    assert one["mean"] == 1.0 and one["sd"] is None and one["ci"] is None and one["t_p"] is None
    tie = across_seeds([30.0, 31.0], [30.0, 31.0])
    assert tie["mean"] == 0 and tie["ci"] == [0, 0] and tie["t_p"] is None
    same = across_seeds([31.0, 32.0], [30.0, 31.0])  # no spread: nothing to test against
    assert same["ci"] == [1.0, 1.0] and same["t_p"] is None and same["wilcoxon_p"] is None
    with pytest.raises(ValueError, match="2 system scores against 1"):
        across_seeds([1, 2], [1])


def row(stage, bleu, chrf):
    return {"stage": stage, "bleu": bleu, "chrf": chrf}


ROWS = {
    3: [row("master_student", 38.0, 57.0), row("senior_student_long", 37.0, 56.5)],
    4: [row("master_student", 39.0, 57.5), row("senior_student_long", 37.5, 57.0)],
    5: [row("master_student", 37.0, 56.0)],  # the control did not finish
}


def test_compare_over_seeds_pairs_only_seeds_with_both():
    boot = {
        3: [
            {"system_stage": "master_student", "baseline_stage": "senior_student_long",
             "key": "bleu", "p_value": 0.02},
        ]
    }  # fmt: skip
    found = seeds.compare_over_seeds([("master_student", "senior_student_long")], ROWS, boot)
    bleu, chrf = found
    assert (bleu["key"], chrf["key"]) == ("bleu", "chrf")
    assert bleu["seeds"] == [3, 4] and bleu["differences"] == [1.0, 1.5]
    assert bleu["bootstrap_p"] == [0.02, None] and chrf["bootstrap_p"] == [None, None]
    assert bleu["mean"] == pytest.approx(1.25)
    table = seeds.seeds_comparison_table(found)
    line = "| tokenized BLEU | 2 | 3: +1.00 (0.0200); 4: +1.50 | +1.25 |"
    assert f"| master_student | senior_student_long {line}" in table
    # t(0.975, 1) = 12.7062: 1.25 ± 12.7062 * 0.35355 / sqrt(2)
    assert "[-1.93, +4.43]" in table


def test_report_over_seeds_writes_the_comparison_and_the_plot(tmp_path):
    plan = Plan(
        name="p",
        data="unused",
        stages=[
            Stage(name="master_student", arch="a"),
            Stage(name="senior_student_long", arch="a"),
        ],
        compare=[["master_student", "senior_student_long"]],
    )
    (tmp_path / "seed3").mkdir()
    sig = [{"system_stage": "master_student", "baseline_stage": "senior_student_long",
            "key": "chrf", "p_value": 0.3}]  # fmt: skip
    (tmp_path / "seed3" / "results.json").write_text(json.dumps({"significance": sig}))
    text = report_seeds(plan, ROWS, tmp_path)
    assert "## Compared across seeds" in text and "3: +0.50 (0.3000); 4: +0.50" in text
    record = json.loads((tmp_path / "results.json").read_text())
    assert [r["key"] for r in record["compared"]] == ["bleu", "chrf"]
    png = (tmp_path / "seeds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
