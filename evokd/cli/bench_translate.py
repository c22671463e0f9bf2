"""Translation speed and BLEU of a teacher and its students, in fairseq and CTranslate2.

In one run, on the same test set, with the same decoding settings and thread count, and
for each beam size (default: beam 5 and greedy), translates with: the teacher in fairseq,
each student in fairseq (both with fairseq-generate, as `evokd evaluate` does), each
student exported to CTranslate2 (--student-ct2, default float32 and int8; needs
`pip install -e ".[ct2]"`) and, with --teacher-ct2, the teacher in CTranslate2 too (the
speed-up within one engine). For each: throughput (sentences and target tokens per
second, batched), latency (median and 90th percentile milliseconds, one sentence per
call, over the first --latency-sentences sentences), tokenized BLEU, sacreBLEU, chrF and
BLEU lost against the first student in fairseq. Prints one table per beam and the
results as JSON; with --json FILE also writes FILE, FILE's .md (the tables) and .png
(speed-up against BLEU lost, one point per system and beam). Under each table: the front
(the systems no other is both faster and better than) and the recommended student, the
fastest at most --bleu-budget BLEU below the best student, with its speed-up over the
teacher in fairseq and in CTranslate2 int8 deployed the same way.

--shortlist-data DATA_BIN builds a lexical shortlist from that folder's pairs (the
students' distilled training data; as `evokd export --shortlist`) and writes it into every
CTranslate2 model; --shortlist on (default) translates with it, off without, both does each
(one row per system and mode; every row says whether a shortlist restricted it).

--fixed-length makes it a cost measurement with no BLEU: every output is forced to its
reference's length (sentences batched by reference length; fairseq --min-len = --max-len-b
= L per batch, CTranslate2 min_decoding_length = max_decoding_length = L), so untrained
models, e.g. of the paper's sizes, are compared at equal work.

Kept equal for every system: beam (fairseq --lenpen 1 = CTranslate2 length_penalty 1),
the longest output (fairseq --max-len-a 0 --max-len-b L = CTranslate2
max_decoding_length L), sentences per batch (both sort the test set by length first),
threads (OMP_NUM_THREADS/MKL_NUM_THREADS for fairseq-generate, torch.set_num_threads
in-process, intra_threads for CTranslate2), and the device (the GPU for all when there is
one, unless --cpu). Speed is decoding only (model loading excluded), each system timed
once: on a machine shared with other jobs, compare ratios within one run.

examples:
  evokd bench-translate --teacher checkpoints/cpu/senior_teacher/checkpoint_best.pt \\
      --student checkpoints/fast_student/student_3_3/checkpoint_best.pt \\
      --student checkpoints/fast_student/student_5_1/checkpoint_best.pt \\
      --data data-bin/multi30k.de-en --teacher-ct2 int8 --threads 1 --cpu \\
      --json results/bench_translate.json
  evokd bench-translate --fixed-length --teacher T.pt --student S66.pt --student S61.pt \\
      --data data-bin/multi30k.de-en --teacher-ct2 int8 --threads 1 --cpu
"""


def add_arguments(parser):
    _add_inputs(parser)
    _add_decoding(parser)
    _add_systems(parser)
    _add_shortlist(parser)
    _add_outputs(parser)


def _add_inputs(parser):
    """The models and the test set."""
    group = parser.add_argument_group("inputs")
    group.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    group.add_argument(
        "--student",
        required=True,
        action="append",
        metavar="CKPT",
        help="student checkpoint; repeat for several students (the first is the reference "
        "of BLEU lost)",
    )
    group.add_argument(
        "--data",
        required=True,
        metavar="DATA_BIN",
        help="the binarized data all were trained on (made by `evokd prepare` for the "
        "tokenized and raw references)",
    )
    group.add_argument(
        "--subset", default="test", metavar="SPLIT", help="split to translate (default: test)"
    )


def _add_decoding(parser):
    """Decoding and what is measured, the same for every system."""
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--beam",
        dest="beams",
        type=int,
        nargs="+",
        default=[5, 1],
        metavar="N",
        help="beam sizes, each measured in turn; 1 is greedy search (default: 5 1)",
    )
    group.add_argument(
        "--batch-size",
        "--max-sentences",
        dest="batch_size",
        type=int,
        default=64,
        metavar="N",
        help="sentences per batch, for every system (default: %(default)s)",
    )
    group.add_argument(
        "--max-len",
        type=int,
        default=200,
        metavar="L",
        help="longest translation in tokens, end of sentence excluded (fairseq "
        "--max-len-b; default: %(default)s; not used with --fixed-length)",
    )
    group.add_argument(
        "--fixed-length",
        action="store_true",
        help="cost measurement, no BLEU: force every output to its reference's length "
        "(in target BPE pieces), for untrained models at equal work",
    )
    group.add_argument(
        "--latency-sentences",
        type=int,
        default=100,
        metavar="N",
        help="translate the first N sentences one per call for the latency figures "
        "(0: no latency; default: %(default)s)",
    )


def _add_systems(parser):
    """Which systems, and the threads and device they share."""
    group = parser.add_argument_group("systems")
    group.add_argument(
        "--student-ct2",
        nargs="*",
        default=["float32", "int8"],
        metavar="QUANT",
        help="CTranslate2 weight types of the students (none: give the flag alone; "
        "default: float32 int8)",
    )
    group.add_argument(
        "--teacher-ct2",
        nargs="*",
        default=[],
        metavar="QUANT",
        help="also the teacher in CTranslate2 with these weight types, e.g. int8 (default: none)",
    )
    group.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="measure every system R times, in rounds (each system once per round, so that "
        "other jobs on the machine slow all alike), and keep each one's fastest round "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for every system (default: the cores this process may use)",
    )
    group.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")


def _add_shortlist(parser):
    """The lexical shortlist of the CTranslate2 models."""
    from evokd.cli.export import add_shortlist_sizes

    group = parser.add_argument_group("shortlist")
    group.add_argument(
        "--shortlist-data",
        metavar="DATA_BIN",
        help="build a shortlist from this folder's training pairs and export every "
        "CTranslate2 model with it (default: no shortlist)",
    )
    group.add_argument(
        "--shortlist",
        choices=("on", "off", "both"),
        default="on",
        help="CTranslate2 models that have a shortlist translate with it (on), without it "
        "(off), or both ways, a row each (default: %(default)s)",
    )
    add_shortlist_sizes(group)


def _add_outputs(parser):
    """Where the results, models and profiles go."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--work-dir",
        metavar="DIR",
        help="keep the CTranslate2 models, hypotheses and fairseq-generate logs here "
        "(default: a temporary folder, removed afterwards)",
    )
    group.add_argument(
        "--profile",
        metavar="DIR",
        help="with --fixed-length: run fairseq's batched translation under cProfile and "
        "write each system's most expensive functions into DIR",
    )
    group.add_argument(
        "--json", metavar="FILE", help="also write the results here, the table and plot beside"
    )
    group.add_argument(
        "--bleu-budget",
        type=float,
        default=0.5,  # deploy.bench_translate_report.BLEU_BUDGET, not imported: --help stays light
        metavar="B",
        help="the recommendation under each table: the fastest student at most B BLEU below "
        "the best student (default: %(default)s)",
    )


def run(args):
    import json
    from pathlib import Path

    from evokd.deploy.bench_translate import run_bench_translate
    from evokd.deploy.bench_translate_report import plot, table
    from evokd.deploy.shortlist import ShortlistSpec
    from evokd.errors import check_number

    check_number(args.bleu_budget, "--bleu-budget", 0, kind=float)
    shortlist = None
    if args.shortlist_data:
        shortlist = ShortlistSpec(data=args.shortlist_data, best=args.shortlist_best,
                                  frequent=args.shortlist_frequent)  # fmt: skip

    result = run_bench_translate(
        args.teacher,
        args.student,
        args.data,
        args.subset,
        beams=args.beams,
        batch_size=args.batch_size,
        max_len=args.max_len,
        threads=args.threads,
        cpu=args.cpu,
        work_dir=args.work_dir,
        fixed_length=args.fixed_length,
        latency_sentences=args.latency_sentences,
        student_ct2=args.student_ct2,
        teacher_ct2=args.teacher_ct2,
        profile_dir=args.profile,
        repeat=args.repeat,
        shortlist=shortlist,
        use_shortlist=args.shortlist,
    )
    result["meta"]["bleu_budget"] = args.bleu_budget
    printed = table(result)
    print(printed)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        path.with_suffix(".md").write_text(printed + "\n", encoding="utf-8")
        plot(result, path.with_suffix(".png"))
        print(f"results: {path}, {path.with_suffix('.md')}, {path.with_suffix('.png')}")
    return 0
