"""Sequence-level KD data (Kim and Rush, 2016): translate a subset with a teacher.

The teacher translates the source side of --subset with fairseq's beam search (the same
batches and hypotheses as fairseq-generate --required-batch-size-multiple 1, no
--remove-bpe), and OUT becomes a copy of DATA whose --subset targets are the teacher's best
hypotheses. Train a student on OUT with stock fairseq-train; validation and test stay the
real ones (copied unchanged), and so does DATA/text (from `evokd prepare`), which
evaluation reads its references from.

output:
  OUT/...                            DATA's dictionaries, other subsets and text/, copied
  OUT/SUBSET.SRC-TGT.{SRC,TGT}.*     the source copied, the target distilled
                                     (--keep-references: the N real pairs, then the N
                                     distilled ones; fairseq-train trains on 2N pairs)
  OUT/text/SUBSET.distilled.TGT      the hypotheses as (BPE'd) text, in dataset order
  OUT/distill.json                   teacher (path, sha256), data, decoding, counts, lengths

The translations are built in OUT.partial in chunks of --chunk-size sentences, planned from
the data alone; a killed run resumes from its finished chunks when started again with the
same settings, and OUT appears only when complete. A rerun on a finished OUT with the same
teacher, data and settings does nothing; with others it is refused. Uses the GPU when there
is one (--processes N: one process per GPU, or N CPU processes; the same output as one).

example:
  evokd distill-data --teacher checkpoints/paper/senior_teacher/checkpoint_best.pt \\
      --data data-bin/iwslt14.tokenized.de-en --out data-bin/iwslt14.distilled.de-en
"""

from evokd.cli import add_decoding_arguments, add_device_arguments


def add_arguments(parser):
    parser.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR", help="fairseq binarized data")
    parser.add_argument("--subset", default="train", help="subset to distill (default: train)")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the new binarized data folder (must not exist)"
    )
    parser.add_argument(
        "--keep-references",
        action="store_true",
        help="keep the real pairs and add the distilled ones after them in SUBSET (training "
        "then sees both: twice the pairs)",
    )
    group = add_decoding_arguments(parser)
    group.add_argument(
        "--chunk-size", type=int, default=2048, metavar="N",
        help="sentences per chunk written to OUT.partial: what a killed run loses at most; "
        "the translations do not depend on it (default: %(default)s)",
    )  # fmt: skip
    add_device_arguments(parser)


def run(args):
    from evokd.distill.seqkd import distill_data

    info = distill_data(
        args.teacher,
        args.data,
        args.out,
        subset=args.subset,
        beam=args.beam,
        lenpen=args.lenpen,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        max_tokens=args.max_tokens,
        keep_references=args.keep_references,
        cpu=args.cpu,
        processes=args.processes,
        chunk_size=args.chunk_size,
    )
    if info.get("done"):
        print(f"{args.out}: finished earlier with the same settings: nothing to do")
        return 0
    print(
        f"{args.out}: {info['examples']} {args.subset} pairs distilled with beam {args.beam} "
        f"({info['training_pairs']} pairs to train on); average target length "
        f"{info['reference_avg_length']:.2f} (references) -> "
        f"{info['hypothesis_avg_length']:.2f} (teacher) tokens; "
        f"{info['translate_seconds']:.0f} s of translation"
    )
    return 0
