#!/usr/bin/env bash
# Prepare IWSLT14 German-English like fairseq's examples/translation/prepare-iwslt14.sh:
# Moses tokenization, cleaning (ratio 1.5, 1-175 tokens), lowercasing, 10000 joint BPE
# pieces, valid = every 23rd training pair, test = TED dev2010 + TEDX dev2012 +
# TED tst2010-2012, then fairseq-preprocess --joined-dictionary.
#
# Usage: examples/translation/prepare-iwslt14.sh [--archive PATH/de-en.tgz] [options]
#
#   --archive PATH   fairseq's de-en.tgz; without it the archive is downloaded once from
#                    http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz
#                    (needs internet access) into --cache-dir (default ~/.cache/evokd)
#   --out DIR        output folder (default data-bin/iwslt14.tokenized.de-en)
#   --force          rebuild a finished preparation
#   every other option of `evokd prepare` passes through; see `evokd prepare --help`.
#
# Output: DIR holds fairseq's binarized data; DIR/text the BPE model and the BPE'd,
# tokenized and raw text. Re-running resumes an interrupted preparation.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi

if ! command -v evokd >/dev/null 2>&1; then
    echo "error: the evokd command is not on PATH. Install evokd first:" >&2
    echo "  make setup && source .venv/bin/activate    (or: pip install -e .)" >&2
    exit 1
fi

exec evokd prepare iwslt14 "$@"
