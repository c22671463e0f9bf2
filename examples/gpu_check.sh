#!/usr/bin/env bash
# The GPU check of evokd: every GPU path once, at the paper's sizes, in about 8 minutes on
# one GPU and without internet, each figure printed and all of them written to one JSON file.
#
# Usage: bash examples/gpu_check.sh [--work DIR] [--print-commands] [JSON]
#   JSON              where the figures go (default: $OUT/gpu_check.json when OUT is set,
#                     else results/gpu_check.json)
#   --work DIR        an empty or new folder for the data, checkpoints and logs (default: a
#                     new temporary folder)
#   --print-commands  print the commands it would run, one a line, and run nothing (the
#                     tests parse them with evokd's and fairseq's own parsers)
#   -h, --help        this text
# Environment: TEACHER_EPOCHS (default 3), STUDENT_EPOCHS (2), NGPUS (every visible GPU),
# MASTER_PORT (29511).
#
# Steps, each timed: evokd prepare multi30k (the embedded corpus); the paper-size senior
# teacher (transformer_evokd_senior, --fp16); the paper-size student
# (transformer_evokd_student, --fp16) with word-level KD from it online and from a teacher
# cache built on the GPU (evokd cache-teacher); one KD stage under torchrun with NCCL
# (--nproc-per-node NGPUS, pytorch_ddp); evokd bench (time and memory per update: plain,
# online and cached KD); evokd bench-translate (teacher and student speed and BLEU, in
# fairseq and, when installed, CTranslate2); last, the teacher and the cached-KD student
# for one epoch each with --bf16.
# Any failure stops the check with the failing step's log; the figures of the steps before
# it are in the JSON file already.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK=""
PRINT=0
JSON=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --print-commands) PRINT=1 ;;
        --work) [[ $# -ge 2 ]] || { echo "error: --work needs a folder" >&2; exit 2; }
            WORK="$2"; shift ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [[ -z "$JSON" ]] || { echo "error: one JSON path only (see --help)" >&2; exit 2; }
            JSON="$1" ;;
    esac
    shift
done
if [[ -z "$JSON" ]]; then
    if [[ -n "${OUT:-}" ]]; then JSON="$OUT/gpu_check.json"; else JSON="results/gpu_check.json"; fi
fi
TEACHER_EPOCHS="${TEACHER_EPOCHS:-3}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-2}"
MASTER_PORT="${MASTER_PORT:-29511}"
PYTHON="${PYTHON:-python}"

for cmd in evokd evokd-train fairseq-train torchrun "$PYTHON"; do
    command -v "$cmd" >/dev/null || {
        echo "error: $cmd not found: run 'make setup TORCH=torch==2.13.0' and 'source .venv/bin/activate'" >&2
        exit 1
    }
done

if ((PRINT)); then
    WORK="${WORK:-gpu_check}"
    NGPUS="${NGPUS:-1}"
else
    "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || {
        echo "error: no CUDA GPU visible to torch: this check is for GPU machines" >&2
        exit 1
    }
    NGPUS="${NGPUS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}"
    if [[ -z "$WORK" ]]; then
        WORK="$(mktemp -d "${TMPDIR:-/tmp}/evokd_gpu_check.XXXXXX")"
    elif [[ -e "$WORK" && -n "$(ls -A "$WORK")" ]]; then
        echo "error: --work $WORK is not empty: give a new or empty folder (fairseq would resume)" >&2
        exit 1
    fi
    mkdir -p "$WORK" "$(dirname "$JSON")"
fi
DATA="$WORK/multi30k.de-en"
TEACHER="$WORK/senior_fp16/checkpoint_best.pt"
CACHE="$WORK/cache_senior_top8"
STUDENT="$WORK/student_cache_fp16/checkpoint_best.pt"
START=$SECONDS

# record NAME LOG SECONDS: a step's figures into $JSON, and printed: its time, the last
# epoch's train and valid summaries of fairseq's JSON log, and the step's own --json
# results (NAME "device": the GPU and the versions instead)
record() {
    "$PYTHON" - "$JSON" "$@" <<'EOF'
import json, os, re, sys

out, name, log, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
figures = {"seconds": round(seconds, 1)}
if name == "device":
    import torch

    figures = {
        "name": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
else:
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            # "... | train | {...}", or "INFO:train:{...}" under torchrun
            match = re.search(r"(?:\|\s*|INFO:)(train|valid)\s*[|:]\s*(\{\".*\})\s*$", line)
            if match:
                figures[match.group(1)] = json.loads(match.group(2))
    results = os.path.splitext(log)[0] + ".json"  # evokd bench / bench-translate --json
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            figures["results"] = json.load(f)
data = {}
if os.path.isfile(out):
    with open(out, encoding="utf-8") as f:
        data = json.load(f)
if name == "device":
    data["device"] = figures
else:
    data.setdefault("steps", {})[name] = figures
with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
os.replace(out + ".tmp", out)
for key, value in figures.items():
    print(f"  {name} {key}: {json.dumps(value)}")
EOF
}

# step NAME COMMAND...: run COMMAND with its output in $WORK/NAME.log, then its figures
step() {
    local name="$1"
    shift
    if ((PRINT)); then
        printf '%q ' "$@"
        printf '\n'
        return
    fi
    echo "### $name ($((SECONDS - START)) s so far)"
    local log="$WORK/$name.log" began=$SECONDS
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "error: step $name failed (log: $log)" >&2
        exit 1
    fi
    record "$name" "$log" "$((SECONDS - began))"
}

((PRINT)) || record device - 0

### data: the embedded Multi30k (29,000 training pairs), sacremoses + sentencepiece BPE
step prepare evokd prepare multi30k --out "$DATA"

COMMON=(
    --user-dir "$ROOT/evokd" --task evokd_translation --share-decoder-input-output-embed
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 300 --dropout 0.3
    --weight-decay 0.0001 --label-smoothing 0.1 --max-tokens 4096 --seed 1
    --no-epoch-checkpoints --log-format json --log-interval 50 --no-progress-bar
)
KD=(--criterion word_kd --kd-alpha 0.5 --kd-temperature 1 --teacher-path "$TEACHER")

### the paper-size senior teacher (fp16)
step senior_fp16 fairseq-train "$DATA" "${COMMON[@]}" --arch transformer_evokd_senior \
    --criterion label_smoothed_cross_entropy --fp16 \
    --max-epoch "$TEACHER_EPOCHS" --save-dir "$WORK/senior_fp16"

### the paper-size student (fp16): word-level KD online, then from a cache built on the GPU
step student_online_fp16 fairseq-train "$DATA" "${COMMON[@]}" --arch transformer_evokd_student \
    "${KD[@]}" --fp16 --max-epoch "$STUDENT_EPOCHS" --save-dir "$WORK/student_online_fp16"
step cache_teacher evokd cache-teacher --teacher "$TEACHER" --data "$DATA" --topk 8 \
    --out "$CACHE"
step student_cache_fp16 fairseq-train "$DATA" "${COMMON[@]}" --arch transformer_evokd_student \
    "${KD[@]}" --teacher-cache "$CACHE" --kd-topk 8 --fp16 \
    --max-epoch "$STUDENT_EPOCHS" --save-dir "$WORK/student_cache_fp16"

### one KD stage under torchrun, NCCL: the effective batch of one GPU split among NGPUS
# online KD: every rank runs its own frozen teacher on its own GPU
DDP=(--distributed-world-size "$NGPUS" --ddp-backend pytorch_ddp)
if ((NGPUS == 1)); then  # fairseq starts no process group for one process unless told:
    # a group of one (NCCL initialised and used for an all-reduce, no gradient all-reduce)
    DDP+=(--distributed-init-method env:// --distributed-no-spawn)
fi
step student_torchrun torchrun --nproc-per-node "$NGPUS" --master-port "$MASTER_PORT" \
    -m evokd.train "$DATA" "${COMMON[@]}" --max-tokens "$((4096 / NGPUS))" \
    --arch transformer_evokd_student "${KD[@]}" --fp16 "${DDP[@]}" \
    --max-epoch 1 --save-dir "$WORK/student_torchrun"

### cost per update: plain, online and cached KD (the paper-size student)
step bench evokd bench --data "$DATA" --teacher "$TEACHER" --cache "$CACHE" --topk 8 \
    --arch transformer_evokd_student --updates 30 --json "$WORK/bench.json"

### translation speed and BLEU: teacher, student, student in CTranslate2 (when installed)
CT2=(--student-ct2)  # none
if ((!PRINT)) && "$PYTHON" -c 'import ctranslate2' 2>/dev/null; then
    CT2=(--student-ct2 float32 int8)
fi
step bench_translate evokd bench-translate --teacher "$TEACHER" --student "$STUDENT" \
    --data "$DATA" --beam 5 "${CT2[@]}" --json "$WORK/bench_translate.json"

### bf16 last: the teacher and the cached-KD student for one epoch each. fairseq 0.12 makes
# --bf16 imply --tpu (XLA); evokd-train is fairseq-train with evokd's entry-point fixes
step senior_bf16 evokd-train "$DATA" "${COMMON[@]}" --arch transformer_evokd_senior \
    --criterion label_smoothed_cross_entropy --bf16 \
    --max-epoch 1 --save-dir "$WORK/senior_bf16"
step student_cache_bf16 evokd-train "$DATA" "${COMMON[@]}" --arch transformer_evokd_student \
    "${KD[@]}" --teacher-cache "$CACHE" --kd-topk 8 --bf16 \
    --max-epoch 1 --save-dir "$WORK/student_cache_bf16"

((PRINT)) || echo "### done in $((SECONDS - START)) s; figures: $JSON"
