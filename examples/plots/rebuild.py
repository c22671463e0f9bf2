"""Rebuild the pictures in docs/ from the numbers in its tables.

    python examples/plots/rebuild.py [--out docs]

- ``results_cpu.json``: the `cpu` plan's table in docs/results.md ("EKD and TAKD on all of
  Multi30k"): each stage's parameters, tokenized BLEU, teacher, start and role; drawn by
  :func:`evokd.chain.report.plot` into ``results_cpu.png``.
- ``bench_translate_fast_students.json``: the bench-translate tables of docs/benchmarks.md
  ("Fast students"); drawn by :func:`evokd.deploy.bench_translate_report.plot` into
  ``bench_translate_fast_students.png``.
- ``bench_translate_front.json``: the bench-translate run of docs/benchmarks.md ("The
  front"), its ``--json`` output without the hypotheses; drawn into
  ``bench_translate_front.png``.

``results_cpu_controls_seed3_curves.png`` needs the stages' training logs, which are not
in the repository: a run's report draws its ``curves.png`` from them
(:func:`evokd.chain.curves.write_curves`).
"""

import argparse
import json
from pathlib import Path

from evokd.chain import report
from evokd.deploy import bench_translate_report

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=HERE.parents[1] / "docs", type=Path, help="folder")
    args = parser.parse_args()
    results = json.loads((HERE / "results_cpu.json").read_text(encoding="utf-8"))
    report.plot(results["rows"], args.out / "results_cpu.png", results["title"])
    bench = json.loads((HERE / "bench_translate_fast_students.json").read_text(encoding="utf-8"))
    bench_translate_report.plot(bench, args.out / "bench_translate_fast_students.png")
    front = json.loads((HERE / "bench_translate_front.json").read_text(encoding="utf-8"))
    bench_translate_report.plot(front, args.out / "bench_translate_front.png")
    names = ("results_cpu.png", "bench_translate_fast_students.png", "bench_translate_front.png")
    print("wrote " + ", ".join(str(args.out / name) for name in names))


if __name__ == "__main__":
    main()
