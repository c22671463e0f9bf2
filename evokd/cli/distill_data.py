"""Sequence-level KD data (Kim and Rush, 2016): translate a subset with a teacher.

The teacher translates the source side of --subset with fairseq's beam search (the same
batches and hypotheses as fairseq-generate --required-batch-size-multiple 1, no
--remove-bpe), and OUT becomes a copy of DATA whose --subset targets are the teacher's best
hypotheses. Train a student on OUT with stock fairseq-train; validation and test stay the
real ones (copied unchanged), and so does DATA/text (from `evokd prepare`), which
evaluation reads its references from. --subset other than train (valid, test) replaces that
subset's references with the teacher's output, so that validation or test would measure
agreement with the teacher: refused unless --force is given. OUT is a new folder: never DATA
nor inside it.

output:
  OUT/...                            DATA's dictionaries, other subsets and text/, copied
  OUT/SUBSET.SRC-TGT.{SRC,TGT}.*     the source copied, the target distilled
                                     (--keep-references: the N real pairs, then the N
                                     distilled ones; fairseq-train trains on 2N pairs)
  OUT/text/SUBSET.distilled.TGT      the hypotheses as (BPE'd) text, in dataset order
  OUT/distill.json                   teacher (path, sha256), data, decoding, counts, lengths,
                                     the sha256 of every other file in OUT

The translations are built in OUT.partial in chunks of --chunk-size sentences, planned from
the data alone; a killed run resumes from its finished chunks when started again with the
same settings, and OUT appears only when complete. A rerun on a finished OUT with the same
teacher, data and settings verifies its files against their recorded sha256 and does nothing
more (a damaged file is named); with other settings it is refused. Uses the GPU when there
is one (--processes N: one process per GPU, or N CPU processes; the same output as one).

The engine of a checkpoint: CTranslate2 where it is installed (the `teachers` extra), else
fairseq's own beam search; --engine names one. CTranslate2 decodes the checkpoint: it
is converted once, with DATA's dictionaries and --ct2-quantization (float32 by default;
int8 and int8_float32 also run on CPUs), into $EVOKD_CT2_CACHE (else ~/.cache/evokd/ct2)
in a folder named after the checkpoint's sha256 and the quantization, reused while intact.
It reads the same BPE'd source pieces in the same batches with the same --beam, --lenpen
and --max-len-a/-b, and keeps each sentence's hypothesis that fairseq's score prefers; its
float32 output equals fairseq's but for near-ties. The engine, quantization, CTranslate2
version and the converted model's sha256 are recorded in OUT/distill.json: a rerun with the
other engine does not reuse OUT.

Any teacher: --teacher is a fairseq checkpoint (.pt, on DATA's dictionaries: the above), a
CTranslate2 model folder (model.bin; its tokenizer: source.spm/target.spm there, a Hugging
Face tokenizer there, or --teacher-tokenizer), a Hugging Face model folder (config.json: a
seq2seq model, or a causal LM asked with --prompt), or an OpenAI-compatible server URL
(http(s)://HOST:PORT/v1, with --teacher-model; the key from EVOKD_TEACHER_API_KEY or
OPENAI_API_KEY). Such a teacher translates the raw source text of a folder made by `evokd
prepare`, and its output is tokenized, lowercased and BPE'd like DATA's training text, then
binarized with DATA's dictionary. OUT/distill.json counts the empty, unparsable and cut
outputs and the pieces outside the dictionary; --on-bad-output says what becomes of a bad
output's pair (drop it, or keep its reference): no pair is ever shifted. --max-len-a/-b cap
the output at A x source words + B of the teacher's tokens; --max-tokens, --lenpen and
--processes apply to fairseq checkpoints only.

examples:
  evokd distill-data --teacher checkpoints/paper/senior_teacher/checkpoint_best.pt \\
      --data data-bin/iwslt14.tokenized.de-en --out data-bin/iwslt14.distilled.de-en
  evokd distill-data --teacher checkpoints/paper/senior_teacher/checkpoint_best.pt \\
      --data data-bin/iwslt14.tokenized.de-en --out data-bin/iwslt14.ct2 --engine ctranslate2
  evokd distill-data --teacher opus-mt-de-en-ct2/ --data data-bin/multi30k --out data-bin/m30k.opus
  evokd distill-data --teacher http://127.0.0.1:8000/v1 --teacher-model Qwen/Qwen2.5-7B-Instruct \\
      --data data-bin/multi30k --out data-bin/m30k.qwen --concurrency 8
"""

import sys

from evokd.cli import add_decoding_arguments, add_device_arguments, add_server_arguments
from evokd.core.ct2 import QUANTIZATIONS

EXTERNAL = ("teacher_model", "teacher_tokenizer", "prompt", "source_text")


def add_arguments(parser):
    parser.add_argument(
        "--teacher", required=True, metavar="PATH|URL",
        help="a fairseq checkpoint, a CTranslate2 or Hugging Face model folder, or an "
        "OpenAI-compatible server URL (http(s)://HOST:PORT/v1)",
    )  # fmt: skip
    parser.add_argument("--data", required=True, metavar="DIR", help="fairseq binarized data")
    parser.add_argument(
        "--subset", default="train",
        help="subset to distill (default: train); another one (valid, test) needs --force",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="distill a --subset other than train although its references are then the "
        "teacher's output",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the new binarized data folder (must not exist)"
    )
    parser.add_argument(
        "--keep-references",
        action="store_true",
        help="keep the real pairs and add the distilled ones after them in SUBSET (training "
        "then sees both: twice the pairs)",
    )
    parser.add_argument(
        "--loop-fallback", type=int, default=0, metavar="N",
        help="a fairseq teacher's target that repeats a sequence of 1 to 3 tokens N times in a "
        "row (a beam search caught in a loop) is replaced by the reference target (default: "
        "0, every target kept)",
    )  # fmt: skip
    group = add_decoding_arguments(parser)
    group.add_argument(
        "--chunk-size", type=int, default=2048, metavar="N",
        help="sentences per chunk written to OUT.partial: what a killed run loses at most; "
        "the translations do not depend on it (default: %(default)s)",
    )  # fmt: skip
    add_engine_arguments(parser)
    add_device_arguments(parser)
    add_text_teacher_arguments(parser)


def add_engine_arguments(parser):
    group = parser.add_argument_group("engine of a fairseq checkpoint teacher (a .pt)")
    group.add_argument(
        "--engine", choices=("fairseq", "ctranslate2"),
        help="fairseq: its own beam search; ctranslate2: the checkpoint converted once to a "
        "CTranslate2 model (cached by the checkpoint's sha256 in $EVOKD_CT2_CACHE, else "
        "~/.cache/evokd/ct2) and decoded with the same batches and decoding flags, faster "
        "on CPUs, in float32 the same lines (default: ctranslate2 where it is installed, "
        "else fairseq)",
    )  # fmt: skip
    group.add_argument(
        "--ct2-quantization", choices=QUANTIZATIONS, metavar="TYPE",
        help="with --engine ctranslate2: the weights of the converted model, float32 "
        "(translates like fairseq; the default), int8 or int8_float32 on CPUs, also float16, "
        "bfloat16 or int8_float16 on GPUs; recorded in OUT/distill.json",
    )  # fmt: skip


def add_text_teacher_arguments(parser):
    group = parser.add_argument_group("teachers with their own vocabulary (not a .pt)")
    add_server_arguments(group)
    group.add_argument(
        "--teacher-tokenizer", metavar="PATH",
        help="a CTranslate2 model's tokenizer: a Hugging Face tokenizer folder or a "
        "sentencepiece model (default: source.spm/target.spm or a tokenizer in the model folder)",
    )  # fmt: skip
    group.add_argument(
        "--prompt", metavar="FILE",
        help="prompt template for LLMs, with {src_lang}, {tgt_lang} and {source} "
        "(default: evokd/teachers/prompts/translate.txt)",
    )  # fmt: skip
    group.add_argument(
        "--batch-size", type=int, default=16, metavar="N",
        help="sentences per call of the teacher (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--on-bad-output", choices=("drop", "reference"), default="drop",
        help="an empty, unparsable or cut output: drop its pair, or keep the pair with its "
        "reference target (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--source-text", metavar="FILE",
        help="the raw source sentences of SUBSET, one per line (default: found in DATA, or "
        "read again from the corpus DATA was prepared from)",
    )  # fmt: skip


def check_subset(args):
    """Refuse a --subset other than train without --force; with it, say what is replaced."""
    if args.subset == "train":
        return
    what = (
        f"the references of {args.subset!r} in {args.out} would be the teacher's translations "
        f"instead of the real ones of {args.data}, so that validating or testing on it "
        "measures agreement with the teacher"
    )
    if not args.force:
        from evokd.errors import EvokdError

        raise EvokdError(f"--subset {args.subset}: {what}; give --force to do it anyway")
    print(f"--subset {args.subset} --force: {what}", file=sys.stderr)


def check_engine(args):
    """--engine and --ct2-quantization: only for a fairseq checkpoint, the latter only with
    --engine ctranslate2."""
    from evokd.errors import EvokdError
    from evokd.teachers.text import teacher_kind

    if teacher_kind(args.teacher) != "fairseq":
        if args.engine:
            raise EvokdError(
                f"--engine {args.engine}: only for a fairseq checkpoint teacher (a .pt); "
                f"--teacher {args.teacher} is decoded by its own engine"
            )
        if args.ct2_quantization:
            raise EvokdError("--ct2-quantization: only for a fairseq checkpoint teacher")
        if args.loop_fallback:
            raise EvokdError("--loop-fallback: only for a fairseq checkpoint teacher")
        return
    if args.engine is None:
        from evokd.distill.ct2 import default_engine

        args.engine = default_engine()
    if args.ct2_quantization and args.engine != "ctranslate2":
        raise EvokdError("--ct2-quantization: only with --engine ctranslate2")


def run(args):
    from evokd.teachers.text import teacher_kind

    check_subset(args)
    check_engine(args)
    if teacher_kind(args.teacher) != "fairseq":
        return run_text(args)
    given = [f"--{k.replace('_', '-')}" for k in EXTERNAL if getattr(args, k)]
    if given:
        from evokd.errors import EvokdError

        raise EvokdError(f"{', '.join(given)}: only for teachers that are not fairseq checkpoints")
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
        loop_fallback=args.loop_fallback,
        cpu=args.cpu,
        processes=args.processes,
        chunk_size=args.chunk_size,
        engine=args.engine,
        ct2_quantization=args.ct2_quantization or "float32",
    )
    if info.get("done"):
        print(f"{args.out}: finished earlier with the same settings, and intact: nothing to do")
        return 0
    engine = args.engine
    if "ct2_model" in info:
        model = info["ct2_model"]
        engine += f" {model['quantization']} ({model['folder']})"
    print(
        f"{args.out}: {info['examples']} {args.subset} pairs distilled by {engine} with beam "
        f"{args.beam} "
        f"({info['training_pairs']} pairs to train on); average target length "
        f"{info['reference_avg_length']:.2f} (references) -> "
        f"{info['hypothesis_avg_length']:.2f} (teacher) tokens; "
        f"{info['translate_seconds']:.0f} s of translation"
    )
    return 0


def run_text(args):
    from evokd.distill.any_teacher import text_settings
    from evokd.distill.text import distill_text

    settings = text_settings(
        args.data, args.cpu, beam=args.beam, max_len_a=args.max_len_a,
        max_len_b=args.max_len_b, batch_size=args.batch_size, teacher_model=args.teacher_model,
        teacher_tokenizer=args.teacher_tokenizer, prompt=args.prompt,
        teacher_api=args.teacher_api, concurrency=args.concurrency, timeout=args.timeout,
        retries=args.retries,
    )  # fmt: skip
    info = distill_text(
        args.teacher, args.data, args.out, settings, subset=args.subset,
        on_bad_output=args.on_bad_output, keep_references=args.keep_references,
        chunk_size=args.chunk_size, source_text=args.source_text,
    )  # fmt: skip
    if info.get("done"):
        print(f"{args.out}: finished earlier with the same settings, and intact: nothing to do")
        return 0
    counts = info["counts"]
    print(
        f"{args.out}: {info['examples']} of {info['source_examples']} {args.subset} pairs "
        f"distilled ({info['training_pairs']} pairs to train on); bad outputs: "
        f"{counts['empty']} empty, {counts['unparsed']} unparsed, {counts['cut']} cut "
        f"({args.on_bad_output}); {counts['unk_pieces']} of {counts['pieces']} pieces outside "
        "the dictionary"
    )
    return 0
