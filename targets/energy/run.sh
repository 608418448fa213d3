#!/usr/bin/env bash
# Energy table and plot for this board and a model: decode tokens/s and joules per token of every
# view and KV format, measured with the board's own power sensor. Run it ON the board (Raspberry
# Pi 5, Jetson Orin; a laptop on battery or a host with RAPL works too), from the checkout or
# next to a copied edge-run binary:
#
#   targets/energy/run.sh MODEL [OUT_DIR] [extra edge-run bench flags...]
#
#   MODEL    an .edge file packed with a sensitivity profile (edge-pack ... --calibrate-self), or
#            a GGUF/HF model (packed once into the cache on first use: minutes on a board)
#   OUT_DIR  where energy.json, energy.svg and table.md go (default energy-<board>-<date>)
#
# Environment: EDGE_RUN (the binary; default: edge-run on PATH, else target/release/edge-run),
# BITS (views, default 8,6,4,3), KV (KV formats, default 16,8,4), TOKENS (decode tokens, default
# 64), REPS (repetitions, default 5), SENSOR (--power-sensor SPEC; default: the first found).
#
# Before measuring (see README.md there):
#   - Jetson: pick and note the power mode (`sudo nvpmodel -q`; `sudo nvpmodel -m 0` for MAXN),
#     and fix the clocks if you want repeatable numbers (`sudo jetson_clocks`).
#   - CPU governor: `cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor`; `performance`
#     gives steadier numbers than `ondemand`/`schedutil` (it also draws more at idle).
#   - Sensors: RAPL's energy_uj is root-only since Linux 5.10 (run with sudo, or
#     `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`); the Pi 5 reads `vcgencmd
#     pmic_read_adc` (the user must be in the `video` group); a Pi 4 has no sensor: use a USB meter
#     that writes watts into a file and SENSOR=file:/path/to/watts.
#   - Close other programs; the script records the load average next to every run.
set -euo pipefail

MODEL=${1:?usage: targets/energy/run.sh MODEL [OUT_DIR] [extra bench flags...]}
shift
BOARD=$(tr -d '\0' < /proc/device-tree/model 2>/dev/null | tr ' /' '__' || true)
BOARD=${BOARD:-$(hostname)}
OUT=${1:-energy-${BOARD}-$(date +%Y%m%d-%H%M)}
[ $# -gt 0 ] && shift

if [ -z "${EDGE_RUN:-}" ]; then
  if command -v edge-run >/dev/null 2>&1; then EDGE_RUN=edge-run
  elif [ -x "$(dirname "$0")/../../target/release/edge-run" ]; then EDGE_RUN="$(dirname "$0")/../../target/release/edge-run"
  else echo "error: no edge-run binary; build it (cargo build --release) or set EDGE_RUN" >&2; exit 1
  fi
fi

SENSOR_FLAG=()
[ -n "${SENSOR:-}" ] && SENSOR_FLAG=(--power-sensor "$SENSOR")

mkdir -p "$OUT"
{
  echo "# Energy on ${BOARD}, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- model: ${MODEL}"
  echo "- edge-run: $("$EDGE_RUN" --version 2>/dev/null || echo unknown)"
  echo "- governor: $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo n/a)"
  echo "- nvpmodel: $( (nvpmodel -q 2>/dev/null | head -1) || echo n/a)"
  echo "- load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} > "$OUT/table.md"

"$EDGE_RUN" bench -m "$MODEL" --bits "${BITS:-8,6,4,3}" --kv-bits "${KV:-16,8,4}" \
  -p 0 -n "${TOKENS:-64}" -r "${REPS:-5}" "${SENSOR_FLAG[@]}" --energy "$OUT" "$@" | tee -a "$OUT/table.md"

echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/table.md"
echo "wrote $OUT/table.md, $OUT/energy.json and $OUT/energy.svg"
