#!/usr/bin/env python3
"""A tiny Hugging Face fixture converted by llama.cpp's own converter, and llama.cpp's logits on it:
the GGUF oracle of an architecture no real checkpoint here has (Qwen3).

    B=/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    LLAMA_CPP_LIB_PATH=$B LD_LIBRARY_PATH=$B PYTHONPATH=/work/llama/llama_cpp_python-0.3.36 \
        /work/venv-torch/bin/python tests/oracles/llama_cpp_tiny_gguf.py tiny-qwen3

Reads tests/fixtures/hf/NAME (see make_tiny_hf.py), runs `convert_hf_to_gguf.py --outtype f16` from
the llama.cpp source tree next to LLAMA_CPP_LIB_PATH's build (no llama.cpp code is kept in this
repository) with a placeholder vocabulary of the model's size (SentencePiece type, tokens
`<tN>`: the fixture has no tokenizer, and the oracle runs on token ids), then evaluates the
fixture's tokens with llama.cpp (its defaults: f16 KV cache, f16 weights times f16-rounded
activations, so it parts from transformers by about 1e-3 of the largest logit) and writes
tests/fixtures/gguf/NAME/{model.gguf, llama_cpp_logits.json}.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def convert(src: Path, out: Path, llama_cpp: Path) -> None:
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf as conv
    from conversion import qwen

    def placeholder_vocab(self):
        n = self.hparams["vocab_size"]
        self.gguf_writer.add_tokenizer_model("llama")
        self.gguf_writer.add_token_list([f"<t{i}>" for i in range(n)])
        self.gguf_writer.add_token_scores([0.0] * n)
        self.gguf_writer.add_token_types([1] * n)

    qwen.Qwen3Model.set_vocab = placeholder_vocab
    sys.argv = ["convert_hf_to_gguf.py", str(src), "--outfile", str(out), "--outtype", "f16"]
    conv.main()


def main():
    name = sys.argv[1]
    lib = Path(os.environ["LLAMA_CPP_LIB_PATH"])
    llama_cpp = lib.parents[1]  # .../vendor/llama.cpp/build/bin -> .../vendor/llama.cpp
    src = ROOT / "tests/fixtures/hf" / name
    out = ROOT / "tests/fixtures/gguf" / name
    out.mkdir(parents=True, exist_ok=True)
    convert(src, out / "model.gguf", llama_cpp)

    from llama_cpp import Llama

    ref = json.load(open(src / "logits.json"))
    llm = Llama(model_path=str(out / "model.gguf"), n_ctx=64, n_batch=64, n_threads=2, verbose=False, logits_all=True)
    llm.eval(ref["tokens"])
    logits = np.array(llm.scores[: len(ref["tokens"])], dtype=np.float32)
    hf = np.array(ref["logits"], dtype=np.float32)
    print(f"{name}: llama.cpp against transformers, max |diff| / max |logit| = {np.abs(logits - hf).max() / np.abs(hf).max():.2e}")
    with open(out / "llama_cpp_logits.json", "w") as f:
        json.dump({"tokens": ref["tokens"], "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()]}, f)


if __name__ == "__main__":
    main()
