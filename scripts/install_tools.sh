#!/usr/bin/env bash
# The install tools users install with, for the tests that install the pack their way:
# ComfyUI-Manager (cm-cli) and comfy-cli (`comfy node validate` / `comfy node pack`).
#
#   bash scripts/install_tools.sh      # called by `make test` (not by `make demo`); idempotent, seconds when cached
#
# They live in their own venv in the per-user cache, keyed by their pins, never in a host's venv,
# and are linked as .install-tools/. The Manager test runs cm-cli under the host's python with this
# venv's site-packages appended (the Manager installs a pack's requirements with sys.executable and
# imports the host's folder_paths, so it has to run as the host's python, like the Manager in ComfyUI).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL_PINS=(comfy-cli==1.23.0 comfyui-manager==4.3)
PY="${SD35WB_PYTHON:-python3}"
CACHE_ROOT="${SD35WB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd35-workbench}"
KEY="install-tools-$(printf '%s\n' "${TOOL_PINS[@]}" | sha256sum | cut -c1-12)"
DIR="$CACHE_ROOT/$KEY"

log() { printf '[setup] %s\n' "$*"; }

tools_ok() {
  [ -f "$DIR/.complete" ] && [ -x "$DIR/venv/bin/comfy" ] && [ -x "$DIR/venv/bin/cm-cli" ] \
    && "$DIR/venv/bin/python" -c "import comfy_cli, importlib.util as u; assert u.find_spec('comfyui_manager') and u.find_spec('cm_cli')" >/dev/null 2>&1
}

mkdir -p "$CACHE_ROOT"
exec 9>"$DIR.lock"
flock 9  # two setups at once: the second waits, then finds the venv complete
if tools_ok; then
  log "install tools ok: $DIR"
else
  log "building install tools in $DIR (${TOOL_PINS[*]})"
  rm -rf "$DIR"
  "$PY" -m venv "$DIR/venv"
  "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check "${TOOL_PINS[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  date -u +%FT%TZ > "$DIR/.complete"
  tools_ok || { echo "[setup] ERROR: install tools did not build in $DIR" >&2; exit 1; }
fi
ln -sfn "$DIR/venv" "$REPO/.install-tools"
