#!/usr/bin/env bash
# edge-run against llama.cpp on the same machine, back to back (docs/RESULTS.md, issue 4).
#
#   benches/llama-compare.sh OUT_DIR [ROUNDS]
#
# Needs: LLAMA_BIN, a folder with llama-bench and llama-quantize (build them outside this repo:
# docs/RESULTS.md, "llama.cpp baselines"); EDGE_PACK, an .edge checkpoint packed with
# `--encoding q8` (default: SmolLM2 packed into OUT_DIR with `edge-pack -e q8`); THREADS
# (default 2). Each round runs our four views (8, 4, 3, 2 bits; `edge-run bench --json`), then
# llama-bench on Q8_0, Q4_0, Q3_K_M and Q2_K requantized from the shared GGUF; the ratio is
# taken per round (ours / theirs in the same round, which cancels slow drifts of a shared host)
# and the table gives the median of rounds 2..ROUNDS (round 1 warms caches and clocks).
# Writes OUT_DIR/round-N/*.json and prints the table (benches/llama_ratios.py).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: benches/llama-compare.sh OUT_DIR [ROUNDS]}"
rounds="${2:-4}"
threads="${THREADS:-2}"
llama="${LLAMA_BIN:?set LLAMA_BIN to the folder holding llama-bench and llama-quantize}"
gguf="$here/../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
edge_run="$here/target/release/edge-run"
edge_pack="$here/target/release/edge-pack"
for f in "$llama/llama-bench" "$llama/llama-quantize"; do
  [ -x "$f" ] || { echo "error: $f not found: build llama.cpp (docs/RESULTS.md) and set LLAMA_BIN" >&2; exit 1; }
done
[ -f "$gguf" ] || { echo "error: $gguf missing: ../shared/models must sit beside the checkout" >&2; exit 1; }
mkdir -p "$out"
(cd "$here" && cargo build --release --locked --workspace --bins >&2)

pack="${EDGE_PACK:-$out/smollm2-q8.edge}"
[ -f "$pack" ] || "$edge_pack" "$gguf" -e q8 -o "$pack"
types=(Q8_0 Q4_0 Q3_K_M Q2_K)
for t in "${types[@]}"; do
  [ -f "$out/smollm2-$t.gguf" ] || "$llama/llama-quantize" --allow-requantize "$gguf" "$out/smollm2-$t.gguf" "$t" >"$out/quantize-$t.log" 2>&1
done

for r in $(seq 1 "$rounds"); do
  d="$out/round-$r"
  mkdir -p "$d"
  echo "round $r/$rounds (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  "$edge_run" bench -m "$pack" --bits 8,4,3,2 -t "$threads" -p 512 -n 128 -r 5 --json >"$d/edge.json"
  for t in "${types[@]}"; do
    "$llama/llama-bench" -m "$out/smollm2-$t.gguf" -t "$threads" -p 512 -n 128 -r 5 -o json >"$d/llama-$t.json" 2>/dev/null
  done
done
python3 "$here/benches/llama_ratios.py" "$out" 2 "$rounds"
