#!/usr/bin/env bash
# Issue 15's timings: how long planning a --budget takes (budget.plan_ms over several runs) and how
# long the memory controller keeps a token waiting (each move's longest rung, against the decode
# time of a token), under a simulated cgroup limit squeezed while generating.
#
#   benches/budget-timings.sh MODEL.edge [RUNS]
#
# MODEL must have a sensitivity profile (edge-pack -e q8 --calibrate-self). EDGE_RUN names the
# binary (default target/release/edge-run). Prints medians and the worst cases; note the load.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: benches/budget-timings.sh MODEL.edge [RUNS]}
RUNS=${2:-5}
E=${EDGE_RUN:-target/release/edge-run}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

for i in $(seq "$RUNS"); do
  "$E" -m "$MODEL" -p "Once upon a time" -n 1 --temp 0 --budget 200MB --json 2>/dev/null > "$TMP/plan-$i.json"
done
python3 - "$TMP" "$RUNS" <<'PY'
import json, sys, statistics
d, n = sys.argv[1], int(sys.argv[2])
ms = [json.load(open(f"{d}/plan-{i}.json"))["budget"]["plan_ms"] for i in range(1, n + 1)]
print(f"planning --budget 200MB: median {statistics.median(ms):.2f} ms, max {max(ms):.2f} ms over {n} runs (target < 50 ms)")
PY

LIM="$TMP/limit"
# Written to a temporary name and renamed: a reader never sees a half-written limit.
limit() { echo "$1" > "$LIM.tmp" && mv "$LIM.tmp" "$LIM"; }
limit $((4 << 30))
EDGE_RUN_MEM_LIMIT="$LIM" "$E" -m "$MODEL" -p "Once upon a time" -n 3000 --temp 0 --ignore-eos --json \
  > "$TMP/squeeze.json" 2> "$TMP/squeeze.err" &
PID=$!
sleep 2; limit $((120 << 20))
sleep 2; limit $((100 << 20))
sleep 2; limit $((4 << 30))
wait "$PID"
python3 - "$TMP/squeeze.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
tok = j["decode"]["seconds"] / max(j["decode"]["tokens"], 1)
print(f"decode: {1e3 * tok:.2f} ms a token on average (including the moves)")
for e in j["memory_control"]["events"]:
    print(f"  token {e['token']:>5} {e['cause']:<10} {abs(e['to_rung'] - e['from_rung']):>3} rungs over {e['tokens']:>3} tokens: "
          f"{1e3 * e['step_seconds']:7.1f} ms in all, {1e3 * e['longest_rung_seconds']:6.1f} ms at most before a token; {', '.join(e['actions'])}")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
