#!/usr/bin/env bash
# Issue 20's robustness measurement: random bit flips in the stored bytes a view reads (group
# parameters and the view's planes; checksums left as stored), at rates of 1e-6 to 1e-4 of
# those bits. For each view and rate: the perplexity with the check off (--no-verify), and
# whether the run with the check on stops at a checksum mismatch.
#
#   benches/bitflips.sh MODEL.edge [DATA] [SEEDS]
#
# DATA: evaluation text (default ../shared/data/wikitext-2-raw/wiki.test.raw; 4 windows of 512);
# SEEDS: flips per rate (default 3). Quality only: the host's load does not matter.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: benches/bitflips.sh MODEL.edge [DATA] [SEEDS]}
DATA=${2:-../shared/data/wikitext-2-raw/wiki.test.raw}
SEEDS=${3:-3}
cargo build --release -q --bin edge-run
cargo build --release -q -p edge-runtime --example flip_bits
E=target/release/edge-run
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The perplexity, "inf" when the scores overflow, or "stopped" when the run refuses its logits.
ppl() {
  if "$E" eval -m "$1" --bits "$2" --data "$DATA" --ctx 512 --chunks 4 --no-verify --json >"$TMP/eval.json" 2>"$TMP/eval.err"; then
    python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["ppl"]; print("%.4g" % p if p is not None else "inf")' "$TMP/eval.json"
  elif grep -q "non-finite logits" "$TMP/eval.err"; then echo "stopped (NaN)"; else echo "failed"; fi
}
echo "| view | rate | bits flipped | PPL (--no-verify) | caught by the check |"
echo "|---:|---:|---:|---|---|"
for b in 8 4; do
  echo "| $b | 0 | 0 | $(ppl "$MODEL" $b) | - |"
  for rate in 1e-6 1e-5 1e-4; do
    ps=(); caught=0; n=0
    for seed in $(seq "$SEEDS"); do
      n=$(target/release/examples/flip_bits "$MODEL" "$TMP/f.edge" $rate $b $seed)
      ps+=("$(ppl "$TMP/f.edge" $b)")
      if ! "$E" -m "$TMP/f.edge" --bits $b -p "Once upon a time" -n 2 --temp 0 2>"$TMP/err" >/dev/null \
         && grep -q "checksum mismatch" "$TMP/err"; then caught=$((caught + 1)); fi
    done
    echo "| $b | $rate | $n | ${ps[*]} | $caught of $SEEDS |"
  done
done
