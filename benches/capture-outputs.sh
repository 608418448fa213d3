#!/usr/bin/env bash
# Every output a change must not alter, captured with one build: greedy continuations (f16 pack;
# q8 pack at every view, with the detected, scalar and avx2 tables; profile plans; stories260K) and
# eval perplexity/KL, as JSON without timings. Compare two captures with cmp (docs/RESULTS.md).
#
#   BIN=<folder with edge-run, edge-pack> OUTD=<out folder> [PACKS=<folder>] benches/capture-outputs.sh
set -u
BIN=${BIN:?}; OUTD=${OUTD:?}
SHARED="$(cd "$(dirname "$0")/.." && pwd)/../shared"
mkdir -p "$OUTD"
M=$SHARED/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf
W=$SHARED/data/wikitext-2-raw/wiki.test.raw
P=${PACKS:-$OUTD/../packs}; mkdir -p $P
[ -f $P/f16.edge ] || $BIN/edge-pack $M -o $P/f16.edge -q
[ -f $P/q8.edge ] || $BIN/edge-pack $M -o $P/q8.edge --encoding q8 -q
[ -f $P/stories.edge ] || $BIN/edge-pack $SHARED/models/stories260K-hf -o $P/stories.edge --allow-no-tokenizer --encoding q8 -q
[ -f $P/q8cal.edge ] || $BIN/edge-pack $M -o $P/q8cal.edge --calibrate-self -q
gen() { # name model args...
  local name=$1 model=$2; shift 2
  $BIN/edge-run -m $model --temp 0 -n 48 --json "$@" 2>$OUTD/$name.err | python3 -c 'import json,sys; d=json.load(sys.stdin); [d.pop(k,None) for k in ("prefill","decode","load_seconds","peak_rss_bytes","sampler","checkpoint","model")]; print(json.dumps(d, sort_keys=True))' > $OUTD/$name.gen 2>&1
}
gen f16_once $P/f16.edge -p "Once upon a time"
gen f16_chat $P/f16.edge --chat -p "What is the capital of France?"
for b in 8 6 5 4 3 2; do
  gen q8_b${b}_once $P/q8.edge --bits $b -p "Once upon a time"
  gen q8_b${b}_chat $P/q8.edge --bits $b --chat -p "What is the capital of France?"
  EDGE_RUN_KERNELS=scalar gen q8_b${b}_once_scalar $P/q8.edge --bits $b -p "Once upon a time"
  EDGE_RUN_KERNELS=avx2 gen q8_b${b}_once_avx2 $P/q8.edge --bits $b -p "Once upon a time"
done
gen cal_tb35 $P/q8cal.edge --target-bits 3.5 -p "Once upon a time"
gen cal_wb80 $P/q8cal.edge --weight-budget 80MB -p "Once upon a time"
gen stories $P/stories.edge --prompt-ids 1
gen stories_b4 $P/stories.edge --prompt-ids 1 --bits 4
ev() { local name=$1 model=$2; shift 2
  $BIN/edge-run eval -m $model --data $W --ctx 512 --chunks 2 --json "$@" 2>$OUTD/$name.everr | python3 -c 'import json,sys; d=json.load(sys.stdin); d.pop("timings",None); [d.pop(k,None) for k in list(d) if "second" in k or "tok_s" in k or "rss" in k or "time" in k]; print(json.dumps(d, sort_keys=True))' > $OUTD/$name.eval 2>&1
}
ev f16 $P/f16.edge
for b in 8 6 5 4 3 2; do ev q8_b$b $P/q8.edge --bits $b; done
ev q8_b4_kl $P/q8.edge --bits 4 --kl-base $P/f16.edge
ev cal_tb35 $P/q8cal.edge --target-bits 3.5
echo done
