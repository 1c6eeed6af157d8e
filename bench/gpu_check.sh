#!/usr/bin/env bash
# GPU readiness: every bench's CUDA branch, one after the other, on one GPU, in under 8 minutes.
#
#   bash bench/gpu_check.sh            # on a machine with CUDA: runs them, log in ${OUT:-.}/gpu_check.log
#   bash bench/gpu_check.sh --check    # anywhere: each CUDA branch parses its arguments and, without a
#                                      # CUDA device, refuses cleanly (what this script relies on)
#
# The benches with a CUDA branch (the others are CPU-only by design: the linker, sweep and LCM benches):
#   bench/slg_speed.py --device cuda          real SD3.5 Medium structure (24 blocks, width 1536, fp16) at
#                                             1024 px with SLG 7,8,9 on every step: s/step of ours, core's
#                                             SkipLayerGuidanceSD3 and plain CFG (15 samples each), peak VRAM;
#                                             plus the 256 px row
#   bench/slg_explorer_speed.py --device cuda the explorer's shared variant call at width 1536, 1024 px
#   bench/slg_explorer_full.py --device cuda  the explorer's whole run, K=3 and K=24, 512 px, 50 steps
# Each gets its own time limit; the total is checked against 480 s.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f .host.env ] || { echo "gpu_check: run scripts/setup.sh first (no .host.env)"; exit 2; }
. ./.host.env
PY="$COMFYUI_PYTHON"
BENCHES=("slg_speed.py --rows medium1024 256px:160"
         "slg_explorer_speed.py:90"
         "slg_explorer_full.py:210")

if [ "${1:-}" = "--check" ]; then
  rc=0
  for entry in "${BENCHES[@]}"; do
    cmd="${entry%:*}"
    # shellcheck disable=SC2086
    if ! "$PY" bench/$cmd --help >/dev/null 2>&1; then echo "gpu_check --check: bench/$cmd --help fails"; rc=1; continue; fi
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
      echo "gpu_check --check: CUDA is here; run bash bench/gpu_check.sh for the figures"; exit 0
    fi
    # shellcheck disable=SC2086
    out=$("$PY" bench/$cmd --device cuda 2>&1); code=$?
    if [ $code -ne 0 ] && grep -q "sees no CUDA device" <<<"$out"; then
      echo "ok: bench/$cmd --device cuda refuses cleanly without CUDA: $(tail -1 <<<"$out")"
    else
      echo "FAIL: bench/$cmd --device cuda without CUDA (exit $code): $(tail -3 <<<"$out")"; rc=1
    fi
  done
  exit $rc
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False): nothing measured."
  echo "gpu_check: run it on a machine with a GPU; here, 'bash bench/gpu_check.sh --check' checks the CUDA branches parse."
  exit 3
fi
LOG="${OUT:-.}/gpu_check.log"
: > "$LOG"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__)" | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"
t_all=$(date +%s); rc=0
for entry in "${BENCHES[@]}"; do
  cmd="${entry%:*}"; limit="${entry##*:}"
  echo "== bench/$cmd --device cuda (limit ${limit}s)" | tee -a "$LOG"
  t=$(date +%s)
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" bench/$cmd --device cuda 2>&1 | grep -v "it/s]\|s/it]" | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  echo "== exit $code in $(( $(date +%s) - t )) s" | tee -a "$LOG"
  [ "$code" -eq 0 ] || rc=1
done
total=$(( $(date +%s) - t_all ))
echo "gpu_check: all CUDA branches in ${total} s (budget 480 s)$([ $total -le 480 ] || echo ': OVER BUDGET')" | tee -a "$LOG"
[ $total -le 480 ] || rc=1
exit $rc
