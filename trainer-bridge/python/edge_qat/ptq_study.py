"""Post-training variants of the nested format, measured per view before any of them changes it:
smaller groups whose parameters are coded against a super-block scale (so that they cost no more
bytes), and a per-tensor, per-view refinement of the reconstruction. Every variant keeps the
nesting: the codes are one set of 8-bit codes, a k-bit view is their top k bits.

    python -m edge_qat.ptq_study --base MODEL --text FILE|teacher --windows 20 --ctx 512 \\
        --variants g64:f16,g64:f16+affine,g32:sb6,g32:sb6+affine

A variant is `gGROUP:PARAMS[+REFINE]`:
- PARAMS `f16`: the format's min/max group parameters (scale and minimum in f16);
  `sbB`: scale and minimum as B-bit codes under an f16 pair per super-block of 256 weights
  (as llama.cpp's K-quants), the minimum rounded down and the scale up so that no code clips.
- REFINE `affine`: view k reconstructs bucket b as `min + scale * (alpha_k + beta_k * b)`, one
  (alpha, beta) per tensor and view fitted by least squares to the 8-bit codes the bucket holds
  (weighted by scale^2: the error in weight units). The format's reconstruction is the bucket
  centre (alpha = (2^(8-k) - 1) / 2, beta = 2^(8-k)); any affine one keeps the kernels' integer
  sums, since the product stays linear in the codes. `lut`: each bucket's own mean code
  (2^k values per tensor and view): not linear in the codes, so only a bound on what a
  reconstruction can gain.

Bits per weight at view k: k + the parameters' bits per weight (f16: 32 / group; sbB:
2B / group + 32 / 256). KL is mean KL(float || view) per token, as `edge_qat.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import contract
from .evaluate import eval_windows
from .models import load_model

SUPER = 256


def minmax(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo = contract.grouped(w, group, float("inf")).amin(dim=-1)
    hi = contract.grouped(w, group, float("-inf")).amax(dim=-1)
    return lo, hi


def f16_up(x: torch.Tensor) -> torch.Tensor:
    """The least f16 value >= x (f16 rounding may go down, by far more than 2^-11 where the value
    is subnormal in f16)."""
    h = x.numpy().astype(np.float16)
    h = np.where(h.astype(np.float32) < x.numpy(), np.nextafter(h, np.float16(np.inf)), h)
    return torch.from_numpy(h.astype(np.float32))


def superblock_params(w: torch.Tensor, group: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, min) [rows, groups] of B-bit codes under an f16 (d, dmin) per super-block."""
    lo, hi = minmax(w, group)
    rows, groups = lo.shape
    per = max(1, SUPER // group)
    pad = (-groups) % per
    lo_p = F.pad(lo, (0, pad)).reshape(rows, -1, per)
    hi_p = F.pad(hi, (0, pad)).reshape(rows, -1, per)
    top_m = (1 << (bits - 1)) - 1
    dm = contract.f16_round(lo_p.abs().amax(-1, keepdim=True) / top_m).clamp_min(1e-8)
    mq = torch.floor(lo_p / dm).clamp(-top_m - 1, top_m) * dm
    need = (hi_p - mq) / 255.0
    top_s = (1 << bits) - 1
    d = f16_up(need.amax(-1, keepdim=True) / top_s).clamp_min(1e-10)
    sq = torch.ceil(need / d).clamp(1, top_s) * d
    return sq.reshape(rows, -1)[:, :groups], mq.reshape(rows, -1)[:, :groups]


def params_bpw(params: str, group: int) -> float:
    if params == "f16":
        return 32 / group
    b = int(params[2:])
    return 2 * b / group + 32 / SUPER


def views_of(w: torch.Tensor, group: int, params: str, refine: str | None) -> dict[int, torch.Tensor]:
    """Every view's reconstruction [rows, cols] of one matrix under a variant."""
    rows, cols = w.shape
    w = w.detach().float()
    if params == "f16":
        scale, mn = contract.init_params(w, group)
    else:
        scale, mn = superblock_params(w, group, int(params[2:]))
    q = contract.codes(w, scale, mn, group)
    p = q.shape[1]
    real = torch.zeros(rows, p, dtype=torch.bool)
    real[:, :cols] = True
    s_el = scale.repeat_interleave(group, dim=1)
    m_el = mn.repeat_interleave(group, dim=1)
    qf = q.float()
    out = {}
    for k in contract.VIEWS:
        drop = 8 - k
        b = (q >> drop).float()
        if refine is None or k == 8:
            rec = contract.reconstruct(q, scale, mn, group, k)
        else:
            wt = (s_el**2) * real
            if refine == "affine":
                sw, sb, sbb = wt.sum(), (wt * b).sum(), (wt * b * b).sum()
                sq, sqb = (wt * qf).sum(), (wt * qf * b).sum()
                det = sw * sbb - sb * sb
                if det.abs() < 1e-30:
                    alpha, beta = ((1 << drop) - 1) * 0.5, float(1 << drop)
                else:
                    alpha = (sq * sbb - sb * sqb) / det
                    beta = (sw * sqb - sb * sq) / det
                code = alpha + beta * b
            else:
                nb = 1 << k
                idx = (q >> drop).long().reshape(-1)
                num = torch.zeros(nb).index_add_(0, idx, (wt * qf).reshape(-1))
                den = torch.zeros(nb).index_add_(0, idx, wt.reshape(-1))
                centre = torch.arange(nb).float() * (1 << drop) + ((1 << drop) - 1) * 0.5
                lut = torch.where(den > 0, num / den.clamp_min(1e-30), centre)
                code = lut[idx].reshape(rows, p)
            rec = m_el + s_el * code
        out[k] = rec[:, :cols]
    return out


@torch.no_grad()
def run(base, windows: torch.Tensor, variants: list[str]) -> dict:
    names = [n for n, p in base.named_parameters() if p.ndim == 2]
    original = {n: p.detach().clone() for n, p in base.named_parameters() if n in names}
    params = dict(base.named_parameters())
    teacher = [F.log_softmax(base(x[None]).logits.float(), -1)[0] for x in windows]
    n_tok = windows.numel()

    def metrics() -> dict:
        kl, nll = 0.0, 0.0
        for x, lb in zip(windows, teacher):
            lm = F.log_softmax(base(x[None]).logits.float(), -1)[0]
            kl += (lb.exp() * (lb - lm)).sum().item()
            nll -= lm[:-1].gather(1, x[1:, None]).sum().item()
        return {"kl": kl / n_tok, "ppl": math.exp(nll / (n_tok - len(windows)))}

    float_ppl = math.exp(-sum(lb[:-1].gather(1, x[1:, None]).sum().item() for x, lb in zip(windows, teacher)) / (n_tok - len(windows)))
    result = {"float_ppl": float_ppl, "variants": {}}
    for v in variants:
        t0 = time.time()
        g, rest = v.split(":")
        group = int(g[1:])
        params_kind, _, refine = rest.partition("+")
        recs = {n: views_of(original[n], group, params_kind, refine or None) for n in names}
        per_view = {}
        for k in contract.VIEWS:
            for n in names:
                params[n].copy_(recs[n][k])
            per_view[k] = metrics() | {"bpw": k + params_bpw(params_kind, group)}
        result["variants"][v] = per_view
        print(f"{v}: " + ", ".join(f"{k}-bit KL {m['kl']:.4f}" for k, m in per_view.items()) + f" ({time.time() - t0:.0f} s)", flush=True)
    for n in names:
        params[n].copy_(original[n])
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.ptq_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the float model (HF folder)")
    ap.add_argument("--text", required=True, help="a text file, or 'teacher': sequences sampled from the float model")
    ap.add_argument("--tokenizer", help="for a text file: HF folder or sentencepiece .model (default --base)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--variants", default="g64:f16,g64:f16+affine,g64:f16+lut,g32:sb6,g32:sb6+affine")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    base = load_model(a.base)
    windows = eval_windows(base, a.text, a.tokenizer or a.base, a.windows, a.ctx, a.seed)
    res = run(base, windows, a.variants.split(","))
    res |= {"base": a.base, "text": a.text, "windows": a.windows, "ctx": a.ctx, "seed": a.seed}
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
