#!/usr/bin/env bash
# The whole EKD + TAKD chain in one resumable command, then the evaluation report.
#
# Usage: bash bin/run_chain.sh [--plan tiny|cpu|paper|PLAN.yaml] [--gpus N] [--stage NAME]
#            [--run NAME] [--dry-run] [-- FAIRSEQ_FLAGS...]
# Same as `evokd chain`; all flags: evokd chain --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_evokd.sh" "$@"
exec "$EVOKD" chain "$@"
