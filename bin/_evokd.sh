#!/usr/bin/env bash
# Sourced by the recipes in bin/ with the recipe's arguments: prints the recipe's usage
# header for -h/--help, finds the evokd command (on PATH, else the repository's .venv made
# by `make setup`) and exports EVOKD_ROOT, the default ROOT of a recipe.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi

EVOKD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export EVOKD_ROOT
if command -v evokd >/dev/null 2>&1; then
    EVOKD=evokd
elif [[ -x "$EVOKD_ROOT/.venv/bin/evokd" ]]; then
    EVOKD="$EVOKD_ROOT/.venv/bin/evokd"
else
    echo "error: the evokd command is not installed: run 'make setup' in $EVOKD_ROOT" \
        "(or 'pip install -e .' in your environment)" >&2
    exit 1
fi
