#!/usr/bin/env bash
# eval_model: score the finished stages (or one checkpoint) on the test set: tokenized BLEU
# as the paper reports it (fairseq-generate --beam 5 --remove-bpe), sacreBLEU and chrF with
# their signatures; writes ROOT/results/PRESET/results.{json,md,png} and prints the table.
#
# Usage: bash bin/eval_model.sh [GPU_IDX [ROOT]] [--preset paper|tiny|cpu|PLAN]
#            [--checkpoint FILE] [--data DIR] [--average-last N]
#   GPU_IDX  the GPU to use (-1 = CPU; default: the first visible one, else the CPU)
#   ROOT     repository root (default: this repo)
# All flags, with their defaults: evokd recipe eval_model --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_evokd.sh" "$@"
exec "$EVOKD" recipe eval_model "$@"
