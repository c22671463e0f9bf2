"""Translation speed and BLEU of a teacher, its student, and the student in CTranslate2.

In one run, on the same test set and with the same decoding settings, translates with:
the teacher in fairseq, the student in fairseq (both with fairseq-generate, as `evokd
evaluate` does), and the student exported to CTranslate2 in float32 and in int8 (needs
`pip install -e ".[ct2]"`). Prints a table (sentences per second, speed-up over the
teacher in fairseq, tokenized BLEU, sacreBLEU, chrF, BLEU lost against the student in
fairseq) and the results as JSON.

Kept equal for every system: beam (fairseq --lenpen 1 = CTranslate2 length_penalty 1),
the longest output (fairseq --max-len-a 0 --max-len-b L = CTranslate2
max_decoding_length L), sentences per batch (both sort the test set by length first),
threads (OMP_NUM_THREADS/MKL_NUM_THREADS for fairseq-generate, intra_threads for
CTranslate2), and the device (the GPU for all when there is one, unless --cpu). Speed is
decoding only (model loading excluded), each system timed once without warm-up: on a
machine shared with other jobs the numbers are noisy.

example:
  evokd bench-translate --teacher checkpoints/tiny/senior_teacher/checkpoint_best.pt \\
      --student checkpoints/tiny/senior_student/checkpoint_best.pt \\
      --data data-bin/multi30k.tiny.de-en --threads 2 --json results/bench_translate.json
"""


def add_arguments(parser):
    parser.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    parser.add_argument("--student", required=True, metavar="CKPT", help="student checkpoint")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA_BIN",
        help="the binarized data both were trained on (made by `evokd prepare` for the "
        "tokenized and raw references)",
    )
    parser.add_argument(
        "--subset", default="test", metavar="SPLIT", help="split to translate (default: test)"
    )
    parser.add_argument(
        "--beam", type=int, default=5, metavar="N", help="beam size (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        "--max-sentences",
        dest="batch_size",
        type=int,
        default=64,
        metavar="N",
        help="sentences per batch, for every system (default: %(default)s)",
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=200,
        metavar="L",
        help="longest translation in tokens, end of sentence excluded (fairseq "
        "--max-len-b; default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for every system (default: the cores this process may use)",
    )
    parser.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        help="keep the CTranslate2 models, hypotheses and fairseq-generate logs here "
        "(default: a temporary folder, removed afterwards)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")


def run(args):
    import json
    from pathlib import Path

    from evokd.bench_translate import run_bench_translate, table

    result = run_bench_translate(
        args.teacher,
        args.student,
        args.data,
        args.subset,
        beam=args.beam,
        batch_size=args.batch_size,
        max_len=args.max_len,
        threads=args.threads,
        cpu=args.cpu,
        work_dir=args.work_dir,
    )
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"results: {args.json}")
    return 0
