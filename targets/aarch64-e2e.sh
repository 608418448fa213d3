#!/usr/bin/env bash
# End-to-end check of the aarch64 kernels on real models, under qemu-user:
#
#   targets/aarch64-e2e.sh target/aarch64/aarch64-unknown-linux-gnu/release/edge-run
#
# Runs the aarch64 edge-run on stories260K (llama2.c, packed as nested8 with groups of 64) at
# every view, greedy generation and perplexity, once with the best kernel table for QEMU_CPU
# and once with EDGE_RUN_KERNELS=scalar, and requires identical token ids and identical
# perplexity (the SIMD tables are bit-identical to the reference). With E2E_SMOLLM=1 it also
# runs SmolLM2-135M (GGUF, packed as nested8) at the 4- and 8-bit views; packing it under qemu
# takes over 10 minutes, so E2E_PACKER=path/to/host/edge-run packs it natively first (the
# cache key does not depend on the architecture).
#
# The edge-run CLI integration tests (tests/cli_*.rs) spawn the binary themselves, which needs
# binfmt_misc to run aarch64 executables; this script stands in for them under plain qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:?usage: targets/aarch64-e2e.sh path/to/aarch64/edge-run}
MODELS=${EDGE_MODELS_DIR:-../shared/models}
DATA=${EDGE_DATA_DIR:-../shared/data}
export QEMU_CPU=${QEMU_CPU:-max}
export EDGE_RUN_CACHE=${EDGE_RUN_CACHE:-target/aarch64/e2e-cache}
mkdir -p "$EDGE_RUN_CACHE"
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)

# The JSON member NAME (a number, a string or an array of numbers) of edge-run's --json line.
field() {
  grep -o '"'"$1"'":\("\([^"\\]\|\\.\)*"\|\[[^]]*\]\|[^,}[]*\)'
}

# `edge-run ARGS --json` under qemu with the detected table, then with the reference; fails
# unless the member NAME of the two outputs is the same (the last one of that name: the
# top-level "tokens" array follows the "tokens" counts of "decode" and "prefill"). stderr goes
# to $log.
log=$EDGE_RUN_CACHE/e2e.log
: > "$log"
same() {
  local name=$1
  shift
  local simd ref
  simd=$(env -u EDGE_RUN_KERNELS "${qemu[@]}" "$BIN" "$@" --json 2>>"$log" | field "$name" | tail -1)
  ref=$(EDGE_RUN_KERNELS=scalar "${qemu[@]}" "$BIN" "$@" --json 2>>"$log" | field "$name" | tail -1)
  if [ -z "$simd" ] || [ "$simd" != "$ref" ]; then
    printf 'MISMATCH: edge-run %s\n  detected table: %s\n  scalar:         %s\n' "$*" "$simd" "$ref" >&2
    tail -5 "$log" >&2
    exit 1
  fi
  printf '  ok  %-58.58s %.60s\n' "${*: -8}" "$simd"
}

echo "aarch64 end-to-end under qemu (QEMU_CPU=$QEMU_CPU): detected kernel table vs scalar reference"
stories=(-m "$MODELS/llama2c/stories260K.bin" --pack-encoding nested8 --group-size 64 -t 2)
ids=$EDGE_RUN_CACHE/stories-ids.txt
"${qemu[@]}" "$BIN" "${stories[@]}" --prompt-ids 1 --temp 0 -n 200 --ignore-eos --json | grep -o '"tokens":\[[^]]*\]' | sed 's/^"tokens"://' > "$ids"
for bits in 8 4 3 2; do
  same tokens "${stories[@]}" --bits "$bits" --prompt-ids 1,461,401,378 --temp 0 -n 40
  same ppl eval "${stories[@]}" --bits "$bits" --token-ids -d "$ids" -c 64 -b 32
done

if [ "${E2E_SMOLLM:-0}" = 1 ]; then
  smol=(-m "$MODELS/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf" --pack-encoding nested8 -t 2)
  if [ -n "${E2E_PACKER:-}" ]; then
    "$E2E_PACKER" "${smol[@]}" -p "Hi" -n 1 --temp 0 >/dev/null 2>>"$log"
  fi
  for bits in 8 4; do
    same text "${smol[@]}" --bits "$bits" -p "The capital of France is" --temp 0 -n 8
    same ppl eval "${smol[@]}" --bits "$bits" -d "$DATA/wikitext-2-raw/wiki.test.raw" -c 64 --chunks 1
  done
fi
echo "aarch64 end-to-end: ok"
