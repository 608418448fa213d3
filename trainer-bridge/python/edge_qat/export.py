"""Export without re-quantization, and the export's fake-quantized logits.

An export folder (read by `edge-pack`'s edge-qat import; the format is fixed):

    config.json, tokenizer.json, tokenizer_config.json, generation_config.json   copied from the base
    model.safetensors   NAME (F32) for every tensor not quantized; for a quantized tensor
                        NAME.qcodes (U8 [rows, padded_cols]), NAME.qscale and NAME.qmin
                        (F16 [rows, padded_cols / g]) and no NAME. A tied embedding/head is
                        the one tensor model.embed_tokens.weight. With super-block group
                        parameters ("group_params": "super"), NAME.qd and NAME.qdmin (F16
                        [rows, ceil(groups / 8)]), NAME.qs (U8 [rows, groups]) and NAME.qm (I8
                        [rows, groups]) instead of NAME.qscale and NAME.qmin.
    edge-qat.json       {"format": "edge-qat", "version": 1, "group_size": g, "group_params": "f16" | "super",
                         "cols": {NAME: cols}, "quantized": [NAME, ...], "base": "...", "train": {...}}

    python -m edge_qat.export logits --export DIR --view 4 --tokens 1,5,9 --out logits.npy
    python -m edge_qat.export logits --export DIR --view 8,4,2 --dtype f32,f64 --tokens 1,5,9 --out 'l-{view}-{dtype}.npy'
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import contract
from .models import COPIED


PARTS = (".qcodes", ".qscale", ".qmin", ".qd", ".qdmin", ".qs", ".qm")


def export(model: torch.nn.Module, quantizers: dict, base: str | Path, out: str | Path, group: int, train: dict) -> Path:
    """Write the export of a fake-quantized model (its codes and group parameters as trained)."""
    base, out = Path(base), Path(out)
    tensors: dict[str, torch.Tensor] = {}
    cols: dict[str, int] = {}
    for name, p in model.named_parameters():  # a tied head is listed once, as the embedding
        if ".wq." in name:
            continue
        w = p.detach().to("cpu", torch.float32)
        if name in quantizers:
            for suffix, t in quantizers[name].export(w).items():
                tensors[f"{name}.{suffix}"] = t.cpu().contiguous()
            cols[name] = int(w.shape[1])
        else:
            tensors[name] = w.contiguous()
    layouts = {q.layout for q in quantizers.values()}
    if len(layouts) > 1:
        raise ValueError(f"quantizers mix group parameter layouts {sorted(layouts)}; an export has one")
    manifest = {"format": "edge-qat", "version": 1, "group_size": group,
                "group_params": layouts.pop() if layouts else "f16", "cols": cols,
                "quantized": sorted(cols), "base": str(base), "train": train}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in COPIED:
        if (base / f).exists():
            shutil.copyfile(base / f, tmp / f)
    if not (tmp / "config.json").exists():
        model.config.to_json_file(tmp / "config.json")
    save_file(tensors, tmp / "model.safetensors")
    (tmp / "edge-qat.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def stored_params(st: dict, name: str, man: dict) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """Quantized tensor `name`'s group (scale, min), f32 [rows, groups], from an export's tensors
    `st` and manifest `man`; the third item is its super-block parts (d, dmin, s, m: flat, as
    `contract.super_group_params` takes them), or None for f16 pairs."""
    layout = man.get("group_params", "f16")
    if layout == "f16":
        return st[name + ".qscale"].float(), st[name + ".qmin"].float(), None
    if layout != "super":
        raise SystemExit(f"edge-qat: error: group_params {layout!r} is not 'f16' or 'super'")
    rows, gpr = st[name + ".qs"].shape
    parts = (st[name + ".qd"].float().reshape(-1), st[name + ".qdmin"].float().reshape(-1),
             st[name + ".qs"].to(torch.int64).reshape(-1), st[name + ".qm"].to(torch.int64).reshape(-1))
    scale, mn = contract.super_group_params(*parts, gpr)
    return scale.reshape(rows, gpr), mn.reshape(rows, gpr), parts


def load_export(folder: str | Path, views, device: str = "cpu") -> torch.nn.Module:
    """The export's model with every quantized tensor replaced by its reconstruction at `views`
    (an int for all tensors, or {NAME: view}; a name left out stays at 8 bits)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    man = json.loads((folder / "edge-qat.json").read_text())
    if man.get("format") != "edge-qat" or man.get("version") != 1:
        raise SystemExit(f"edge-qat: error: {folder} is not an edge-qat version 1 export")
    g = man["group_size"]
    st = load_file(folder / "model.safetensors")
    state = {}
    for name, w in st.items():
        if not name.endswith(PARTS):
            state[name] = w
    for name in man["quantized"]:
        k = views.get(name, 8) if isinstance(views, dict) else views
        q = st[name + ".qcodes"]
        s, m, _ = stored_params(st, name, man)
        state[name] = contract.reconstruct(q, s, m, g, k)[:, : man["cols"][name]]
    cfg = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(cfg, "tie_word_embeddings", False)
    missing = [n for n in missing if not (tied and n == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"edge-qat: error: export {folder} does not fit its config: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    return model.to(device).eval()


@torch.no_grad()
def init_from_codes(model: torch.nn.Module, quantizers: dict, folder: str | Path) -> int:
    """Start `model` (wrapped by `quantize_model`) at the codes of an export or of
    `edge-pack PACK.edge --export-codes DIR`: each quantized weight becomes its 8-bit view, and
    its quantizer takes the file's group parameters, so every view of the student is the pack's
    view; its other tensors (norms) are taken as stored. Returns the quantized tensors set; an export whose groups or tensors do not fit is refused."""
    folder = Path(folder)
    try:
        man = json.loads((folder / "edge-qat.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"edge-qat: error: --init-codes {folder} has no readable edge-qat.json ({e}); "
                         "write one with `edge-pack PACK.edge --export-codes DIR`")
    if man.get("format") != "edge-qat" or man.get("version") != 1:
        raise SystemExit(f"edge-qat: error: --init-codes {folder} is not an edge-qat version 1 export")
    st = load_file(folder / "model.safetensors")
    params = dict(model.named_parameters())
    n = 0
    for name, wq in quantizers.items():
        if name not in man["quantized"]:
            raise SystemExit(f"edge-qat: error: --init-codes {folder} has no codes for {name}; export them from a q8 pack of this model")
        layout = man.get("group_params", "f16")
        if layout != wq.layout:
            raise SystemExit(f"edge-qat: error: --init-codes {folder} has {layout} group parameters, this run {wq.layout}: "
                             f"pass --params {layout}")
        if man["group_size"] != wq.group:
            raise SystemExit(f"edge-qat: error: --init-codes {folder} has groups of {man['group_size']}, this run {wq.group}: "
                             f"pass --group {man['group_size']}")
        q = st[name + ".qcodes"]
        sc, mn, parts = stored_params(st, name, man)
        w = params[name]
        if q.shape[0] != w.shape[0] or man["cols"][name] != w.shape[1]:
            raise SystemExit(f"edge-qat: error: --init-codes {folder}: {name} is {q.shape[0]}x{man['cols'][name]}, "
                             f"the model's {tuple(w.shape)}: codes of another model?")
        w.data.copy_(contract.reconstruct(q, sc, mn, wq.group, 8)[:, : w.shape[1]].to(w.device))
        if parts is not None:
            wq.set_super(*parts)
        else:
            wq.scale.data.copy_(sc.to(wq.scale.device))
            wq.min.data.copy_(mn.to(wq.min.device))
        n += 1
    # The rest (norms; trained ones in a run's export) as stored.
    for name, t in st.items():
        if not name.endswith(PARTS) and name in params:
            if t.shape != params[name].shape:
                raise SystemExit(f"edge-qat: error: --init-codes {folder}: {name} has shape {tuple(t.shape)}, the model's {tuple(params[name].shape)}")
            params[name].data.copy_(t.to(params[name].device, params[name].dtype))
    return n


@torch.no_grad()
def logits(folder, views, ids: list[int], dtype=torch.float32) -> np.ndarray:
    """[len(ids), vocab] logits of the export at `views` for one sequence of token ids, computed
    in `dtype` (float64: the reference that tells f32 rounding from a real difference)."""
    model = load_export(folder, views).to(dtype)
    return model(torch.tensor([ids])).logits[0].numpy()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.export")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logits", help="logits of an export at a view, for comparison with edge-run eval")
    lg.add_argument("--export", required=True, type=Path)
    lg.add_argument("--view", default="8", help="bits for every tensor (2,3,4,5,6,8), a comma-separated list of them, "
                    "or a JSON file {NAME: bits}")
    lg.add_argument("--tokens", required=True, help="comma-separated token ids, or a file of them")
    lg.add_argument("--out", required=True, help="logits .npy (a .json with the shape is written beside it); with several "
                    "views or dtypes it names each file with {view} and {dtype}")
    lg.add_argument("--dtype", default="f32", help="compute (and write) in f32, as edge-run does, or f64; or both, f32,f64")
    a = ap.parse_args(argv)
    if a.view.replace(",", "").isdigit():
        views = [int(v) for v in a.view.split(",")]
    else:
        views = [json.loads(Path(a.view).read_text())]
    dtypes = a.dtype.split(",")
    if not set(dtypes) <= {"f32", "f64"}:
        ap.error(f"--dtype {a.dtype}: f32, f64 or f32,f64")
    if len(views) * len(dtypes) > 1 and not ("{view}" in a.out and "{dtype}" in a.out):
        ap.error("--out: several views or dtypes need {view} and {dtype} in the file name")
    src = Path(a.tokens).read_text() if Path(a.tokens).exists() else a.tokens
    ids = [int(t) for t in src.replace(",", " ").split()]
    # One process for every file: importing torch costs more than a small model's logits.
    for view in views:
        for dtype in dtypes:
            f64 = dtype == "f64"
            path = Path(a.out.format(view=view if isinstance(view, int) else "map", dtype=dtype))
            out = logits(a.export, view, ids, torch.float64 if f64 else torch.float32)
            np.save(path, out.astype("<f8" if f64 else "<f4"))
            meta = {"shape": list(out.shape), "dtype": "f64le" if f64 else "f32le", "tokens": ids, "view": view}
            path.with_suffix(".json").write_text(json.dumps(meta) + "\n")
            print(f"wrote {path} {list(out.shape)}", file=sys.stderr)


if __name__ == "__main__":
    main()
