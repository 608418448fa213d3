#!/usr/bin/env bash
# Issue 18's degradation curves: post-training packs of a model against quantization-aware
# trained ones (edge-qat exports), every view of each, through the runtime (`edge-run eval
# --sweep --compare`), on sequences the float model samples itself (the model may have no
# tokenizer, and held-out text of its domain may not exist).
#
#   benches/qat-sweep.sh OUT EXPORT_DIR [EXPORT_DIR ...]
#
# MODEL: the float Hugging Face folder the exports were trained from (default
# ../shared/models/stories260K-hf). WINDOWS (20) sequences of CTX (128) tokens, sampled at
# temperature 1 (no top-k or top-p) from BOS with seeds SEED, SEED+1, ... (default 1000; training and calibration
# sample with seed 0). Packs made: the float model (f32, the KL base); its post-training q8 packs
# `ptq-minmax` (min/max codes), `ptq-allviews` (every view's error searched) and `ptq-gptq`
# (GPTQ across the views), each with a sensitivity profile; and every export, packed as trained,
# named after its run folder. DATA=FILE evaluates on the first WINDOWS windows of a text file
# instead (e.g. ../shared/data/wikitext-2-raw/wiki.test.raw; the model needs its tokenizer).
# BYTES=SIZES adds plans of the first export at those weight-byte budgets (comma-separated, e.g.
# llama.cpp files' sizes: 91726912,105454144 for SmolLM2's Q4_0 and Q4_K_M). A run started at
# the GPTQ pack's codes: `edge-pack OUT/ptq-gptq.edge --export-codes DIR`, then
# `python -m edge_qat.train ... --init-codes DIR`. Writes OUT/sweep.{json,svg} and prints the
# table. Quality only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benches/qat-sweep.sh OUT EXPORT_DIR [EXPORT_DIR ...]}
shift
[ $# -ge 1 ] || { echo "qat-sweep: give at least one edge-qat export folder" >&2; exit 2; }
MODEL=${MODEL:-../shared/models/stories260K-hf}
WINDOWS=${WINDOWS:-20}
CTX=${CTX:-128}
SEED=${SEED:-1000}
cargo build --release -q --bin edge-run --bin edge-pack
E=target/release/edge-run
P=target/release/edge-pack
mkdir -p "$OUT"
PACK=(--allow-no-tokenizer --force)

"$P" "$MODEL" -e f32 -o "$OUT/base.edge" "${PACK[@]}" >/dev/null
"$P" "$MODEL" --calibrate-self --gptq off --objective min-max -o "$OUT/ptq-minmax.edge" "${PACK[@]}" >/dev/null
"$P" "$MODEL" --calibrate-self --gptq off -o "$OUT/ptq-allviews.edge" "${PACK[@]}" >/dev/null
"$P" "$MODEL" --calibrate-self -o "$OUT/ptq-gptq.edge" "${PACK[@]}" >/dev/null
qat=()
for x in "$@"; do
  name=$(basename "$(dirname "$(realpath "$x")")")
  [ "$(basename "$x")" = export ] || name=$(basename "$x")
  "$P" "$x" --calibrate-self -o "$OUT/$name.edge" "${PACK[@]}" >/dev/null
  qat+=("$OUT/$name.edge")
done

# The evaluation sequences: a text's windows, or BOS then CTX - 1 sampled tokens, one seed each.
if [ -n "${DATA:-}" ]; then
  data=(--data "$DATA" --chunks "$WINDOWS")
else
  ids="$OUT/eval-ids.txt"
  bos=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("bos_token_id") or 1)' "$MODEL/config.json")
  : >"$ids.partial"
  for ((i = 0; i < WINDOWS; i++)); do
    "$E" -m "$OUT/base.edge" --prompt-ids "$bos" --temp 1 --top-k 0 --top-p 1 --ignore-eos -n $((CTX - 1)) --ctx "$CTX" --seed $((SEED + i)) --json \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(map(str, d["prompt_tokens"] + d["tokens"])))' >>"$ids.partial"
  done
  mv "$ids.partial" "$ids"
  data=(--token-ids --data "$ids")
fi

# The first export is --model (its plans are swept too); the rest and the PTQ packs compare.
others=("${qat[@]:1}" "$OUT/ptq-gptq.edge" "$OUT/ptq-allviews.edge" "$OUT/ptq-minmax.edge")
"$E" eval --sweep -m "${qat[0]}" --compare "$(IFS=,; echo "${others[*]}")" --kl-base "$OUT/base.edge" "${data[@]}" \
  --ctx "$CTX" --budgets 3,4 ${BYTES:+--byte-budgets "$BYTES"} --out "$OUT"
