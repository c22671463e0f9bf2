"""Tokenize, clean, BPE-encode and binarize a parallel corpus for fairseq.

corpora:
  multi30k  Multi30k task 1 (29,000 / 1,014 / 1,000 pairs of image captions), shipped with
            evokd. Not cleaned, 8000 BPE pieces. --raw-dir DIR reads {train,val,test}.{de,en}
            from DIR instead.
  tatoeba   Tatoeba deu-eng from --raw-dir DIR (tatoeba.{de,en}, e.g. the shortest 50k pairs
            sorted by length): lines 1-20,000 train, the next 1,000 valid and test (after
            train, so no test line is a training line). Not cleaned, 8000 BPE pieces.
  iwslt14   IWSLT14 de-en (TED talks) as fairseq's prepare-iwslt14.sh builds it, from
            de-en.tgz: --archive PATH, else downloaded once into --cache-dir. Cleaned,
            10000 BPE pieces; valid is every 23rd training pair, test is TED dev2010, TEDX
            dev2012 and TED tst2010-2012.
  text      any corpus: --train, --valid and --test PREFIX read PREFIX.SRC and PREFIX.TGT
            (raw UTF-8, one segment per line, line N of one side translating line N of the
            other). Not cleaned unless --clean; 8000 BPE pieces.

pipeline (the same for every corpus): Unicode NFC, then invisible format characters removed
(zero-width space/joiners, word joiner, byte-order mark, soft hyphen: category Cf);
sacremoses tokenization (tokenizer.perl without -a); training pairs with an empty side
dropped (valid and test keep them, flagged); for training pairs, optional cleaning like
clean-corpus-n.perl -ratio 1.5 with 1 to 175 tokens per side; lowercasing; one joint
sentencepiece BPE model learnt on both sides of the training text and written subword-nmt
style ("a@@ b"), which fairseq's --remove-bpe undoes; fairseq-preprocess
--joined-dictionary. Pairs with a side longer than --max-positions BPE tokens are reported
(fairseq-train skips them). Every split's dropped and flagged pairs are printed and
recorded in text/prepare.json ("screening").

output (--out): fairseq's binarized data, and text/ holding the BPE model (spm.model), the
BPE'd ({split}.{lang}), tokenized ({split}.tok.{lang}) and raw ({valid,test}.raw.{lang}) text
and prepare.json. An interrupted run resumes where it stopped when started again with the
same flags; --force rebuilds a finished one.

examples:
  evokd prepare multi30k
  evokd prepare multi30k --train-size 3000 --vocab-size 2000 --out data-bin/m30k-tiny
  evokd prepare iwslt14 --archive ~/Downloads/de-en.tgz
  evokd prepare text --train corp/train --valid corp/dev --test corp/test --out data-bin/corp
"""

import argparse
import os

from evokd.errors import EvokdError

CORPORA = ("multi30k", "tatoeba", "iwslt14", "text")
DEFAULT_OUT = {
    "multi30k": "data-bin/multi30k.{src}-{tgt}",
    "tatoeba": "data-bin/tatoeba.{src}-{tgt}",
    "iwslt14": "data-bin/iwslt14.tokenized.{src}-{tgt}",
}
ONLY_FOR = {
    "raw_dir": ("multi30k", "tatoeba"),
    "archive": ("iwslt14",),
    "cache_dir": ("iwslt14",),
    "train": ("text",),
    "valid": ("text",),
    "test": ("text",),
}


def add_arguments(parser):
    parser.add_argument("corpus", choices=CORPORA, help="which corpus (see above)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: data-bin/multi30k.SRC-TGT, "
        "data-bin/iwslt14.tokenized.SRC-TGT; required for text)",
    )
    parser.add_argument("--src", default="de", metavar="LANG", help="source language (default: de)")
    parser.add_argument("--tgt", default="en", metavar="LANG", help="target language (default: en)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help="pieces in the joint sentencepiece BPE model, its 3 special symbols included "
        "(default: 10000 for iwslt14, else 8000). The fairseq dictionary is larger: a piece "
        "inside a word (a@@) and at its end (a) are two entries; 8000 gives 9728 on Multi30k",
    )
    parser.add_argument(
        "--clean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop training pairs like clean-corpus-n.perl -ratio 1.5 ... 1 175: an empty "
        "side, more than 175 tokens on a side, or one side more than 1.5 times as long as "
        "the other, in tokens (default: on for iwslt14, off otherwise)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="keep only the first N training pairs, counted after cleaning (default: all)",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        metavar="M",
        help="keep only the first M pairs of valid and of test (default: all)",
    )
    parser.add_argument(
        "--max-positions",
        type=int,
        metavar="N",
        help="the models' positions: a pair with a side of more than N BPE tokens (its "
        "end-of-sentence token included) is reported too long, since fairseq-train skips it "
        "(default: 1024, fairseq's default for transformer models, which the tiny and paper "
        "architectures keep)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="processes for fairseq-preprocess and threads for BPE encoding; the output "
        "does not depend on it (default: min(4, CPU cores) = %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="remove a finished or unfinished preparation in --out and rebuild it (never "
        "removes a folder that evokd prepare did not make)",
    )
    group = parser.add_argument_group("multi30k and tatoeba")
    group.add_argument(
        "--raw-dir",
        metavar="DIR",
        help="multi30k: read plain {train,val,test}.{SRC,TGT} from DIR instead of the "
        "shipped copy; tatoeba (required): the folder of tatoeba.{SRC,TGT}",
    )
    group = parser.add_argument_group("iwslt14")
    group.add_argument(
        "--archive",
        metavar="PATH",
        help="fairseq's IWSLT14 de-en.tgz (default: download it into --cache-dir; needs "
        "internet access)",
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the downloaded de-en.tgz is kept "
        "(default: $EVOKD_CACHE, else $XDG_CACHE_HOME/evokd, else ~/.cache/evokd)",
    )
    group = parser.add_argument_group("text")
    for split in ("train", "valid", "test"):
        group.add_argument(
            f"--{split}",
            metavar="PREFIX",
            help=f"{split} split: files PREFIX.SRC and PREFIX.TGT",
        )


def check_flags(args):
    """Refuse flags of other corpora; fill in the default --out."""
    for dest, corpora in ONLY_FOR.items():
        if getattr(args, dest) is not None and args.corpus not in corpora:
            flag = "--" + dest.replace("_", "-")
            raise EvokdError(
                f"{flag} is only used with corpus {' or '.join(corpora)}, not {args.corpus}"
            )
    if args.out is None:
        if args.corpus not in DEFAULT_OUT:
            raise EvokdError(f"--out DIR is required for corpus {args.corpus}")
        args.out = DEFAULT_OUT[args.corpus].format(src=args.src, tgt=args.tgt)


def build_corpus(args):
    """The corpus that ``args`` name (downloading IWSLT14 when no --archive is given)."""
    from evokd.data.prepare import build_corpus

    return build_corpus(
        args.corpus, args.src, args.tgt, raw_dir=args.raw_dir, archive=args.archive,
        cache_dir=args.cache_dir, train=args.train, valid=args.valid, test=args.test,
    )  # fmt: skip


def run(args):
    from evokd.data import prepare

    check_flags(args)
    # A finished --out is reported before anything is downloaded or read.
    prepare.check_out(args.out, args.force)
    corpus = build_corpus(args)
    metadata = prepare.prepare_corpus(
        corpus,
        args.out,
        vocab_size=args.vocab_size,
        clean=args.clean,
        train_size=args.train_size,
        eval_size=args.eval_size,
        max_positions=args.max_positions or prepare.MAX_POSITIONS,
        workers=args.workers,
        force=args.force,
    )
    pairs = metadata["pairs"]
    print(
        f"{args.out}: {corpus.name} {corpus.src}-{corpus.tgt}, "
        + ", ".join(f"{split} {n} pairs" for split, n in pairs.items())
        + f", dictionary {metadata['binarized']['dictionary_size']} types"
    )
    for line in prepare.screening_lines(metadata["screening"]):
        print(f"  {line}")
    return 0
