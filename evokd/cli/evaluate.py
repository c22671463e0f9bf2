"""Translate a test set with a checkpoint and score it: tokenized BLEU, sacreBLEU and chrF.

Runs stock fairseq-generate (beam search, --remove-bpe; on the GPU when there is one, else
on the CPU) and keeps its whole output in a .generate.log file. Three scores:

  BLEU (tokenized)  what the EKD paper reports (multi-bleu.perl / fairseq BLEU4 style): the
                    lowercased Moses-tokenized output against DATA/text/SUBSET.tok.TGT of a
                    folder made by `evokd prepare` (else against fairseq-generate's T- lines),
                    compared as they are (sacrebleu BLEU with tokenize none)
  sacreBLEU, chrF   the output detokenized with sacremoses against the raw references
                    DATA/text/SUBSET.raw.TGT, case-insensitive (the models write lowercase);
                    skipped when the data has no raw references

--src-file/--ref-file score any raw parallel text instead (e.g. another test set): the
source is tokenized and BPE'd like DATA's training text and translated the same way.

output: with --out FILE.json, the results as JSON and, next to it, FILE.hyp.TGT (detokenized
hypotheses), FILE.hyp.tok.TGT (tokenized), FILE.generate.log; without --out the text files
go to the checkpoint's folder as CHECKPOINT.SUBSET.*. A summary is printed.

examples:
  evokd evaluate checkpoints/ekd/master/checkpoint_best.pt --data data-bin/iwslt14.tokenized.de-en
  evokd evaluate checkpoints/ekd/master/checkpoint_last.pt --data data-bin/multi30k.de-en \\
      --average-last 5 --out results/ekd/master.json
  evokd evaluate ckpt.pt --data data-bin/multi30k.de-en --src-file tatoeba.de --ref-file tatoeba.en
"""

from evokd.cli import add_decoding_arguments


def add_arguments(parser):
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="fairseq checkpoint (.pt) to evaluate, or a stage's folder (its "
        "checkpoint_best.pt); with --average-last, a checkpoint or the folder of the "
        "checkpoints to average",
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA_BIN",
        help="the binarized data the model was trained on (its dictionaries; made by "
        "`evokd prepare` for sacreBLEU/chrF and for --src-file)",
    )
    parser.add_argument(
        "--subset",
        metavar="SPLIT",
        help="binarized split to translate: test, valid, ... (default: test)",
    )
    group = add_decoding_arguments(parser, batch_size=True)
    group.add_argument(
        "--cpu", action="store_true", help="decode on the CPU even when CUDA is available"
    )
    parser.add_argument(
        "--average-last",
        type=int,
        metavar="N",
        help="evaluate the average of the weights of the N newest epoch checkpoints "
        "(checkpointE.pt, by epoch) in CHECKPOINT's folder, like fairseq's "
        "average_checkpoints.py --num-epoch-checkpoints N; written once as "
        "averaged_lastN.pt in that folder and reused while its inputs are unchanged",
    )
    parser.add_argument("--out", metavar="FILE.json", help="write the results as JSON here")
    group = parser.add_argument_group("raw parallel text instead of --subset")
    group.add_argument("--src-file", metavar="RAW", help="source sentences, one per line")
    group.add_argument("--ref-file", metavar="RAW", help="reference translations, same lines")


def _number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def summary(result):
    """A few lines for people: what was translated, the scores, where the files are."""
    what = result["subset"] or result["src_file"]
    lines = [
        f"{result['checkpoint']} ({result['architecture']}, {result['parameters']:,} "
        f"parameters): {result['data']} {what}, {result['n_sentences']} sentences, "
        f"beam {result['beam']}",
        f"  BLEU (tokenized)  {_number(result['bleu']):>6}  {result['bleu_signature']}",
    ]
    for name, label in (("sacrebleu", "sacreBLEU"), ("chrf", "chrF")):
        if result[name] is not None:
            lines.append(
                f"  {label:<16}  {_number(result[name]):>6}  {result[name + '_signature']}"
            )
    lines.append(
        f"  decoding {result['seconds']:.1f} s ({result['sentences_per_second']:.1f} "
        f"sentences/s), {result['wall_seconds']:.1f} s in all"
    )
    lines.append(f"  hypotheses: {result['hypotheses']}")
    lines += [f"  note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def run(args):
    from evokd.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        subset=args.subset,
        beam=args.beam,
        lenpen=args.lenpen,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        cpu=args.cpu,
        average_last=args.average_last,
        out=args.out,
        src_file=args.src_file,
        ref_file=args.ref_file,
    )
    print(summary(result))
    if args.out:
        print(f"  results: {args.out}")
    return 0
