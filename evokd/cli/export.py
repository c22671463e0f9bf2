"""Export a fairseq checkpoint (a student, or any translation transformer) for fast inference.

--ct2: a CTranslate2 model folder, converted in-process by CTranslate2's own fairseq
converter (needs `pip install -e ".[ct2]"` or `pip install ctranslate2`). Translate with

  import ctranslate2
  translator = ctranslate2.Translator(OUT, device="cpu", intra_threads=4)
  translator.translate_batch([["ein", "mann", "mit", "einem", "h@@", "ut", "."]], beam_size=5)

The input is the BPE'd source as tokens (as in DATA_BIN/text/SPLIT.SRC of a folder made by
`evokd prepare`); the output tokens still hold the BPE ("@@ "). OUT also holds
evokd_export.json (the checkpoint, data, languages and quantization it was made from).

--shortlist DATA_BIN also writes a lexical shortlist, OUT/vmap.txt, built from the pairs
of DATA_BIN (the student's distilled training data, binarized with the model's
dictionaries): each source piece's --shortlist-best target pieces by Dice coefficient over
the pairs, plus the --shortlist-frequent most frequent target pieces (Marian's lex.50.50 by
default). Its coverage (the share of reference target pieces their sentence's shortlist
holds, on DATA_BIN's valid pairs) is printed and recorded in evokd_export.json. Translate
with it: translator.translate_batch(..., use_vmap=True).

--quantization sets the weight type: int8 (default) is the small, fast CPU model; float32
translates like fairseq (same weights); int8_float16 or float16 suit GPUs.

examples:
  evokd export --ct2 checkpoints/ekd/master/checkpoint_best.pt models/master-int8
  evokd export --ct2 ckpt.pt models/student-fp32 --data data-bin/multi30k.de-en \\
      --quantization float32 --force
  evokd export --ct2 ckpt.pt models/student-int8-lex --shortlist data-bin/seqkd.de-en
"""

from evokd.deploy.export import QUANTIZATIONS


def add_arguments(parser):
    parser.add_argument(
        "--ct2",
        action="store_true",
        required=True,
        help="export to CTranslate2 (the only format so far; required)",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="fairseq checkpoint (.pt) to export")
    parser.add_argument("out", metavar="OUT", help="the model folder to write (new)")
    parser.add_argument(
        "--data",
        metavar="DATA_BIN",
        help="data-bin folder with the model's dictionaries (dict.SRC.txt, dict.TGT.txt; "
        "default: the checkpoint's own training data folder, when it exists)",
    )
    parser.add_argument(
        "--quantization",
        default="int8",
        choices=QUANTIZATIONS,
        help="weight type of the exported model (default: %(default)s)",
    )
    group = parser.add_argument_group("shortlist")
    group.add_argument(
        "--shortlist",
        metavar="DATA_BIN",
        help="write OUT/vmap.txt, a lexical shortlist built from this folder's pairs "
        "(default: none)",
    )
    group.add_argument(
        "--shortlist-subset",
        default="train",
        metavar="SPLIT",
        help="the split of --shortlist to build from (default: %(default)s)",
    )
    add_shortlist_sizes(group)
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it exists (only a CTranslate2 model folder or an empty folder)",
    )


def add_shortlist_sizes(group):
    """The sizes of a shortlist (Marian's lex.50.50 by default)."""
    group.add_argument(
        "--shortlist-best",
        type=int,
        default=50,
        metavar="N",
        help="target pieces kept per source piece, by Dice coefficient (default: %(default)s)",
    )
    group.add_argument(
        "--shortlist-frequent",
        type=int,
        default=50,
        metavar="N",
        help="most frequent target pieces, always allowed (default: %(default)s)",
    )


def run(args):
    from evokd.deploy.export import export_ct2

    shortlist = _shortlist(args) if args.shortlist else None
    info = export_ct2(
        args.checkpoint,
        args.out,
        data=args.data,
        quantization=args.quantization,
        force=args.force,
        shortlist=shortlist,
    )
    print(
        f"{args.out}: CTranslate2 {info['ctranslate2']} model, {info['quantization']}, "
        f"{info['model_bytes'] / 2**20:.2f} MiB, {info['source_lang']}-{info['target_lang']} "
        f"({info['architecture']} from {info['checkpoint']})"
    )
    if shortlist is not None:
        lex = shortlist.info
        print(
            f"{args.out}/vmap.txt: shortlist of {lex['source_entries']} source pieces, "
            f"{lex['best']} best + {lex['frequent']} frequent, from {lex['pairs']} pairs; "
            f"coverage {lex['coverage']:.2%} of the {lex['coverage_subset']} references"
        )
    return 0


def _shortlist(args):
    """The shortlist of ``--shortlist``, built on the model's languages."""
    from evokd.core.checkpoint import languages, load_checkpoint
    from evokd.deploy.export import resolve_data
    from evokd.deploy.shortlist import ShortlistSpec

    state = load_checkpoint(args.checkpoint, "CKPT")
    src, tgt = languages(state, resolve_data(state, args.data, args.checkpoint))
    spec = ShortlistSpec(data=args.shortlist, subset=args.shortlist_subset,
                         best=args.shortlist_best, frequent=args.shortlist_frequent)  # fmt: skip
    return spec.build(src, tgt)
