#!/usr/bin/env bash
# edge-run against llama.cpp on the same machine, back to back (docs/RESULTS.md, issues 4 and 13).
#
#   benches/llama-compare.sh OUT_DIR [ROUNDS]
#
# Needs: LLAMA_BIN, a folder with llama-bench and llama-quantize (build them outside this repo:
# docs/RESULTS.md, "llama.cpp baselines"); EDGE_PACK, an .edge checkpoint packed with
# `--encoding q8` and, for the plan rows, a sensitivity profile (default: SmolLM2 packed into
# OUT_DIR with `edge-pack -e q8 --calibrate-self`, about 5 minutes on 2 cores); THREADS
# (default 2); GGUF, the model (default: the shared SmolLM2-135M; e.g. Qwen2.5-Coder-1.5B from
# `../shared/models/fetch.sh qwen2.5-coder-1.5b`, the memory-bound case); PACK_FLAGS, how
# edge-pack packs it when EDGE_PACK is not given (default `-e q8 --calibrate-self
# --gptq-view-weights 1,1,1,4`; `-e q8` packs a 1.5B model in minutes instead of an hour).
#
# llama.cpp's files: Q8_0, Q4_K_M, Q4_0, Q3_K_M and Q2_K, requantized from the shared GGUF.
# Their sizes (llama-bench's `model_size`: the bytes of their tensors, norms included) come
# from one short probe run of each, before the rounds (OUT_DIR/size-TYPE.json).
#
# Each round runs, with `-p 512 -n 128 -r 5` (PROMPT, GEN, REPS override them; BITS the views,
# default 8,6,5,4,3,2):
# - our uniform views, 8, 6, 5, 4, 3 and 2 bits (`edge-run bench --bits ... --json`: edge.json);
# - for each llama.cpp file, the plan the profile picks for that file's size
#   (`edge-run bench --weight-budget <its model_size>B`: plan-TYPE.json), so each plan holds
#   no more weight bytes than the file it is measured against;
# - llama-bench on each file (llama-TYPE.json).
# Ratios are taken per round (ours / theirs in the same round, which cancels slow drifts of a
# shared host) and the tables give the median of rounds 2..ROUNDS (round 1 warms caches and
# clocks; with one round, that round): uniform views against Q8_0, Q4_0, Q3_K_M and Q2_K (6 and 5 bits: ours only), then
# the plans against the file of their size, with the plans' weight bytes and the bytes one
# decoded token reads. The uniform table also gives each side's share of the decode roofline:
# tokens/s x the bytes a decoded token reads (ours: `read_bytes_per_token`; llama.cpp's file:
# `edge-run inspect FILE --json`'s `decode_bytes`, OUT_DIR/gguf-TYPE.json) over the bandwidth
# `membw THREADS 1024` measures before and after the rounds (OUT_DIR/membw-*.txt; their mean).
# Writes OUT_DIR/round-N/*.json and prints both tables (benches/llama_ratios.py). A pack without
# a profile gets no plan rows (a note says so).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: benches/llama-compare.sh OUT_DIR [ROUNDS]}"
rounds="${2:-4}"
threads="${THREADS:-2}"
pp="${PROMPT:-512}"; tg="${GEN:-128}"; reps="${REPS:-5}"; bits="${BITS:-8,6,5,4,3,2}"
llama="${LLAMA_BIN:?set LLAMA_BIN to the folder holding llama-bench and llama-quantize}"
gguf="${GGUF:-$here/../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}"
name="$(basename "$gguf" .gguf)"
read -r -a pack_flags <<<"${PACK_FLAGS:--e q8 --calibrate-self --gptq-view-weights 1,1,1,4}"
edge_run="$here/target/release/edge-run"
edge_pack="$here/target/release/edge-pack"
for f in "$llama/llama-bench" "$llama/llama-quantize"; do
  [ -x "$f" ] || { echo "error: $f not found: build llama.cpp (docs/RESULTS.md) and set LLAMA_BIN" >&2; exit 1; }
done
[ -f "$gguf" ] || { echo "error: $gguf missing: ../shared/models must sit beside the checkout (or fetch it: ../shared/models/fetch.sh)" >&2; exit 1; }
mkdir -p "$out"
(cd "$here" && cargo build --release --locked --workspace --bins >&2 && cargo build --release --locked -p edge-runtime --example membw >&2)
membw="$here/target/release/examples/membw"

pack="${EDGE_PACK:-$out/$name.edge}"
[ -f "$pack" ] || "$edge_pack" "$gguf" "${pack_flags[@]}" -o "$pack"
plans=1
if ! "$edge_run" inspect -m "$pack" --json | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["sensitivity_profile"] is None)'; then
  plans=0
  echo "########################################################################################" >&2
  echo "NOTE: $pack has no sensitivity profile: NO PLAN ROWS (only the uniform views are measured)." >&2
  echo "      Pack one with \`edge-pack MODEL -e q8 --calibrate-self\` and pass it as EDGE_PACK." >&2
  echo "########################################################################################" >&2
fi

read -r -a types <<<"${TYPES:-Q8_0 Q4_K_M Q4_0 Q3_K_M Q2_K}"
declare -A size
for t in "${types[@]}"; do
  f="$out/$name-$t.gguf"
  [ -f "$f" ] || "$llama/llama-quantize" --allow-requantize "$gguf" "$f" "$t" >"$out/quantize-$t.log" 2>&1
  # The file's tensor bytes, as llama-bench reports them (one token of decode: seconds).
  [ -s "$out/size-$t.json" ] || "$llama/llama-bench" -m "$f" -t "$threads" -p 0 -n 1 -r 1 -o json >"$out/size-$t.json" 2>/dev/null
  size[$t]="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["model_size"])' "$out/size-$t.json")"
  # What one decoded token of it reads (all but an untied embedding's other rows): the roofline's bytes.
  [ -s "$out/gguf-$t.json" ] || "$edge_run" inspect "$f" --json >"$out/gguf-$t.json"
  echo "llama.cpp $t: model_size ${size[$t]} bytes" >&2
done

# The decode roofline's bandwidth: THREADS threads streaming 1 GiB, before and after the rounds.
"$membw" "$threads" 1024 >"$out/membw-before.txt"
for r in $(seq 1 "$rounds"); do
  d="$out/round-$r"
  mkdir -p "$d"
  echo "round $r/$rounds (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  "$edge_run" bench -m "$pack" --bits "$bits" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --json >"$d/edge.json"
  if [ "$plans" = 1 ]; then
    for t in "${types[@]}"; do
      "$edge_run" bench -m "$pack" --weight-budget "${size[$t]}B" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --json >"$d/plan-$t.json"
    done
  fi
  for t in "${types[@]}"; do
    "$llama/llama-bench" -m "$out/$name-$t.gguf" -t "$threads" -p "$pp" -n "$tg" -r "$reps" -o json >"$d/llama-$t.json" 2>/dev/null
  done
done
"$membw" "$threads" 1024 >"$out/membw-after.txt"
PROMPT="$pp" GEN="$tg" python3 "$here/benches/llama_ratios.py" "$out" "$(( rounds > 1 ? 2 : 1 ))" "$rounds"
