#!/usr/bin/env python3
"""Greedy continuations and prompt token ids from llama.cpp (an independent implementation),
for the references stored in the tests.

Runs llama.cpp through llama-cpp-python's ctypes bindings against the llama.cpp build named by
LLAMA_CPP_LIB_PATH (no llama.cpp code is kept in this repository). Usage:

    B=/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
    LLAMA_CPP_LIB_PATH=$B LD_LIBRARY_PATH=$B PYTHONPATH=/work/llama/llama_cpp_python-0.3.36 \
        python tests/oracles/llama_cpp_greedy.py MODEL.gguf [N_TOKENS] < prompts.json

prompts.json is a JSON list of prompt strings (special tokens such as <|im_start|> are parsed as
such; no BOS unless the model adds one). Prints one JSON object per prompt: the prompt, its ids
and the first N_TOKENS greedy ids (stopping early at an end-of-generation token).
"""
import json
import sys

import numpy as np

from llama_cpp import Llama, llama_cpp


def main():
    model, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32
    prompts = json.load(sys.stdin)
    llm = Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=2, verbose=False, seed=0)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for p in prompts:
        ids = llm.tokenize(p.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=True)
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(n):
            # The last evaluated token's logits (the bindings keep no scores without logits_all).
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            t = int(logits.argmax())
            out.append(t)
            if llama_cpp.llama_vocab_is_eog(vocab, t):
                break
            llm.eval([t])
        print(json.dumps({"prompt": p, "prompt_ids": ids, "greedy": out,
                          "text": llm.detokenize(out).decode("utf-8", "replace")}))


if __name__ == "__main__":
    main()
