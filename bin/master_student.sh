#!/usr/bin/env bash
# master_student: EKD step 2: the junior student's weights, fresh optimizer, distilled from the senior teacher; 100 epochs.
# Needs first: bin/junior_student.sh, bin/senior_teacher.sh
#
# Usage: bash bin/master_student.sh [ROOT [MASTER_PORT [GPU_NUM]]] [--preset paper|tiny|cpu|PLAN]
#            [--data DIR] [--save-dir DIR] [--max-epoch N] [--dry-run] [-- FAIRSEQ_FLAGS...]
#   ROOT         repository root holding data-bin/ and checkpoints/ (default: this repo)
#   MASTER_PORT  torchrun's port when GPU_NUM > 1 (default: 29500)
#   GPU_NUM      0 = CPU; 1 = one GPU; N > 1 = torchrun with NCCL (gloo without CUDA);
#                max-tokens is split among the processes (the paper's effective batch)
# Writes ROOT/checkpoints/PRESET/master_student/ (or --save-dir); rerunning resumes or skips it.
# All flags, with their defaults: evokd recipe master_student --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_evokd.sh" "$@"
exec "$EVOKD" recipe master_student "$@"
