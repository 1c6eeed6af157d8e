#!/usr/bin/env bash
# The README's test command runs this (via `make test`): lint, then every test tier, on one host.
#
#   HOST=newest FRONTEND=newest bash scripts/test.sh [pytest args]   # after setup.sh --host/--frontend
#
# HOST picks the env file scripts/setup.sh wrote (empty: the pinned host, or the COMFYUI_DIR one);
# FRONTEND serves another frontend build with --front-end-root. The host's python runs with the
# test tools layered on PYTHONPATH (SD35WB_TOOLS), so the host's own environment is never changed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/_hostlib.sh
. scripts/_hostlib.sh
envf="$(host_env_file "${HOST:-}")"
[ -f "$envf" ] || { echo "[test] ERROR: no host set up for HOST=${HOST:-}: run 'make setup HOST=${HOST:-}' first" >&2; exit 2; }
set -a
# shellcheck disable=SC1090
. "$envf"
if [ -n "${FRONTEND:-}" ]; then
  fenv="$(frontend_env_file "$FRONTEND")"
  [ -f "$fenv" ] || { echo "[test] ERROR: no frontend set up for FRONTEND=$FRONTEND: run 'make setup FRONTEND=$FRONTEND' first" >&2; exit 2; }
  # shellcheck disable=SC1090
  . "$fenv"
else
  unset SD35WB_FRONT_END_ROOT SD35WB_FRONTEND_VERSION
fi
set +a
export PYTHONPATH="$SD35WB_TOOLS${PYTHONPATH:+:$PYTHONPATH}"
echo "[test] host: ComfyUI ${SD35WB_HOST_VERSION:-?} at $COMFYUI_DIR; frontend: ${SD35WB_FRONTEND_VERSION:-as the host pins it}"
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
