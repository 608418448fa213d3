#!/usr/bin/env python3
"""Ratios of edge-run to llama.cpp from benches/llama-compare.sh's rounds.

    python3 benches/llama_ratios.py OUT_DIR FIRST_ROUND LAST_ROUND [--json]

For each pair (our view, llama.cpp file) and test (pp512, tg128): the ratio ours / theirs in
each round, and the median over rounds FIRST..LAST of those per-round ratios, next to the
median tokens/s of each side. Prints a Markdown table (or JSON with --json).
"""
import json
import statistics
import sys
from pathlib import Path

PAIRS = [("8-bit", "Q8_0"), ("4-bit", "Q4_0"), ("3-bit", "Q3_K_M"), ("2-bit", "Q2_K")]
TESTS = [("pp512", 512, 0), ("tg128", 0, 128)]


def ours(round_dir: Path) -> dict:
    doc = json.loads((round_dir / "edge.json").read_text())
    return {(r["view"], r["test"]): r["tokens_per_second"]["median"] for r in doc["results"]}


def theirs(round_dir: Path, qtype: str) -> dict:
    rows = json.loads((round_dir / f"llama-{qtype}.json").read_text())
    out = {}
    for row in rows:
        for name, p, n in TESTS:
            if row["n_prompt"] == p and row["n_gen"] == n:
                out[name] = row["avg_ts"]
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--json"]
    if len(args) != 3:
        sys.exit(__doc__)
    out, first, last = Path(args[0]), int(args[1]), int(args[2])
    rounds = [out / f"round-{r}" for r in range(first, last + 1)]
    table = []
    for view, qtype in PAIRS:
        row = {"ours": view, "llama.cpp": qtype}
        for test, _, _ in TESTS:
            a = [ours(d)[(view, test)] for d in rounds]
            b = [theirs(d, qtype)[test] for d in rounds]
            row[test] = {
                "ours": statistics.median(a),
                "theirs": statistics.median(b),
                "ratio_per_round": [x / y for x, y in zip(a, b)],
                "ratio": statistics.median(x / y for x, y in zip(a, b)),
            }
        table.append(row)
    if "--json" in sys.argv:
        print(json.dumps(table, indent=1))
        return
    print("| ours | llama.cpp | pp512 ours / theirs | ratio (per round) | tg128 ours / theirs | ratio (per round) |")
    print("|---|---|---|---:|---|---:|")
    for row in table:
        cells = []
        for test, _, _ in TESTS:
            t = row[test]
            per = ", ".join(f"{r:.2f}" for r in t["ratio_per_round"])
            cells.append(f"{t['ours']:.1f} / {t['theirs']:.1f} | **{t['ratio']:.2f}** ({per})")
        print(f"| {row['ours']} | {row['llama.cpp']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
