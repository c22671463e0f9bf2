"""Export a fairseq checkpoint (a student, or any translation transformer) for fast inference.

--ct2: a CTranslate2 model folder, converted in-process by CTranslate2's own fairseq
converter (needs `pip install -e ".[ct2]"` or `pip install ctranslate2`). Translate with

  import ctranslate2
  translator = ctranslate2.Translator(OUT, device="cpu", intra_threads=4)
  translator.translate_batch([["ein", "mann", "mit", "einem", "h@@", "ut", "."]], beam_size=5)

The input is the BPE'd source as tokens (as in DATA_BIN/text/SPLIT.SRC of a folder made by
`evokd prepare`); the output tokens still hold the BPE ("@@ "). OUT also holds
evokd_export.json (the checkpoint, data, languages and quantization it was made from).

--quantization sets the weight type: int8 (default) is the small, fast CPU model; float32
translates like fairseq (same weights); int8_float16 or float16 suit GPUs.

examples:
  evokd export --ct2 checkpoints/ekd/master/checkpoint_best.pt models/master-int8
  evokd export --ct2 ckpt.pt models/student-fp32 --data data-bin/multi30k.de-en \\
      --quantization float32 --force
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it exists (only a CTranslate2 model folder or an empty folder)",
    )


def run(args):
    from evokd.deploy.export import export_ct2

    info = export_ct2(
        args.checkpoint,
        args.out,
        data=args.data,
        quantization=args.quantization,
        force=args.force,
    )
    print(
        f"{args.out}: CTranslate2 {info['ctranslate2']} model, {info['quantization']}, "
        f"{info['model_bytes'] / 2**20:.2f} MiB, {info['source_lang']}-{info['target_lang']} "
        f"({info['architecture']} from {info['checkpoint']})"
    )
    return 0
