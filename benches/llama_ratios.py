#!/usr/bin/env python3
"""Ratios of edge-run to llama.cpp from benches/llama-compare.sh's rounds.

    python3 benches/llama_ratios.py OUT_DIR FIRST_ROUND LAST_ROUND [--json]

Reads OUT_DIR/round-N/ for N in FIRST..LAST: edge.json (`edge-run bench --json`, our uniform
views), plan-TYPE.json (`edge-run bench --weight-budget <TYPE's size> --json`, optional) and
llama-TYPE.json (`llama-bench -o json`). Every ratio is ours / theirs within one round; a
table cell gives the median over the rounds of those per-round ratios.

Two Markdown tables (or one JSON document with --json: {"uniform": [...], "plans": [...]}):
1. Uniform views against the llama.cpp file of the nearest width (8-bit vs Q8_0, 4 vs Q4_0,
   3 vs Q3_K_M, 2 vs Q2_K; 6 and 5 bits ours only), with the median tokens/s of each side and
   every round's ratio, for pp512 and tg128; then, where OUT_DIR has membw-before.txt or
   membw-after.txt and gguf-TYPE.json (llama-compare.sh writes them), the bytes a decoded token
   reads on each side and each side's share of the decode roofline (median decode tokens/s x
   those bytes / the measured bandwidth).
2. For each llama.cpp file, the plan the sensitivity profile picks for that file's size
   (llama-bench's `model_size`) against that file: pp512 and tg128 ratios as median (min-max
   over the rounds), the file's bytes, the plan's weight bytes and the bytes one decoded token
   reads (decode_bytes). Left out, with a note, when the rounds have no plan files.
"""
import json
import os
import statistics
import sys
from pathlib import Path

# (our view, llama.cpp file or None): the uniform table's rows.
PAIRS = [("8-bit", "Q8_0"), ("6-bit", None), ("5-bit", None), ("4-bit", "Q4_0"), ("3-bit", "Q3_K_M"), ("2-bit", "Q2_K")]
# llama.cpp files the plans are measured against, largest first.
PLAN_TYPES = ["Q8_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
# The prompt and generation lengths llama-compare.sh ran (its PROMPT and GEN).
_PP, _TG = int(os.environ.get("PROMPT", "512")), int(os.environ.get("GEN", "128"))
TESTS = [(f"pp{_PP}", _PP, 0), (f"tg{_TG}", 0, _TG)]


def ours(path: Path) -> dict:
    """An `edge-run bench --json` document's results by (view, test)."""
    doc = json.loads(path.read_text())
    return {(r["view"], r["test"]): r for r in doc["results"]}


def theirs(round_dir: Path, qtype: str) -> dict:
    """test -> llama-bench's row (avg_ts, model_size, ...)."""
    rows = json.loads((round_dir / f"llama-{qtype}.json").read_text())
    out = {}
    for row in rows:
        for name, p, n in TESTS:
            if row["n_prompt"] == p and row["n_gen"] == n:
                out[name] = row
    return out


def tps(row: dict) -> float:
    return row["tokens_per_second"]["median"]


def bandwidth(out: Path):
    """Mean of the membw runs' medians (bytes/s) in OUT_DIR, or None."""
    vals = []
    for name in ("membw-before.txt", "membw-after.txt"):
        f = out / name
        if f.is_file():
            for word, nxt in zip(f.read_text().split(), f.read_text().split()[1:]):
                if nxt == "GB/s" and word.replace(".", "", 1).isdigit():
                    vals.append(float(word) * 1e9)
                    break
    return sum(vals) / len(vals) if vals else None


def their_decode_bytes(out: Path, qtype: str):
    f = out / f"gguf-{qtype}.json"
    return json.loads(f.read_text()).get("decode_bytes") if f.is_file() else None


def uniform_table(rounds: list) -> list:
    table = []
    docs = [ours(d / "edge.json") for d in rounds]
    bw = bandwidth(rounds[0].parent)
    for view, qtype in PAIRS:
        if any((view, test) not in o for o in docs for test, _, _ in TESTS):
            continue  # rounds of an older script, without the 6- and 5-bit views
        if qtype is not None and not all((d / f"llama-{qtype}.json").is_file() for d in rounds):
            qtype = None  # that file was left out of TYPES: ours alone
        row = {"ours": view, "llama.cpp": qtype}
        for test, _, _ in TESTS:
            a = [tps(o[(view, test)]) for o in docs]
            cell = {"ours": statistics.median(a)}
            if qtype is not None:
                b = [theirs(d, qtype)[test]["avg_ts"] for d in rounds]
                per = [x / y for x, y in zip(a, b)]
                cell.update(theirs=statistics.median(b), ratio_per_round=per, ratio=statistics.median(per))
            row[test] = cell
        tg = TESTS[1][0]
        mine = docs[0][(view, tg)].get("read_bytes_per_token")
        theirs_b = their_decode_bytes(rounds[0].parent, qtype) if qtype else None
        if bw and mine:
            row["roofline"] = {"bandwidth": bw, "ours_bytes": mine, "ours_share": row[tg]["ours"] * mine / bw}
            if theirs_b and "theirs" in row[tg]:
                row["roofline"].update(theirs_bytes=theirs_b, theirs_share=row[tg]["theirs"] * theirs_b / bw)
        table.append(row)
    return table


def plan_table(rounds: list) -> list:
    table = []
    for qtype in PLAN_TYPES:
        if not all((d / f"plan-{qtype}.json").is_file() for d in rounds):
            continue
        docs = [list(ours(d / f"plan-{qtype}.json").values()) for d in rounds]
        first = docs[0][0]
        row = {
            "llama.cpp": qtype,
            "file_bytes": theirs(rounds[0], qtype)[TESTS[0][0]]["model_size"],
            "budget": first["plan"]["weight_budget"],
            "view": first["view"],
            "weight_bytes": first["weight_bytes"],
            "decode_bytes": first["decode_bytes"],
            "bits_per_weight": first["bits_per_weight"],
            "views": first["plan"]["views"],
        }
        for test, _, _ in TESTS:
            a = [tps(next(r for r in rs if r["test"] == test)) for rs in docs]
            b = [theirs(d, qtype)[test]["avg_ts"] for d in rounds]
            per = [x / y for x, y in zip(a, b)]
            row[test] = {
                "ours": statistics.median(a),
                "theirs": statistics.median(b),
                "ratio_per_round": per,
                "ratio": statistics.median(per),
                "ratio_min": min(per),
                "ratio_max": max(per),
            }
        table.append(row)
    return table


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def print_uniform(table: list) -> None:
    (pp, _, _), (tg, _, _) = TESTS
    print(f"| ours | llama.cpp | {pp} ours / theirs | ratio (per round) | {tg} ours / theirs | ratio (per round) |")
    print("|---|---|---|---:|---|---:|")
    for row in table:
        cells = []
        for test, _, _ in TESTS:
            t = row[test]
            if "ratio" not in t:
                cells.append(f"{t['ours']:.1f} / - | -")
                continue
            per = ", ".join(f"{r:.2f}" for r in t["ratio_per_round"])
            cells.append(f"{t['ours']:.1f} / {t['theirs']:.1f} | **{t['ratio']:.2f}** ({per})")
        print(f"| {row['ours']} | {row['llama.cpp'] or '-'} | " + " | ".join(cells) + " |")
    roof = [r for r in table if "roofline" in r]
    if roof:
        print()
        print(f"Decode roofline at {roof[0]['roofline']['bandwidth'] / 1e9:.2f} GB/s (membw): bytes a decoded token reads and share, ours / theirs")
        print()
        print("| ours | llama.cpp | read/token ours / theirs | share ours / theirs | byte ratio |")
        print("|---|---|---|---:|---:|")
        for row in roof:
            f = row["roofline"]
            if "theirs_bytes" in f:
                print(f"| {row['ours']} | {row['llama.cpp']} | {mb(f['ours_bytes'])} / {mb(f['theirs_bytes'])} "
                      f"| {100 * f['ours_share']:.0f}% / {100 * f['theirs_share']:.0f}% | {f['theirs_bytes'] / f['ours_bytes']:.2f} |")
            else:
                print(f"| {row['ours']} | - | {mb(f['ours_bytes'])} / - | {100 * f['ours_share']:.0f}% / - | - |")


def print_plans(table: list) -> None:
    (pp, _, _), (tg, _, _) = TESTS
    print("| llama.cpp file | its bytes | our plan's weight bytes | read per token | bits/w "
          f"| {pp} ours / theirs | ratio (range) | {tg} ours / theirs | ratio (range) |")
    print("|---|---:|---:|---:|---:|---|---:|---|---:|")
    for row in table:
        cells = []
        for test, _, _ in TESTS:
            t = row[test]
            cells.append(f"{t['ours']:.1f} / {t['theirs']:.1f} | **{t['ratio']:.2f}** ({t['ratio_min']:.2f}-{t['ratio_max']:.2f})")
        print(f"| {row['llama.cpp']} | {mb(row['file_bytes'])} | {mb(row['weight_bytes'])} | {mb(row['decode_bytes'])} "
              f"| {row['bits_per_weight']:.2f} | " + " | ".join(cells) + " |")


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--json"]
    if len(args) != 3:
        sys.exit(__doc__)
    out, first, last = Path(args[0]), int(args[1]), int(args[2])
    rounds = [out / f"round-{r}" for r in range(first, last + 1)]
    if not rounds:
        sys.exit(f"no rounds: FIRST_ROUND {first} is after LAST_ROUND {last}")
    uniform = uniform_table(rounds)
    plans = plan_table(rounds)
    if "--json" in sys.argv:
        print(json.dumps({"uniform": uniform, "plans": plans}, indent=1))
        return
    print_uniform(uniform)
    print()
    if plans:
        print(f"Plans at each llama.cpp file's size (ratios: median of rounds {first}..{last}, range over them):")
        print()
        print_plans(plans)
    else:
        print(f"NOTE: no plan rows: rounds {first}..{last} have no plan-TYPE.json (the pack has no sensitivity profile?)")


if __name__ == "__main__":
    main()
