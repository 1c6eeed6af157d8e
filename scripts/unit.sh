#!/usr/bin/env bash
# `make unit`: the unit tier, which imports no ComfyUI, so it needs no built host. Uses the host's
# python when scripts/setup.sh has made one; otherwise a small venv (the pack's requirements.txt and
# the pinned pytest tools, no torch) in the per-user cache, made once.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY=""
if [ -f .host.env ]; then
  # shellcheck disable=SC1091
  PY="$(. ./.host.env && echo "${SD35WB_TOOLS_PYTHON:-${COMFYUI_PYTHON:-}}")"  # the host's python + the tools layer
  [ -x "$PY" ] && "$PY" -c "import pytest, hypothesis" 2>/dev/null || PY=""
fi
if [ -z "$PY" ]; then
  tools=$(grep -E '^(pytest|pytest-timeout|hypothesis)==' requirements-dev.txt)
  key=$({ cat requirements.txt; echo "$tools"; } | sha256sum | cut -c1-12)
  VENV="${SD35WB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd35-workbench}/unit-venv-$key"
  if [ ! -f "$VENV/.complete" ]; then
    echo "[unit] no host set up: making a small venv for the unit tier in $VENV"
    rm -rf "$VENV"
    "${SD35WB_PYTHON:-python3}" -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt $tools \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    touch "$VENV/.complete"
  fi
  PY="$VENV/bin/python"
fi
exec "$PY" -m pytest -m unit "$@"
