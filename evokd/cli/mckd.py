"""Collaborative multi-stage relabelling (after MCKD, Zhao et al., ACL 2024).

The first pseudo-labels of the training set of --data come from one of:
  --teacher PATH|URL  any teacher of `evokd distill-data --teacher`, made the same way: a
                      fairseq checkpoint on DATA's dictionaries; or, through the text bridge
                      (DATA made by `evokd prepare`), a CTranslate2 model folder, a Hugging
                      Face model folder, or an OpenAI-compatible server URL with
                      --teacher-model (the MCKD paper's LLM)
  --labels FILE       pseudo-labels made anywhere: raw (detokenized) target sentences, one
                      line per training pair of --data, in order (the line count is checked
                      before any work); they go through DATA's own tokenizer, lowercasing,
                      BPE and dictionary, like a text teacher's output
A text teacher's bad output or an empty line of FILE drops its pair from the run, or keeps
the pair's reference (--on-bad-output drop|reference); no pair is ever shifted. The pairs
 are split in two halves by a seeded permutation (half A: the first
ceil(n/2) ids). At each of --stages K stages two fresh students are trained from scratch
(--arch, --max-epoch, the training flags of --plan), A_k on half A and B_k on half B, and
each relabels the half it has not seen: B_k translates A's sources, A_k B's. A final student
trains on all n pairs with the last labels and is scored on the test set of --data. Every
student chooses checkpoint_best.pt on the real validation set of --data.

output (OUT):
  mckd_settings.json             the settings; a rerun with other settings is refused
  labels/teacher/                the first labels (evokd distill-data's layout); with a
                                 text teacher or FILE, text/train.distilled.ids lists the
                                 ids of the n pairs that have one
  split.json                     the ids of half A and half B, in order
  labels/stageK/{A,B}/           binarized halves (train = the half; valid/test = DATA's),
                                 mckd_ids.txt maps each pair to its id in labels/teacher
                                 (its id in DATA unless pairs were dropped)
  labels/final/                  the n pairs in DATA's order with the final labels
  checkpoints/mckd/STAGE/        student_A1, student_B1, ..., final_student (chain stages)
  mckd.json, mckd.md             where the first labels came from (teacher kind, path or URL
                                 and model, or FILE and its sha256; the bad outputs); per
                                 stage: chrF and BLEU of the labels against the training
                                 references, pairs, wall time of every step; the final
                                 student's test scores

A rerun skips every finished step and resumes an interrupted one; a rerun with another
teacher or labels file (by content), or other settings, is refused, naming them.

examples:
  evokd mckd --teacher checkpoints/tiny/senior_teacher/checkpoint_best.pt \\
      --data data-bin/multi30k.tiny.de-en --out mckd/tiny --arch transformer_evokd_tiny_student
  evokd mckd --teacher T.pt --data D --out O --arch transformer_evokd_student --plan paper \\
      --stages 2 --gpus 4 -- --fp16            # after --: fairseq-train flags of every student
  evokd mckd --teacher http://127.0.0.1:8000/v1 --teacher-model Qwen/Qwen2.5-7B-Instruct \
      --data data-bin/multi30k.de-en --out mckd/qwen --arch transformer_evokd_tiny_student
  evokd mckd --labels llm_train.en --data data-bin/multi30k.de-en --out mckd/file \
      --arch transformer_evokd_tiny_student --on-bad-output reference
"""

from evokd.cli import add_decoding_arguments, add_passthrough_usage
from evokd.cli.distill_data import add_text_teacher_arguments

# the flags of the text teachers, by the names of evokd.methods.mckd.first_labels.FLAGS
TEXT_FLAGS = {"teacher_model": "model", "teacher_tokenizer": "tokenizer", "prompt": "prompt",
              "source_text": "source_text", "teacher_api": "api", "batch_size": "batch_size",
              "concurrency": "concurrency", "timeout": "timeout", "retries": "retries",
              "on_bad_output": "on_bad_output"}  # fmt: skip


def add_arguments(parser):
    parser.add_argument(
        "--teacher", metavar="PATH|URL",
        help="the teacher of the first labels: a fairseq checkpoint, a CTranslate2 or Hugging "
        "Face model folder, or an OpenAI-compatible server URL (http(s)://HOST:PORT/v1); or "
        "give --labels",
    )  # fmt: skip
    parser.add_argument(
        "--labels", metavar="FILE",
        help="the first labels from a file instead of a teacher: raw target sentences, one "
        "per training pair of --data, in order (an empty line: a bad output)",
    )  # fmt: skip
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="fairseq binarized data: its train source is the pool, its valid and test sets "
        "choose and score the students",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the run's folder")
    parser.add_argument(
        "--stages", type=int, default=3, metavar="K", help="pairs of students, >= 1 (default: 3)"
    )
    parser.add_argument("--arch", required=True, help="architecture of every student")
    parser.add_argument(
        "--max-epoch",
        type=int,
        metavar="N",
        help="epochs of every student (default: those of the plan's first stage trained "
        "from scratch without a teacher, 6 in tiny)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the split and fairseq's --seed of the students (default: 1)",
    )
    parser.add_argument(
        "--plan",
        default="tiny",
        help="preset (tiny, cpu, paper) or plan file whose train: section gives the students' "
        "fairseq flags and whose evaluate: section the final scoring (default: tiny)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="processes per machine: 0 = CPU; N > 1 starts torchrun (see evokd chain --help). "
        "Default: every visible GPU, else 1 CPU process",
    )
    parser.add_argument("--master-port", type=int, default=29500, help="torchrun's port")
    parser.add_argument(
        "--no-evaluate", action="store_true", help="do not score the final student on test"
    )
    add_decoding_arguments(
        parser, "decoding of the labels, and (--beam) of the final student's test translation"
    )
    add_text_teacher_arguments(parser)
    add_passthrough_usage(parser)


def default_epochs(plan):
    """The budget of the plan's first stage trained from scratch without a teacher."""
    for stage in plan.stages:
        if not (stage.teacher or stage.init_from or stage.seqkd) and stage.max_epoch:
            return stage.max_epoch
    return None


def run(args):
    from evokd.chain.plan import load_plan
    from evokd.core.devices import Devices
    from evokd.methods.mckd.relabel import run_mckd
    from evokd.methods.mckd.report import markdown

    plan = load_plan(args.plan)
    report = run_mckd(
        args.teacher,
        args.data,
        args.out,
        stages=args.stages,
        arch=args.arch,
        max_epoch=args.max_epoch if args.max_epoch is not None else default_epochs(plan),
        seed=args.seed,
        train_flags=plan.train,
        devices=Devices(gpus=args.gpus, master_port=args.master_port),
        beam=args.beam,
        lenpen=args.lenpen,
        extra_args=args.passthrough,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        max_tokens=args.max_tokens,
        evaluate=not args.no_evaluate,
        evaluate_args={**plan.evaluate, "beam": args.beam},
        labels=args.labels,
        teacher_options={key: getattr(args, flag) for flag, key in TEXT_FLAGS.items()},
    )
    print(markdown(report))
    if not any(step["ran_now"] for step in report["steps"]):
        print(f"{args.out}: every step finished earlier with the same settings: nothing to do")
    print(f"report: {args.out}/mckd.json, {args.out}/mckd.md")
    return 0
