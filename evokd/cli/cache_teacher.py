"""Run a teacher once over a subset and store its top-K predictions for every target token.

Word-level KD then reads the cache (fairseq-train ... --task evokd_translation
--teacher-cache DIR --kd-topk K) instead of running the teacher at every update. The cache
holds, per target token, the ids and fp16 log-probabilities of the teacher's K most likely
tokens and of the reference token (4K + 2 bytes per token with a vocabulary under 65,536),
in fairseq's memory-mapped indexed-dataset format, with a fingerprint of the teacher
checkpoint, the data and K that training checks.

The cache is built in DIR.partial in chunks planned from the data alone; a killed run
resumes from its finished chunks when started again, and DIR appears only when complete.
DIR/cache.json records the sha256 of every file; training and a rerun verify them
(`evokd verify DIR` does by hand). Rerun on a finished, intact cache with the same settings,
it says so and exits 0; on a damaged one it names the damaged file; with other settings it
refuses and names the difference. Uses the GPU when there is one
(--processes N: one process per GPU, or N CPU processes).

example:
  evokd cache-teacher --teacher checkpoints/paper/senior_teacher/checkpoint_best.pt \\
      --data data-bin/iwslt14.tokenized.de-en --topk 8 --out cache/senior_top8
"""

from evokd.cli import add_device_arguments


def add_arguments(parser):
    parser.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR", help="fairseq binarized data")
    parser.add_argument("--subset", default="train", help="subset to cache (default: train)")
    parser.add_argument(
        "--topk",
        type=int,
        default=8,
        metavar="K",
        help="teacher tokens kept per position (default: 8); training may use any --kd-topk <= K",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache folder (new)")
    parser.add_argument(
        "--max-tokens", type=int, default=8000, help="tokens per teacher batch (default: 8000)"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        metavar="N",
        help="pairs per resumable chunk (default: 2048); part of the build plan, so a resumed "
        "build must use the same value",
    )
    add_device_arguments(parser)


def run(args):
    from evokd.distill.cache import build_cache

    meta = build_cache(
        args.teacher,
        args.data,
        args.out,
        subset=args.subset,
        k=args.topk,
        max_tokens=args.max_tokens,
        processes=args.processes,
        chunk_size=args.chunk_size,
        cpu=args.cpu,
    )
    if meta.get("done"):
        print(
            f"{args.out}: finished earlier with the same teacher, data and K, and intact; "
            "nothing to do"
        )
    mib = meta["bytes"] / 2**20
    print(
        f"{args.out}: {meta['examples']} pairs, {meta['target_tokens']} target tokens, top "
        f"{args.topk}: {mib:.1f} MiB ({meta['bytes'] / meta['target_tokens']:.1f} bytes per token)"
    )
    return 0
