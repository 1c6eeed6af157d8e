# Sourced by scripts/setup.sh and scripts/test.sh: where each host's env file lives.
# A host is chosen with HOST= (make) or --host (setup.sh): empty / "default" / the pinned version
# is the pinned host (.host.env); "newest" the newest tree in the hosts folder; a version found
# there, or a path to a ComfyUI tree or tarball.

# The folder of extra ComfyUI trees: SD35WB_HOSTS_DIR, else ../shared/hosts beside the clone.
hosts_dir() {
  if [ -n "${SD35WB_HOSTS_DIR:-}" ]; then echo "$SD35WB_HOSTS_DIR"; else echo "$REPO/../shared/hosts"; fi
}

host_trees() {  # the ComfyUI trees and tarballs in the hosts folder, one per line
  local d; d="$(hosts_dir)"
  [ -d "$d" ] || return 0
  local f
  for f in "$d"/*.tar.gz "$d"/*.tgz "$d"/*/; do
    [ -e "$f" ] || continue
    if [ -f "$f" ] || [ -f "$f/main.py" ] || [ -f "$f/ComfyUI/main.py" ]; then echo "${f%/}"; fi
  done
}

# The name of a host/frontend choice in env file names: a plain word stays, a path becomes a hash.
choice_label() {
  case "$1" in
    "" | default) echo default ;;
    *[!A-Za-z0-9._-]*) printf 'path-%s' "$(readlink -f "$1" | sha256sum | cut -c1-12)" ;;
    *) echo "$1" ;;
  esac
}

host_env_file() {  # $1 = HOST choice
  local l; l="$(choice_label "$1")"
  if [ "$l" = default ] || [ "$l" = "${COMFY_VERSION:-0.3.75}" ]; then echo "$REPO/.host.env"; else echo "$REPO/.host.$l.env"; fi
}

frontend_env_file() {  # $1 = FRONTEND choice
  echo "$REPO/.frontend.$(choice_label "$1").env"
}
