"""Refit the low bits of an export's codes to the float weights, keeping its top bits.

Randomized-precision QAT trades the high views for the low ones: the latent weights move to
suit the 2-4-bit views and the 8-bit view follows them away from the float model. The views
nest, so the two can be separated after training: the k-bit view reads only the top k bits of
each code, and the bits below them can be set, without touching any view of k bits or fewer, to
the code nearest the float weight inside the bucket those top bits name (the packer's own
round-half-even code, clamped to the bucket). The group parameters and every view up to --keep
bits stay exactly as trained; the views above it return towards the float model's.

    python -m edge_qat.refit --export RUN/export --base MODEL --keep 4 --out RUN/refit4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import contract
from .export import stored_params
from .models import load_model


def refit_codes(q: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int, keep: int) -> torch.Tensor:
    """Codes q (uint8 [rows, padded_cols]) with their top `keep` bits kept and the rest set to
    the code of w [rows, cols] under (scale, min), clamped into the bucket the top bits name."""
    if keep not in range(1, 9):
        raise ValueError(f"keep {keep} is not 1..8")
    nearest = contract.codes(w, scale, mn, group).to(torch.int32)
    lo, hi = contract.top_bucket(q, keep)
    out = torch.minimum(torch.maximum(nearest, lo), hi)
    out[:, w.shape[1]:] = q[:, w.shape[1]:].to(torch.int32)  # padding as stored
    return out.to(torch.uint8)


def refit(export: str | Path, base: str | Path, keep: int, out: str | Path) -> dict:
    """Write `out`, the export with its codes refitted (see the module doc); returns per-tensor
    counts of the codes changed."""
    export, out = Path(export), Path(out)
    man = json.loads((export / "edge-qat.json").read_text())
    if man.get("format") != "edge-qat" or man.get("version") != 1:
        raise SystemExit(f"edge-qat: error: {export} is not an edge-qat version 1 export")
    st = load_file(export / "model.safetensors")
    float_w = dict(load_model(str(base)).named_parameters())
    g = man["group_size"]
    changed = {}
    for name in man["quantized"]:
        if name not in float_w or tuple(float_w[name].shape) != (st[name + ".qcodes"].shape[0], man["cols"][name]):
            raise SystemExit(f"edge-qat: error: --base {base} has no {name} of the export's shape: another model?")
        s, m, _ = stored_params(st, name, man)
        q = st[name + ".qcodes"]
        new = refit_codes(q, float_w[name].detach().float(), s, m, g, keep)
        changed[name] = int((new != q).sum())
        st[name + ".qcodes"] = new.contiguous()
    man = dict(man, train=dict(man.get("train", {}), refit={"keep": keep, "from": str(export)}))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    save_file(st, tmp / "model.safetensors")
    (tmp / "edge-qat.json").write_text(json.dumps(man, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return changed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.refit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", required=True, help="an edge-qat export (a training run's OUT/export)")
    ap.add_argument("--base", required=True, help="the float model it was trained against (HF folder)")
    ap.add_argument("--keep", type=int, default=4, help="top bits kept as trained: views of this many bits or fewer are unchanged")
    ap.add_argument("--out", required=True, help="the refitted export (a new folder; written through a temporary one)")
    a = ap.parse_args(argv)
    if not 1 <= a.keep <= 7:
        raise SystemExit(f"edge-qat: error: --keep {a.keep} is not 1..7 (8 keeps every bit: nothing to refit)")
    changed = refit(a.export, a.base, a.keep, a.out)
    total = sum(changed.values())
    print(f"edge-qat: refitted {a.out}: {total} codes changed in {len(changed)} tensors, top {a.keep} bits kept", file=sys.stderr)


if __name__ == "__main__":
    main()
