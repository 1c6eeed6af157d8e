#!/usr/bin/env bash
# The README's test command runs this (via `make test`): lint, then every test tier.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck disable=SC1091
. ./.host.env
t0=$(date +%s)
"$COMFYUI_PYTHON" -m ruff check .
echo "[test] ruff: $(( $(date +%s) - t0 ))s"
t0=$(date +%s)
set +e
"$COMFYUI_PYTHON" -m pytest --durations=15 "$@"
rc=$?
set -e
echo "[test] pytest: $(( $(date +%s) - t0 ))s (exit $rc)"
if [ "$rc" = 5 ]; then echo "[test] ERROR: pytest collected no tests"; exit 1; fi
exit "$rc"
