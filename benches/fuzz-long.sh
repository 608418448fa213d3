#!/usr/bin/env bash
# The long fuzz run (issue 20): every target for EDGE_FUZZ_EXECS executions (default 10^7),
# one after the other, with the harness of fuzz/ (stable Rust; see fuzz/src/lib.rs).
#
#   benches/fuzz-long.sh                  # 10^7 executions per target
#   EDGE_FUZZ_EXECS=100000 benches/fuzz-long.sh
#   EDGE_FUZZ_SECS=30 benches/fuzz-long.sh    # about 30 s per target instead (the rate check)
#   EDGE_FUZZ_SEED=2 benches/fuzz-long.sh     # another mutation sequence
#
# Crashing inputs are saved in $EDGE_FUZZ_OUT (default $TMPDIR/edge-fuzz-crashes) and fail the
# target's test; an execution over 10 s (a hang) saves its input and ends that target's run.
# Each target prints "fuzz NAME: N execs in T s (R/s) ...". The log is kept in fuzz-long.log.
set -euo pipefail
cd "$(dirname "$0")/.."

export EDGE_FUZZ_EXECS="${EDGE_FUZZ_EXECS:-10000000}"
if [[ -n "${EDGE_FUZZ_SECS:-}" ]]; then export EDGE_FUZZ_SECS; fi
log="${FUZZ_LOG:-fuzz-long.log}"
: >"$log"

cargo test -p edge-fuzz --no-run
cargo test -p edge-run --bin edge-run --no-run

status=0
run() { # one target per test process, so a hang in one does not stop the others
    local pkg=("$@")
    if ! cargo test "${pkg[@]}" -- --exact --nocapture --test-threads=1 2>&1 | tee -a "$log"; then
        status=1
    fi
}
for t in edge edge_fixed gguf gguf_tokenizer sentencepiece llama2c hf_config safetensors; do
    run -p edge-fuzz --test short "fuzz_$t"
done
for t in fuzz_targets::fuzz_board fuzz_targets::fuzz_plan power::fuzz::fuzz_sensor_file \
    power::fuzz::fuzz_sensor_pmic power::fuzz::fuzz_sensor_sysfs; do
    run -p edge-run --bin edge-run "$t"
done

echo "== summary" | tee -a "$log"
grep -E '^fuzz [a-z_]+:' "$log" | tee -a "$log.summary" || true
if [[ $status -ne 0 ]]; then
    echo "fuzz-long: a target crashed or hung; see $log and the saved inputs" >&2
fi
exit $status
