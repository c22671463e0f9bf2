#!/usr/bin/env bash
# Word-level KD with stock fairseq commands and `--user-dir evokd`, at CPU size:
# prepare a slice of the embedded Multi30k, train a tiny teacher, distil a tiny student
# from it, and score both with fairseq-generate (tokenized BLEU, beam 5).
#
# Usage: examples/word_kd_demo.sh [WORK_DIR]     (default: demo/word_kd)
#   TRAIN_SIZE=4000 TEACHER_EPOCHS=8 STUDENT_EPOCHS=8 override the sizes.
# Re-running skips what is finished and resumes an interrupted training run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-demo/word_kd}"
TRAIN_SIZE="${TRAIN_SIZE:-4000}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-8}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-8}"
DATA="$WORK/data-bin/multi30k.de-en"

for cmd in evokd fairseq-train fairseq-generate; do
    command -v "$cmd" >/dev/null || { echo "error: $cmd not found; run 'make setup' and 'source .venv/bin/activate'" >&2; exit 1; }
done

### data: sacremoses + sentencepiece BPE + fairseq-preprocess
[[ -s "$DATA/text/prepare.json" ]] || evokd prepare multi30k --out "$DATA" \
    --train-size "$TRAIN_SIZE" --eval-size 500 --vocab-size 4000

COMMON=(
    --user-dir "$ROOT/evokd" --share-decoder-input-output-embed
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 100 --dropout 0.1
    --max-tokens 2048 --label-smoothing 0.1 --no-epoch-checkpoints
    --log-format simple --log-interval 50 --no-progress-bar
)
DEVICE=()
python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || DEVICE=(--cpu)

### teacher: plain label-smoothed cross-entropy
fairseq-train "$DATA" "${COMMON[@]}" "${DEVICE[@]}" --arch transformer_evokd_tiny_senior \
    --criterion label_smoothed_cross_entropy \
    --max-epoch "$TEACHER_EPOCHS" --save-dir "$WORK/checkpoints/teacher"

### student: word-level KD from the frozen teacher
fairseq-train "$DATA" "${COMMON[@]}" "${DEVICE[@]}" --arch transformer_evokd_tiny_student \
    --task evokd_translation --teacher-path "$WORK/checkpoints/teacher/checkpoint_best.pt" \
    --criterion word_kd --kd-alpha 0.5 --kd-temperature 1 \
    --max-epoch "$STUDENT_EPOCHS" --save-dir "$WORK/checkpoints/student"

### evaluation: tokenized BLEU as the paper reports it
for role in teacher student; do
    bleu=$(fairseq-generate "$DATA" --user-dir "$ROOT/evokd" \
        --path "$WORK/checkpoints/$role/checkpoint_best.pt" \
        --beam 5 --remove-bpe --max-tokens 8000 "${DEVICE[@]}" 2>/dev/null | grep -o 'BLEU4 = [0-9.]*')
    echo "$role: $bleu"
done
