#!/usr/bin/env bash
# Regenerate the tokenizer references in tests/oracles/refs/ from llama.cpp's own tokenizer
# (llama-tokenize, vocabulary only), for the GGUFs whose tokenizers edge-pack rebuilds from
# metadata. The Rust tests (trainer-bridge/tests/tokenizer_oracles.rs, and the chat-template
# tests in src/tokenizer.rs) compare against these files; nothing here runs in the tests.
#
#   tests/oracles/llama_tokenize_refs.sh            # all models
#   tests/oracles/llama_tokenize_refs.sh gemma3-270m
#
# Needs: llama.cpp's build (LLAMA_BIN, default the vendored build), python3; the chat rendering
# uses Hugging Face transformers when importable (PYTHON, default /work/venv-torch/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LLAMA_BIN=${LLAMA_BIN:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin}
LLAMA_MODELS=${LLAMA_MODELS:-$LLAMA_BIN/../../models}
MODELS=${EDGE_MODELS_DIR:-/work/shared/models}
CACHE=${EDGE_MODELS:-$HOME/.cache/edge-run-models}
DATA=${EDGE_DATA_DIR:-/work/shared/data}
PYTHON=${PYTHON:-/work/venv-torch/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

# Models that fetch.sh downloads: fetch them (cached) first.
for name in qwen2.5-coder-0.5b gemma3-270m; do
  if [ $# -eq 0 ] || [ "$1" = "$name" ]; then
    "$MODELS/fetch.sh" "$name" >/dev/null
  fi
done

export LLAMA_BIN LLAMA_MODELS MODELS CACHE DATA
exec "$PYTHON" "$here/make_refs.py" "$@"
