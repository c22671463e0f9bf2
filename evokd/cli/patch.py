"""Patch a student with its teacher's feedback (after MT-Patcher, Li et al., NAACL 2024).

Instead of retraining the student on everything, find the sentences where it is farthest
from the teacher, collect more sentences holding the words it got wrong (and related
words), have the teacher translate them, and fine-tune the student on those pairs mixed
with replayed training pairs.

steps (STEP runs one; without STEP every enabled step runs, finished ones skipped):
  translate   student and teacher translate the pool (DATA's training source, or --pool
              FILE); per sentence: the student's NLL of the teacher's translation, chrF
              between the two, the error words (teacher words the student got wrong,
              mapped to source words by the teacher's hard alignment)
  select      keep the --select fraction farthest from the teacher (--score)
  synthesize  up to --synth-n other sentences per error word from the mono pool (DATA's
              training source, or --mono FILE), translated by the teacher; kept when the
              translation holds the corrected word
  analogy     the --analogy-k whole words nearest to each error word in the teacher's
              source embeddings; sentences holding them, translated by the teacher; kept
              when translated at all (not empty, no <unk>)
  build       DIR/data: the patch pairs (deduplicated) + --replay-ratio replayed training
              pairs per patch pair; valid, test and dictionaries copied from DATA
  train       fine-tune the student on DIR/data (a chain stage: init_from the student,
              --max-epoch, the train: flags of --plan) and evaluate it against the student

--pool and --mono files hold raw source sentences, tokenized, lowercased and BPE'd like
DATA's training text: DATA must then be a folder made by `evokd prepare`.

With an LLM teacher (--teacher http(s)://HOST:PORT/v1 --teacher-model NAME, or a Hugging Face
causal-LM folder; DATA made by `evokd prepare`) the steps are MT-Patcher's own:
  translate   the student translates the pool; the LLM names the errors of each translation
              with their corrections, and a corrected translation (prompt feedback.txt)
  select      the sentences with at least one error
  synthesize  --llm-samples new sentences per error word (synthesis.txt, temperature 1.0),
              translated by the LLM
  analogy     --analogy-k words of the same category and --analogy-k related words per error
              (analogy.txt), --llm-samples sentences for each (context.txt), translated
Prompts: evokd/methods/patch/prompts/*.txt, or the files of --prompts DIR. A reply must be the
stated JSON; any other is counted as unparsed and skipped. Every call is kept in DIR/replies
(--reply-cache): a killed run resumes, and a rerun costs, no call twice. DIR/report.json:
sentences judged and flagged, unparsed replies, contexts and analogies written and kept, the
calls' time and tokens, the student's BLEU before and after.

  demonstrations  (not a step) the feedback prompts for a --sample of the student's
              translations, DIR/demonstrations/prompts.jsonl; with --teacher (a strong LLM's
              server), its replies as DIR/demonstrations/pairs.jsonl to fine-tune a patcher on
"""

from evokd.cli import add_decoding_arguments, add_server_arguments
from evokd.methods.patch import FILES, STEPS

__doc__ += (
    FILES
    + """
examples:
  evokd patch --student checkpoints/tiny/student_model/checkpoint_best.pt \\
      --teacher checkpoints/tiny/senior_teacher/checkpoint_best.pt \\
      --data data-bin/multi30k.tiny.de-en --out patch/tiny
  evokd patch translate --student S.pt --teacher T.pt --data DATA --out DIR --pool news.de
  evokd patch select --out DIR --select 0.2 --score nll     # inputs read from DIR/patch.json
  evokd patch --out DIR --no-analogy --replay-ratio 2 -- --lr 1e-4   # after --: fairseq-train
"""
)


def add_arguments(parser):
    parser.add_argument(
        "step",
        nargs="?",
        default="all",
        choices=[*STEPS, "all", "demonstrations"],
        metavar="STEP",
        help=f"one step ({', '.join(STEPS)}), all of them (default), or demonstrations",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the output folder")
    group = parser.add_argument_group("inputs (fixed by the first step in DIR/patch.json)")
    group.add_argument("--student", metavar="CKPT", help="the student checkpoint")
    group.add_argument(
        "--teacher", metavar="CKPT|URL|DIR",
        help="the teacher: a fairseq checkpoint, or an LLM (an OpenAI-compatible server URL "
        "http(s)://HOST:PORT/v1, a Hugging Face causal-LM folder)",
    )  # fmt: skip
    group.add_argument("--data", metavar="DIR", help="binarized data both were trained on")
    group.add_argument(
        "--pool", metavar="FILE", help="raw source sentences to translate (default: the "
        "training source of --data)",
    )  # fmt: skip
    group.add_argument(
        "--mono", metavar="FILE", help="raw source sentences to retrieve from (default: the "
        "training source of --data)",
    )  # fmt: skip
    group = parser.add_argument_group("select")
    group.add_argument(
        "--select", type=float, default=0.1, metavar="F",
        help="fraction of the pool to keep, in (0, 1]; ceil(F x pool size) (default: 0.1)",
    )  # fmt: skip
    group.add_argument(
        "--score", choices=["both", "nll", "chrf"], default="both",
        help="ranking: percentile of the student's NLL of the teacher's translation (nll), "
        "of chrF between the two (chrf, low is bad), or the mean of both (default: both)",
    )  # fmt: skip
    group = parser.add_argument_group("synthesize and analogy")
    group.add_argument("--no-synthesis", action="store_true", help="skip the synthesize step")
    group.add_argument(
        "--synth-n", type=int, default=8, metavar="N",
        help="sentences retrieved per error word (analogy: per related word) (default: 8)",
    )  # fmt: skip
    group.add_argument("--no-analogy", action="store_true", help="skip the analogy step")
    group.add_argument(
        "--analogy-k", type=int, default=3, metavar="K",
        help="related words per error word (default: 3)",
    )  # fmt: skip
    group = parser.add_argument_group("build and train")
    group.add_argument(
        "--replay-ratio", type=float, default=1.0, metavar="R",
        help="replayed training pairs per patch pair, >= 0 (default: 1.0)",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=1, help="seed of the replay draw (default: 1)")
    group.add_argument(
        "--plan", default="tiny",
        help="preset or plan file whose train: flags and evaluate: settings are used "
        "(default: tiny)",
    )  # fmt: skip
    group.add_argument(
        "--max-epoch", type=int, default=3, metavar="N",
        help="epochs of fine-tuning on the patch data (default: 3)",
    )  # fmt: skip
    group.add_argument("--no-evaluate", action="store_true", help="train only; do not evaluate")
    group = add_decoding_arguments(parser, "decoding (every translation; fairseq-generate flags)")
    group.add_argument(
        "--chunk-size", type=int, default=512, metavar="N",
        help="sentences per part of a translating step's JSONL file, written as it is "
        "finished: what a killed run loses at most; the translations do not depend on it "
        "(default: 512)",
    )  # fmt: skip
    group.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    add_llm_arguments(parser)


def add_llm_arguments(parser):
    group = parser.add_argument_group("an LLM teacher (server URL or causal-LM folder)")
    add_server_arguments(group)
    group.add_argument("--prompts", metavar="DIR", help="prompt files replacing the shipped ones")
    group.add_argument(
        "--llm-samples", type=int, default=4, metavar="N",
        help="new sentences asked per error word and per analogy word, at temperature 1.0 "
        "(default: 4)",
    )  # fmt: skip
    group.add_argument(
        "--llm-max-tokens", type=int, default=256, metavar="N",
        help="the length cap of one reply, in the LLM's tokens (default: 256)",
    )  # fmt: skip
    group.add_argument(
        "--reply-cache", metavar="DIR", help="where every reply is kept (default: OUT/replies)"
    )
    group.add_argument(
        "--sample", type=int, default=100, metavar="N",
        help="demonstrations: student translations sampled from the pool (default: 100)",
    )  # fmt: skip


def run(args):
    from evokd.methods.patch import PatchConfig, run_patch, write_demonstrations

    settings = dict(
        select=args.select,
        score=args.score,
        synthesis=not args.no_synthesis,
        synth_n=args.synth_n,
        analogy=not args.no_analogy,
        analogy_k=args.analogy_k,
        replay_ratio=args.replay_ratio,
        seed=args.seed,
        plan=args.plan,
        max_epoch=args.max_epoch,
        evaluate=not args.no_evaluate,
        train_args=tuple(getattr(args, "passthrough", ())),
        beam=args.beam,
        lenpen=args.lenpen,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        max_tokens=args.max_tokens,
        chunk_size=args.chunk_size,
        cpu=args.cpu,
        teacher_model=args.teacher_model,
        teacher_api=args.teacher_api,
        prompts=args.prompts,
        llm_samples=args.llm_samples,
        llm_max_tokens=args.llm_max_tokens,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        reply_cache=args.reply_cache,
    )
    if args.step == "demonstrations":
        cfg = PatchConfig(**settings)
        cfg.check()
        stats = {"demonstrations": write_demonstrations(
            args.student, args.data, args.out, teacher=args.teacher, pool=args.pool,
            sample=args.sample, seed=args.seed, cfg=cfg,
        )}  # fmt: skip
    else:
        steps = None if args.step == "all" else [args.step]
        stats = run_patch(args.student, args.teacher, args.data, args.out, pool=args.pool,
                          mono=args.mono, steps=steps, **settings)  # fmt: skip
    for step, values in stats.items():
        print(f"{step}: {_pairs(values)}")
        for key, value in values.items():
            if isinstance(value, dict):
                print(f"  {key}: {_pairs(value)}")
    print(f"output: {args.out}")
    return 0


def _pairs(values):
    """``key value, ...`` of the plain values of a dict, floats with 2 decimals."""
    shown = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.2f}"
        if not isinstance(value, dict):
            shown.append(f"{key} {value}")
    return ", ".join(shown)
