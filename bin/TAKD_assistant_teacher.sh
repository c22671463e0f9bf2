#!/usr/bin/env bash
# TAKD_assistant_teacher: TAKD: an assistant (256) distilled from the senior teacher; 50 epochs.
# Needs first: bin/senior_teacher.sh
#
# Usage: bash bin/TAKD_assistant_teacher.sh [ROOT [MASTER_PORT [GPU_NUM]]] [--preset paper|tiny|cpu|PLAN]
#            [--data DIR] [--save-dir DIR] [--max-epoch N] [--dry-run] [-- FAIRSEQ_FLAGS...]
#   ROOT         repository root holding data-bin/ and checkpoints/ (default: this repo)
#   MASTER_PORT  torchrun's port when GPU_NUM > 1 (default: 29500)
#   GPU_NUM      0 = CPU; 1 = one GPU; N > 1 = torchrun with NCCL (gloo without CUDA);
#                max-tokens is split among the processes (the paper's effective batch)
# Writes ROOT/checkpoints/PRESET/TAKD_assistant_teacher/ (or --save-dir); rerunning resumes or skips it.
# All flags, with their defaults: evokd recipe TAKD_assistant_teacher --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_evokd.sh" "$@"
exec "$EVOKD" recipe TAKD_assistant_teacher "$@"
