"""Loading the base model: a Hugging Face folder, or a GGUF file dequantized to float.

"The unquantized model" of a QAT run is the float model loaded here: for stories260K the HF
folder's f32 tensors; for SmolLM2-135M, which exists here only as a Q4_1 GGUF, the GGUF's
weights dequantized to f32 (`python -m edge_qat.models GGUF_FOLDER OUT` writes that as a HF
folder once, so training, export and the runtime all start from the same floats).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")


def gguf_in(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def load_model(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A LlamaForCausalLM (f32, eval mode) from a HF folder, or from a folder holding a GGUF."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"edge-qat: error: {path} is not a model folder (a Hugging Face folder with config.json)")
    if any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").exists():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif (g := gguf_in(path)) is not None:
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=g.name, dtype=torch.float32)
    else:
        raise SystemExit(f"edge-qat: error: {path} holds no safetensors or GGUF weights")
    return model.to(device).eval()


def convert(src: Path, out: Path) -> None:
    """Write src (a folder with a GGUF) as a HF float folder at out, tokenizer files copied."""
    model = load_model(src)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # A GGUF-loaded model refuses save_pretrained (it counts as quantized): write the f32 tensors
    # and the config (without its quantization entry) directly.
    tmp.mkdir(parents=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    cfg["architectures"] = [type(model).__name__]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in COPIED[1:]:
        if (src / f).exists():
            shutil.copyfile(src / f, tmp / f)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_qat.models", description="Convert a GGUF model folder to a Hugging Face float folder (the unquantized base of QAT).")
    ap.add_argument("src", type=Path, help="folder holding a .gguf (and config.json, tokenizer.json)")
    ap.add_argument("out", type=Path, help="HF folder to write")
    a = ap.parse_args(argv)
    convert(a.src, a.out)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
