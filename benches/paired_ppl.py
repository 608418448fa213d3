#!/usr/bin/env python3
"""Two perplexity runs on the same windows, compared window by window.

    python3 benches/paired_ppl.py A.log B.log

Each log is the output of `edge-run eval` (lines `[k/N] PPL x`) or of `llama-perplexity`
(`[k]x,`), both on the same text, --ctx and --chunks. Both print the running perplexity after
each window, and every window scores the same number of tokens, so window k's mean log-loss is
k·ln(P_k) - (k-1)·ln(P_(k-1)). Prints the perplexity ratio A / B with a 95% interval from the
per-window differences (normal approximation), and in how many windows A is lower. The two
runs share most of their window-to-window spread, so this interval is far narrower than either
run's own standard error.
"""
import math
import re
import statistics
import sys


def running_ppl(path: str) -> list:
    text = open(path, encoding="utf-8", errors="replace").read()
    ours = re.findall(r"\[\d+/\d+\] PPL ([0-9.]+)", text)
    return [float(x) for x in (ours or re.findall(r"\[\d+\]([0-9.]+),", text))]


def window_losses(running: list) -> list:
    out, prev = [], 0.0
    for k, p in enumerate(running, 1):
        total = k * math.log(p)
        out.append(total - prev)
        prev = total
    return out


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: paired_ppl.py A.log B.log (edge-run eval or llama-perplexity output)")
    a, b = (window_losses(running_ppl(p)) for p in sys.argv[1:])
    if not a or len(a) != len(b):
        sys.exit(f"paired_ppl: the logs hold {len(a)} and {len(b)} windows; run both on the same --chunks")
    d = [x - y for x, y in zip(a, b)]
    m = statistics.mean(d)
    half = 1.96 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"{len(d)} windows: A {math.exp(statistics.mean(a)):.4f}, B {math.exp(statistics.mean(b)):.4f}; "
          f"A/B {math.exp(m):.4f} (95% interval {math.exp(m - half):.4f}-{math.exp(m + half):.4f}); "
          f"A lower in {sum(x < 0 for x in d)} of {len(d)}")


if __name__ == "__main__":
    main()
