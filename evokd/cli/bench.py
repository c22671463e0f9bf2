"""Time per update and peak memory of word-level KD against plain fairseq training.

In one process, on the same batches, after the same warm-up, the same number of updates
of: plain label_smoothed_cross_entropy on the student; online word_kd with the teacher's
full distribution and with its top K; word_kd read from a teacher cache (--cache, made by
`evokd cache-teacher`). Prints a table, the ratio of each to plain training, and JSON.

example:
  evokd bench --data data-bin/multi30k.de-en \\
      --teacher checkpoints/cpu/senior_teacher/checkpoint_best.pt \\
      --cache cache/senior_top8 --topk 8 --updates 20 --json bench.json
"""

from evokd.cli import add_passthrough_usage


def add_arguments(parser):
    parser.add_argument("--data", required=True, metavar="DIR", help="fairseq binarized data")
    parser.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    parser.add_argument(
        "--cache", metavar="DIR", help="teacher cache of that teacher and data (default: none)"
    )
    parser.add_argument(
        "--arch",
        default="transformer_evokd_tiny_student",
        help="student architecture (default: %(default)s)",
    )
    parser.add_argument(
        "--updates", type=int, default=20, metavar="N", help="timed updates (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, metavar="N",
        help="untimed first updates (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens", type=int, default=4096, metavar="N",
        help="batch size in tokens (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--topk", type=int, default=8, metavar="K",
        help="K of the top-K configurations (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    add_passthrough_usage(parser)


def run(args):
    import json

    from evokd.deploy.bench import run_bench, table
    from evokd.errors import EvokdError

    for flag in ("updates", "max_tokens", "topk"):
        if getattr(args, flag) < 1:
            raise EvokdError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.warmup < 0:
        raise EvokdError(f"--warmup {args.warmup}: expected >= 0")
    rows, meta = run_bench(
        args.data,
        args.teacher,
        cache=args.cache,
        arch=args.arch,
        updates=args.updates,
        warmup=args.warmup,
        max_tokens=args.max_tokens,
        topk=args.topk,
        cpu=args.cpu,
        extra=getattr(args, "passthrough", []),
    )
    print(table(rows))
    result = {"meta": meta, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0
