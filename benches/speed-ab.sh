#!/usr/bin/env bash
# Two builds of edge-run, back to back: `edge-run bench` of the q8 pack (views 8, 4, 3, 2) and the f16
# pack with each binary in turn, ROUNDS rounds; prints new/old tokens/s per (view, test), the median
# and range over rounds (docs/RESULTS.md). PACKS holds q8.edge and f16.edge (benches/capture-outputs.sh).
# With ARGS, each round runs `bench $ARGS` once per binary instead (e.g. a 1.5B model's decode:
# ARGS="-m qwen15-q8.edge --bits 8,4,3,2 -p 0 -n 32 -r 3 -t 2"; PACKS is then not needed).
#
#   OLD=<edge-run> NEW=<edge-run> OUT=<folder> PACKS=<folder> [ROUNDS=3] benches/speed-ab.sh
#   OLD=<edge-run> NEW=<edge-run> OUT=<folder> ARGS="<bench args>" [ROUNDS=3] benches/speed-ab.sh
set -u
OLD=${OLD:?}; NEW=${NEW:?}; OUT=${OUT:?}; ROUNDS=${ROUNDS:-3}; ARGS=${ARGS:-}
[ -n "$ARGS" ] || PACKS=${PACKS:?set PACKS (or ARGS)}
mkdir -p $OUT
for r in $(seq 1 $ROUNDS); do
  for who in old new; do
    bin=$OLD; [ $who = new ] && bin=$NEW
    echo "round $r $who load $(cut -d' ' -f1 /proc/loadavg)" >&2
    if [ -n "$ARGS" ]; then
      $bin bench $ARGS --json > $OUT/$who-$r.json 2>/dev/null
      continue
    fi
    $bin bench -m $PACKS/q8.edge --bits 8,4,3,2 -t 2 -p 512 -n 128 -r 3 --json > $OUT/$who-$r.json 2>/dev/null
    $bin bench -m $PACKS/f16.edge -t 2 -p 512 -n 128 -r 3 --json > $OUT/$who-f16-$r.json 2>/dev/null
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json,sys,statistics as st
out,R=sys.argv[1],int(sys.argv[2])
def rows(path):
    d=json.load(open(path)); res={}
    for x in d.get('results',d if isinstance(d,list) else []):
        key=(x['view'], x['test'])
        res[key]=x['tokens_per_second']['median']
    return res
ratios={}
for r in range(1,R+1):
    for f in ('','f16-'):
        try: o=rows(f"{out}/old-{f}{r}.json"); n=rows(f"{out}/new-{f}{r}.json")
        except FileNotFoundError: continue  # ARGS: no f16 runs
        for k in o:
            if k in n and o[k]: ratios.setdefault(k,[]).append(n[k]/o[k])
for k,v in sorted(ratios.items(), key=str):
    print(k, 'new/old median %.3f' % st.median(v), 'range %.3f-%.3f' % (min(v),max(v)))
PY
