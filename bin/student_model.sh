#!/usr/bin/env bash
# student_model: the baseline student (embedding 128), no teacher; 30 epochs.
# Needs nothing first.
#
# Usage: bash bin/student_model.sh [ROOT [MASTER_PORT [GPU_NUM]]] [--preset paper|tiny|cpu|PLAN]
#            [--data DIR] [--save-dir DIR] [--max-epoch N] [--dry-run] [-- FAIRSEQ_FLAGS...]
#   ROOT         repository root holding data-bin/ and checkpoints/ (default: this repo)
#   MASTER_PORT  torchrun's port when GPU_NUM > 1 (default: 29500)
#   GPU_NUM      0 = CPU; 1 = one GPU; N > 1 = torchrun with NCCL (gloo without CUDA);
#                max-tokens is split among the processes (the paper's effective batch)
# Writes ROOT/checkpoints/PRESET/student_model/ (or --save-dir); rerunning resumes or skips it.
# All flags, with their defaults: evokd recipe student_model --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_evokd.sh" "$@"
exec "$EVOKD" recipe student_model "$@"
