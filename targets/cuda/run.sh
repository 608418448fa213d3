#!/usr/bin/env bash
# The CUDA backend's proof on a machine with an NVIDIA GPU, in one command, from the checkout:
#
#   targets/cuda/run.sh [MODEL]
#
#   MODEL  what the end-to-end steps run (default: SmolLM2-135M-Instruct from /work/shared/models
#          or the model cache; any model `edge-run` accepts)
#
# Steps (each prints PASS / FAIL / NOT RUN and why; the exit status is nonzero if any FAILed):
#   1. `cargo build --release --features cuda` (no CUDA toolkit needed: cudarc loads the driver
#      and NVRTC at run time; NVRTC must be on the library path: JetPack has it, or
#      `pip install nvidia-cuda-nvrtc-cu12` and put its lib folder on LD_LIBRARY_PATH).
#   2. The kernel tests (runtime/tests/cuda.rs): NVRTC compiles every kernel; on the GPU every
#      kernel against the scalar reference, every view, every shape class. On this script a test
#      that printed "NO GPU FOUND" is a FAILURE (the script is for a machine with a GPU).
#   3. Greedy tokens on the GPU equal to the CPU at every view, and decode / prefill tokens/s per
#      view: run only when this edge-run has `--device` (issue 19: the forward pass on CUDA is
#      not wired yet; until then these steps say NOT RUN).
#
# Environment: BITS (views, default 8,6,5,4,3,2), PROMPT_TOKENS (default 128), GEN_TOKENS
# (default 64), REPS (default 5), CARGO_TARGET_DIR as usual.
set -uo pipefail

cd "$(dirname "$0")/../.."
BITS=${BITS:-8,6,5,4,3,2}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
GEN_TOKENS=${GEN_TOKENS:-64}
REPS=${REPS:-5}
failed=0
say() { printf '\n=== %s\n' "$*"; }

say "machine"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
else
    echo "*** nvidia-smi not found: is there an NVIDIA GPU and driver here? (Jetson: tegrastats) ***"
fi
if [ -z "$(ldconfig -p 2>/dev/null | grep libnvrtc)" ] && [ -z "${LD_LIBRARY_PATH:-}" ]; then
    echo "*** libnvrtc not in ldconfig and LD_LIBRARY_PATH is empty: the kernels may not compile ***"
fi

say "1. build --features cuda"
if ! cargo build --release --features cuda; then
    echo "FAIL: build"; exit 1
fi
BIN=${CARGO_TARGET_DIR:-target}/release/edge-run

say "2. kernel tests on the GPU"
log=$(mktemp)
cargo test --release -p edge-runtime --features cuda --test cuda -- --nocapture --test-threads 1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo "FAIL: kernel tests"; failed=1
elif grep -q "NO GPU FOUND\|NOT FOUND" "$log"; then
    echo "FAIL: the kernel tests found no GPU or no NVRTC (see the *** lines above)"; failed=1
else
    echo "PASS: kernel tests"
fi
cargo test --release -p edge-runtime --features cuda --lib backend::cuda 2>&1 | tail -3
rm -f "$log"

say "3. greedy tokens and tokens/s per view"
MODEL=${1:-}
if [ -z "$MODEL" ]; then
    MODEL=$(ls /work/shared/models/smollm2-135m-instruct-q4_1/*.gguf 2>/dev/null | head -1)
fi
if ! "$BIN" --help 2>&1 | grep -q -- "--device"; then
    echo "NOT RUN: this edge-run has no --device flag yet: the forward pass on CUDA is not wired (issue 19)"
elif [ -z "$MODEL" ]; then
    echo "NOT RUN: no model given and SmolLM2 not found"
else
    IFS=, read -ra views <<<"$BITS"
    for v in "${views[@]}"; do
        cpu=$("$BIN" generate -m "$MODEL" --bits "$v" --device cpu --temp 0 -n "$GEN_TOKENS" -p "Once upon a time" 2>/dev/null)
        gpu=$("$BIN" generate -m "$MODEL" --bits "$v" --device cuda --temp 0 -n "$GEN_TOKENS" -p "Once upon a time" 2>/dev/null)
        if [ -n "$cpu" ] && [ "$cpu" = "$gpu" ]; then echo "PASS: greedy at $v bits"; else echo "FAIL: greedy at $v bits differs"; failed=1; fi
    done
    "$BIN" bench -m "$MODEL" --device cuda --bits "$BITS" -p "$PROMPT_TOKENS" -n "$GEN_TOKENS" -r "$REPS" || failed=1
fi

say "done"
[ "$failed" -eq 0 ] && echo "ALL RUN STEPS PASSED" || echo "SOME STEPS FAILED"
exit "$failed"
