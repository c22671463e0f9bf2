#!/usr/bin/env python
"""Time `evokd distill-data` with each engine on one teacher and one data folder.

Runs sequence-level KD data for SUBSET of DATA three times (by default), one after the
other in this process, on the same number of threads and with the same decoding flags:
fairseq's beam search, then CTranslate2 with float32 and with int8 weights (the checkpoint
converted into a fresh cache under WORK, its conversion timed apart). Prints one row per
engine: the wall time of the whole distill-data call (model loading and, for CTranslate2,
conversion included; the teacher is loaded once untimed before, so that importing fairseq
counts for no engine) and of the translation alone, the speed-up over fairseq (fairseq's
time / its time), the share of output lines identical to fairseq's, and tokenized BLEU
(evokd.core.metrics, BPE removed) of the outputs against SUBSET's references.

Nothing else should run on the machine meanwhile. Keep DATA small on a shared CPU: every
engine translates all of SUBSET.

usage: examples/bench_distill_engines.py --teacher CKPT.pt --data DIR [--work DIR]
           [--threads N] [--subset NAME] [--quantizations TYPE ...] [--beam N] [--lenpen X]
           [--max-len-a A] [--max-len-b B] [--max-tokens N] [--json FILE]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv):
    from evokd.cli import add_decoding_arguments

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", required=True, metavar="CKPT", help="a fairseq checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR", help="fairseq binarized data")
    parser.add_argument(
        "--work", metavar="DIR",
        help="a new or empty folder for the outputs and the converted models (default: a new "
        "temporary folder, kept)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
        help="intra-op threads of every engine (default: the cores this process may use: "
        "%(default)s)",
    )  # fmt: skip
    parser.add_argument("--subset", default="train", help="subset to translate (default: train)")
    parser.add_argument(
        "--quantizations", nargs="+", default=["float32", "int8"], metavar="TYPE",
        help="the CTranslate2 runs (default: float32 int8)",
    )  # fmt: skip
    add_decoding_arguments(parser)  # distill-data's flags and defaults
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: expected N >= 1")
    for path, flag in ((args.teacher, "--teacher"), (args.data, "--data")):
        if not Path(path).exists():
            parser.error(f"{flag} {path}: no such file or folder")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-distill-engines-"))
    if work.exists() and any(work.iterdir()):
        parser.error(f"--work {work}: not empty; every engine must translate from scratch")
    args.work = work
    return args


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def references(data, subset, pair, lang):
    """The subset's target sentences as fairseq reads them, BPE removed."""
    from fairseq.data import Dictionary, data_utils

    from evokd.data import remove_bpe

    vocab = Dictionary.load(str(Path(data) / f"dict.{lang}.txt"))
    items = data_utils.load_indexed_dataset(str(Path(data) / f"{subset}.{pair}.{lang}"), vocab)
    return [remove_bpe(vocab.string(item)) for item in items]


def run_engine(args, name, engine, quantization):
    from evokd.distill.seqkd import distill_data

    settings = dict(beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a,
                    max_len_b=args.max_len_b, max_tokens=args.max_tokens)  # fmt: skip
    if engine == "ctranslate2":
        settings.update(ct2_quantization=quantization, ct2_cache=args.work / "ct2-cache")
    out = args.work / name
    start = time.perf_counter()
    info = distill_data(args.teacher, args.data, out, subset=args.subset, cpu=True,
                        engine=engine, **settings)  # fmt: skip
    wall = time.perf_counter() - start
    convert = (info.get("ct2_model") or {}).get("convert_seconds") or 0.0
    hyps = lines(out / "text" / f"{args.subset}.distilled.{info['target_lang']}")
    return {"name": name, "wall": wall, "convert": convert,
            "translate": info["translate_seconds"], "info": info, "hyps": hyps}  # fmt: skip


def warm_up(args):
    """Load the teacher once untimed: the first engine does not pay for importing fairseq and
    setting up its configuration, which the others then find done."""
    import warnings

    import torch

    from evokd.core.inference import Translator

    warnings.simplefilter("ignore")  # hydra's and fairseq's deprecation notes
    decoding = {"beam": args.beam, "max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    Translator(args.teacher, args.data, args.subset, decoding, torch.device("cpu"))


def table(rows, refs):
    from evokd.core.metrics import score
    from evokd.data import remove_bpe

    base = rows[0]
    head = "| engine | wall s | converting s | translating s | speed-up | identical | BLEU |"
    out = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        same = sum(a == b for a, b in zip(row["hyps"], base["hyps"])) / len(base["hyps"])
        row["speedup"] = base["wall"] / row["wall"]
        row["translate_speedup"] = base["translate"] / max(row["translate"], 1e-9)
        row["identical"] = same
        row["bleu"] = score([remove_bpe(h) for h in row["hyps"]], refs)["bleu"]
        out.append(
            f"| {row['name']} | {row['wall']:.1f} | {row['convert']:.1f} | "
            f"{row['translate']:.1f} | {row['speedup']:.2f}x ({row['translate_speedup']:.2f}x) "
            f"| {100 * same:.1f}% | {row['bleu']:.2f} |"
        )
    return "\n".join(out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # The one thread policy for every engine, set before torch is imported.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import torch

    import evokd  # noqa: F401  (registers the architectures and the checkpoint types)

    torch.set_num_threads(args.threads)
    warm_up(args)
    runs = [("fairseq", "fairseq", None)]
    runs += [(f"ctranslate2 {q}", "ctranslate2", q) for q in args.quantizations]
    rows = []
    for name, engine, quantization in runs:
        print(f"### {name}: {args.work / name.replace(' ', '-')}", file=sys.stderr, flush=True)
        row = run_engine(args, name.replace(" ", "-"), engine, quantization)
        rows.append(dict(row, name=name))
    info = rows[0]["info"]
    refs = references(args.data, args.subset, info["pair"], info["target_lang"])
    print(
        f"{info['examples']} sentences of {args.subset}, beam {args.beam}, {args.threads} "
        f"thread(s); speed-up: fairseq's wall time / the engine's (translation alone in "
        "parentheses)"
    )
    print(table(rows, refs))
    if args.json:
        keep = ("name", "wall", "convert", "translate", "speedup", "translate_speedup")
        keep += ("identical", "bleu")
        result = {"threads": args.threads, "examples": info["examples"], "work": str(args.work),
                  "rows": [{k: row[k] for k in keep} for row in rows]}  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
