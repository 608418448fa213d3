#!/usr/bin/env bash
# Issue 15's timings: how long planning a --budget takes (budget.plan_ms over several runs) and how
# long the memory controller keeps a token waiting (each move's longest pause before a token,
# against the decode time of a token), under a simulated cgroup limit squeezed while generating.
#
#   benches/budget-timings.sh MODEL.edge [RUNS]
#
# MODEL must have a sensitivity profile (edge-pack -e q8 --calibrate-self). EDGE_RUN names the
# binary (default target/release/edge-run). The squeeze runs RUNS times; prints each run's moves,
# then the medians over the runs of the pauses of the moves that change the token embedding's
# view (its largest unit) and of all moves, and the decode time of a token. Note the load.
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
for i in $(seq "$RUNS"); do
  limit $((4 << 30))
  EDGE_RUN_MEM_LIMIT="$LIM" "$E" -m "$MODEL" -p "Once upon a time" -n 3000 --temp 0 --ignore-eos --json \
    > "$TMP/squeeze-$i.json" 2> "$TMP/squeeze-$i.err" &
  PID=$!
  sleep 2; limit $((120 << 20))
  sleep 2; limit $((100 << 20))
  sleep 2; limit $((4 << 30))
  wait "$PID"
done
python3 - "$TMP" "$RUNS" <<'PY'
import json, sys, statistics
d, n = sys.argv[1], int(sys.argv[2])
med = statistics.median
embd, pauses, toks = [], [], []
for i in range(1, n + 1):
    j = json.load(open(f"{d}/squeeze-{i}.json"))
    mc = j["memory_control"]
    tok = j["decode"]["seconds"] / max(j["decode"]["tokens"], 1)
    toks.append(tok)
    print(f"run {i}: decode {1e3 * tok:.2f} ms a token on average (including the moves)")
    ladder = mc["ladder"]
    for e in mc["events"]:
        # Old builds report the longest rung, new ones the longest pause and the preparation.
        pause = e.get("pause_seconds", e.get("longest_rung_seconds"))
        prep = e.get("prepare_seconds")
        swap = e.get("swap_seconds")
        lo, hi = sorted((e["from_rung"], e["to_rung"]))
        # The move changes the embedding's view if it passes one of its rungs: a weight rung
        # freeing more than an eighth of the most any frees (SmolLM2's embedding, 28M weights,
        # frees 3.5-7 MB a view; a layer's largest unit, 0.9M, 0.1-0.2 MB).
        steps = [ladder[k]["predicted_bytes"] - ladder[k + 1]["predicted_bytes"]
                 if ladder[k]["kv"] == ladder[k + 1]["kv"] and ladder[k]["window"] == ladder[k + 1]["window"] else 0
                 for k in range(len(ladder) - 1)]
        has_embd = any(steps[k] > max(steps) / 8 for k in range(lo, hi))
        pauses.append(pause)
        if has_embd:
            embd.append(pause)
        extra = "" if prep is None else f" (making views {1e3 * prep:.1f} ms, swaps {1e3 * swap:.1f} ms at most)"
        print(f"  token {e['token']:>5} {e['cause']:<10} {abs(e['to_rung'] - e['from_rung']):>3} rungs over {e['tokens']:>3} tokens: "
              f"{1e3 * e['step_seconds']:7.1f} ms in all{extra}, {1e3 * pause:6.1f} ms at most before a token"
              f"{' [embedding]' if has_embd else ''}; {', '.join(e['actions'])}")
print(f"medians over {n} runs: decode {1e3 * med(toks):.2f} ms a token; longest pause of a move {1e3 * med(pauses):.1f} ms "
      f"(max {1e3 * max(pauses):.1f}); of a move changing the embedding {1e3 * med(embd):.1f} ms (max {1e3 * max(embd):.1f}, {len(embd)} moves)")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
