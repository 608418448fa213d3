"""Every view of an export (or of the base model's min/max post-training codes) against the float
model, in PyTorch: mean KL(float || view) per token and perplexity over windows of a text.
A quick look while training; the numbers of record come from `edge-run eval --sweep`.

    python -m edge_qat.evaluate --base MODEL [--export DIR] --text FILE|teacher [--tokenizer T] --windows 20 --ctx 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from . import contract
from .export import export, load_export
from .fakequant import quantize_model
from .models import load_model
from .train import teacher_data, text_data


@torch.no_grad()
def view_metrics(model, base, windows: torch.Tensor) -> dict:
    kl, nll, n = 0.0, 0.0, 0
    for x in windows:
        x = x[None]
        lb = F.log_softmax(base(x).logits.float(), -1)[0]
        lm = F.log_softmax(model(x).logits.float(), -1)[0]
        kl += (lb.exp() * (lb - lm)).sum().item()
        nll -= lm[:-1].gather(1, x[0, 1:, None]).sum().item()
        n += x.shape[1]
    return {"kl": kl / n, "ppl": float(torch.tensor(nll / (n - len(windows))).exp())}


def eval_windows(base, text: str, tokenizer: str, n: int, ctx: int, seed: int) -> torch.Tensor:
    """[n, ctx] evaluation token ids: sampled from the float model `base` (`text` = 'teacher',
    with `seed`), or the first n windows of a text file tokenized with `tokenizer`."""
    if text == "teacher":
        bos = base.config.bos_token_id if base.config.bos_token_id is not None else 1
        return teacher_data(base, n, ctx, bos, seed, "cpu")
    return text_data(Path(text), tokenizer, ctx)[:n]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the float model (HF folder)")
    ap.add_argument("--export", help="an edge-qat export; without it, the base model's min/max codes (PTQ)")
    ap.add_argument("--group", type=int, help="group size of the PTQ codes [default: 64; 32 with --params super]")
    ap.add_argument("--params", choices=["f16", "super"], default="f16", help="group parameter layout of the PTQ codes")
    ap.add_argument("--text", required=True, help="a text file, or 'teacher': sequences sampled from the float model (seed --seed, not the training data's)")
    ap.add_argument("--tokenizer", help="for a text file: HF folder or sentencepiece .model (default --base)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=128)
    a = ap.parse_args(argv)
    if a.group is None:
        a.group = 32 if a.params == "super" else 64
    base = load_model(a.base)
    windows = eval_windows(base, a.text, a.tokenizer or a.base, a.windows, a.ctx, a.seed)
    folder = a.export
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        m = load_model(a.base)
        folder = export(m, quantize_model(m, a.group, layout=a.params), a.base, Path(tmp.name) / "ptq", a.group, {"ptq": "minmax"})
    out = {"float": view_metrics(base, base, windows)}
    for k in reversed(contract.VIEWS):
        out[str(k)] = view_metrics(load_export(folder, k), base, windows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
