"""The report's pictures are read, not looked at: rendered with Agg, no two texts overlap,
every colour and marker has a legend entry, no two lines share a style, and titles and axes
say what they hold."""

import itertools
import json
from pathlib import Path

import pytest
from matplotlib.text import Text

from evokd.chain import curves, report
from evokd.deploy import bench_translate_report

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plots"


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, by module."""
    figures = {}
    for module in (report, curves, bench_translate_report):

        def keep(fig, path, module=module):
            figures[module.__name__] = fig
            fig.savefig(path, format="png")
            return path

        monkeypatch.setattr(module, "write_png", keep)
    return figures


def texts(fig):
    """Every text drawn in ``fig`` with its box, measured by Agg after a full draw."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        axis = next(
            (a for ax in fig.axes for a in (ax.xaxis, ax.yaxis) if text in _labels(a)), None
        )
        if axis is not None:  # a tick label: drawn only when its tick is in view
            low, high = sorted(axis.get_view_interval())
            tick = next(t for t in axis.get_major_ticks() + axis.get_minor_ticks()
                        if text in (t.label1, t.label2))  # fmt: skip
            if not low - 1e-9 * (high - low) <= tick.get_loc() <= high + 1e-9 * (high - low):
                continue
        found.append((text.get_text(), text.get_window_extent(renderer)))
    return found


def _labels(axis):
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [label for t in ticks for label in (t.label1, t.label2)]


def assert_no_overlap(fig):
    boxes = texts(fig)
    clashes = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
               if box_a.overlaps(box_b)]  # fmt: skip
    assert clashes == []
    return [t for t, _ in boxes]


def legend_labels(fig):
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    return [t.get_text() for legend in legends if legend for t in legend.get_texts()]


def example(name):
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def test_results_plot(tmp_path, drawn):
    data = example("results_cpu.json")
    report.plot(data["rows"], tmp_path / "results.png", "cpu plan")
    fig = drawn["evokd.chain.report"]
    shown = assert_no_overlap(fig)
    for row in data["rows"]:  # every stage named once
        assert shown.count(row["stage"]) == 1
    legend = legend_labels(fig)
    assert {label for _, _, label in report.STYLE.values()} <= set(legend)
    assert {"arrow: distilled from", "arrow: initialised from"} <= set(legend)
    ax = fig.axes[0]
    assert ax.get_title().startswith("cpu plan: tokenized BLEU of each stage")
    assert ax.get_ylabel() == "tokenized BLEU" and "parameters" in ax.get_xlabel()
    # the baseline is the one hollow marker, its BLEU a line across the plot
    hollow = [c for c in ax.collections if len(c.get_facecolors()) == 0]
    assert [c.get_label() for c in hollow] == [report.STYLE["baseline"][2]]
    assert [tuple(line.get_ydata()) for line in ax.lines if len(line.get_ydata()) == 2 and
            line.get_ydata()[0] == line.get_ydata()[1] == 22.75]  # fmt: skip


def test_results_plot_crowded(tmp_path, drawn):
    """Eleven stages, six of the same size within 3.7 BLEU (docs/results.md, cpu_controls)."""
    bleu = {"student_model": 28.21, "junior_teacher": 35.11, "senior_teacher": 38.38,
            "junior_student": 28.32, "senior_student": 34.34, "master_student": 37.92,
            "TAKD_assistant_teacher": 34.89, "TAKD_student": 32.53,
            "senior_student_long": 37.82, "junior_student_long": 35.69,
            "master_student_training": 37.00}  # fmt: skip
    size = {"junior_teacher": 3878912, "senior_teacher": 8934400, "TAKD_assistant_teacher": 3878912}
    rows = [{"stage": s, "parameters": size.get(s, 1793536), "bleu": b,
             "teacher": None if s in size or s == "student_model" else "senior_teacher"}
            for s, b in bleu.items()]  # fmt: skip
    report.plot(rows, tmp_path / "results.png", "cpu_controls plan")
    shown = assert_no_overlap(drawn["evokd.chain.report"])
    assert all(shown.count(stage) == 1 for stage in bleu)


def test_curves_plot(tmp_path, drawn):
    names = [f"stage_{i}" for i in range(12)]
    found = {n: [(100 * k, 10 + k) for k in range(1, 6)] for n in names}  # all on one line
    teachers = {"stage_1", "stage_2"}
    curves.plot_curves(found, tmp_path / "curves.png", "bleu", {"stage_5": "stage_4"}, "cpu",
                       teachers)  # fmt: skip
    fig = drawn["evokd.chain.curves"]
    assert_no_overlap(fig)
    lines = [line for ax in fig.axes for line in ax.lines]
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == len(styles) == 12  # no style repeats
    assert sorted(legend_labels(fig)) == sorted(names)
    teacher_ax, student_ax = fig.axes
    assert {line.get_label() for line in teacher_ax.lines} == teachers
    assert teacher_ax.get_xlabel() == "updates in the stage"
    assert student_ax.get_xlabel() == "updates, those of the stage it started from included"
    assert fig._suptitle.get_text() == "cpu: validation BLEU of each stage during training"


def test_curves_plot_without_teachers_has_one_panel(tmp_path, drawn):
    curves.plot_curves({"a": [(1, 2.0), (2, 3.0)]}, tmp_path / "c.png", "loss")
    fig = drawn["evokd.chain.curves"]
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "validation loss"
    assert_no_overlap(fig)


def test_bench_plot_teacher_is_the_reference(tmp_path, drawn):
    data = example("bench_translate_fast_students.json")
    bench_translate_report.plot(data, tmp_path / "bench.png")
    fig = drawn["evokd.deploy.bench_translate_report"]
    shown = assert_no_overlap(fig)
    assert shown.count("reference") == 2  # one per beam
    legend = legend_labels(fig)
    models = {r["model"] for r in data["rows"]}
    assert models <= set(legend)
    assert {"fairseq", "CTranslate2 float32", "CTranslate2 int8"} <= set(legend)
    assert "reference: teacher in fairseq" in legend
    for ax, beam in zip(fig.axes, (5, 1)):
        rows = [r for r in data["rows"] if r["beam"] == beam]
        teacher = rows[0]["bleu"]
        offsets = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
        # the teacher in fairseq at (0, 1x); a student 3.07 BLEU below it at beam 5
        assert (0.0, 1.0) in offsets
        expected = sorted((round(teacher - r["bleu"], 6), r["speedup"]) for r in rows)
        got = sorted((round(x, 6), y) for x, y in offsets)
        assert all(point in got for point in expected)
        assert "BLEU below the teacher in fairseq" == ax.get_xlabel()
    assert dict((r["system"], r["bleu"]) for r in data["rows"][:2]) == {
        "teacher (fairseq)": 38.38, "student 3+3 (64) (fairseq)": 35.31}  # fmt: skip


def test_bench_plot_draws_shortlisted_models_hollow(tmp_path, drawn):
    """The front's run (--shortlist both): each model with and without its shortlist at its
    own point, the shortlisted ones with a white face, the others filled."""
    data = example("bench_translate_front.json")
    bench_translate_report.plot(data, tmp_path / "front.png")
    fig = drawn["evokd.deploy.bench_translate_report"]
    assert_no_overlap(fig)
    assert "hollow: with a shortlist" in legend_labels(fig)
    for ax, beam in zip(fig.axes, (5, 1)):
        rows = [r for r in data["rows"] if r["beam"] == beam]
        teacher = rows[0]["bleu"]
        white = {}
        for c in ax.collections:
            for point, face in zip(c.get_offsets(), c.get_facecolors()):
                white[(round(point[0], 6), point[1])] = bool(face[:3].min() == 1.0)
        for r in rows:
            assert white[(round(teacher - r["bleu"], 6), r["speedup"])] == bool(r["shortlist"])
        assert sum(bool(r["shortlist"]) for r in rows) == 9  # 4 students x 2 + the teacher


def test_the_bleu_budget_chooses_the_recommended_student():
    """The front's run: within 0.5 BLEU of the best student (the 4+2 at 128 wide, 35.05 in
    int8) only the 4+2 itself qualifies; with 1.2 the pre-norm 5+1 (33.88) does, and it is
    held against the teacher in int8 with its shortlist (1,008.1 / 258.3 sentences/s)."""
    data = example("bench_translate_front.json")
    lines = [
        line for line in bench_translate_report.table(data).splitlines() if "recommended" in line
    ]
    assert len(lines) == 2  # one per beam
    assert "at most 0.5 BLEU below the best, student 4+2 (128) (CTranslate2 int8)): " in lines[0]
    assert "student 4+2 (128) (CTranslate2 int8, shortlist): 9.4x" in lines[0]
    wider = dict(data, meta=dict(data["meta"], bleu_budget=1.2))
    line = [
        line for line in bench_translate_report.table(wider).splitlines() if "recommended" in line
    ][0]
    assert "at most 1.2 BLEU below the best" in line
    assert (
        "student 5+1 (64) (CTranslate2 int8, shortlist): 17.4x the teacher in fairseq, 3.90x"
        in line
    )


def test_front_and_recommended_student():
    """By construction: the fairseq student is beaten by the teacher in CTranslate2 int8,
    the third student by the second; the second is 0.5 BLEU below the best student."""

    def row(model, engine, speedup, bleu):
        quantization = "float32" if engine == "fairseq" else "int8"
        system = f"{model} ({engine})"
        return dict(model=model, engine=engine, quantization=quantization, system=system,
                    speedup=speedup, bleu=bleu)  # fmt: skip

    rows = [
        row("teacher", "fairseq", 1.0, 30.0),
        row("teacher", "ctranslate2", 4.0, 29.9),
        row("s1", "fairseq", 2.0, 28.0),
        row("s1", "ctranslate2", 8.0, 27.9),
        row("s2", "ctranslate2", 12.0, 27.5),
        row("s3", "ctranslate2", 11.0, 26.0),
    ]
    edge = bench_translate_report.front(rows)
    expected = ["s2 (ctranslate2)", "s1 (ctranslate2)", "teacher (ctranslate2)"]
    assert [r["system"] for r in edge] == expected + ["teacher (fairseq)"]
    found = bench_translate_report.recommend(rows)
    assert (
        found["row"]["system"] == "s2 (ctranslate2)" and found["best"]["system"] == "s1 (fairseq)"
    )
    assert found["loss"] == pytest.approx(0.5) and found["over_teacher_ct2"] == pytest.approx(3.0)
    assert (
        bench_translate_report.recommend(rows, max_loss=0.4)["row"]["system"] == "s1 (ctranslate2)"
    )
    line = bench_translate_report.front_lines(rows)[1]
    assert (
        "s2 (ctranslate2): 12.0x the teacher in fairseq, 3.00x the teacher in CTranslate2" in line
    )
    assert bench_translate_report.recommend(rows[:2]) is None
    # With shortlists (--shortlist both): a shortlisted student is held against the
    # shortlisted teacher, as it would be deployed, not against the teacher without one.
    listed = [
        dict(r, system=r["system"][:-1] + ", shortlist)", shortlist=True, speedup=2 * r["speedup"])
        for r in rows
        if r["engine"] != "fairseq"
    ]
    found = bench_translate_report.recommend(rows + listed)
    assert found["row"]["system"] == "s2 (ctranslate2, shortlist)"
    assert found["over_teacher_ct2"] == pytest.approx(24.0 / 8.0)  # not 24 / 4
    line = bench_translate_report.front_lines(rows + listed)[1]
    assert "24.0x the teacher in fairseq, 3.00x the teacher in CTranslate2 int8 with its" in line


def test_a_line_that_is_the_start_of_another_is_drawn_above_it(tmp_path, drawn):
    """Direct KD for 5 epochs and for 12 with the same seed: the same run up to epoch 5
    (measured in cpu_controls), so the shorter line would lie hidden under the longer."""
    long = [(505 * k, 18.0 + k) for k in range(1, 13)]
    found = {"senior_student": long[:5], "senior_student_long": long, "master": long[1:6]}
    assert curves.starts_of(found) == {"senior_student": "senior_student_long"}
    curves.plot_curves(found, tmp_path / "curves.png", "bleu", title="cpu_controls, seed 3")
    fig = drawn["evokd.chain.curves"]
    assert_no_overlap(fig)
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends  # the legend's frame leaves the title alone
    assert not legend.get_window_extent(renderer).overlaps(
        fig._suptitle.get_window_extent(renderer)
    )
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    short = lines["senior_student\n(= the start of senior_student_long)"]
    assert short.get_zorder() > lines["senior_student_long"].get_zorder()
    assert "master" in lines  # points inside another line, not its start: no note
