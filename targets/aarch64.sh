#!/usr/bin/env bash
# Cross-compile edge-run for aarch64 Linux (Raspberry Pi 4/5, Jetson) and, optionally, run the
# tests under qemu-user. Works on a Debian 12 x86_64 machine.
#
#   targets/aarch64.sh setup            # apt: Debian's Rust with an aarch64 std, cross gcc, qemu
#   targets/aarch64.sh check            # exit 0 if everything setup installs is present
#   targets/aarch64.sh build [ARGS..]   # cargo build --target aarch64-unknown-linux-gnu ARGS
#   targets/aarch64.sh test [ARGS..]    # cargo test under qemu-aarch64 (QEMU_CPU=max: dotprod, i8mm)
#   targets/aarch64.sh run BIN [ARGS..] # run an aarch64 binary under qemu-aarch64
#   targets/aarch64.sh e2e BIN          # real-model runs under qemu: SIMD tables == scalar reference
#
# rustup's toolchain on the development machine has no aarch64 std, so this uses Debian's
# rustc/cargo (/usr/bin, packages rustc-web and libstd-rust-web-dev:arm64). Outputs go to
# target/aarch64 so they never mix with the host build.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/aarch64}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
# Link statically: under qemu-user here (7.2 and 10.0.2 alike), a dynamically linked aarch64
# program hangs in its first pthread_create, while a static one runs. Static binaries also
# copy to a board without caring about its glibc.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export QEMU_CPU=${QEMU_CPU:-max}

QEMU="qemu-aarch64-static -L /usr/aarch64-linux-gnu"

have_toolchain() {
  [ -x /usr/bin/rustc ] && [ -x "$CARGO" ] \
    && [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$TRIPLE/lib" ] \
    && command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null
}

case "${1:-}" in
  setup)
    # Debian 12's rustc-web in bookworm main is 1.85; the security and updates suites carry
    # the current one (1.96 when this was written), which the lock file's crates need. A fresh
    # image normally lists both; add them if not. qemu 7.2 (bookworm) runs the static binaries
    # and knows the `max` (dotprod, i8mm) and `cortex-a72` CPU models; backports is not needed.
    if ! grep -rqs 'bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "deb http://deb.debian.org/debian-security bookworm-security main" > /etc/apt/sources.list.d/edge-run-security.list
    fi
    if ! grep -rqs 'bookworm-updates' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "deb http://deb.debian.org/debian bookworm-updates main" > /etc/apt/sources.list.d/edge-run-updates.list
    fi
    dpkg --add-architecture arm64
    apt-get update
    # The aarch64 std must be exactly the host compiler's version: pin both to one version.
    v=$(apt-cache policy rustc-web | sed -n 's/^ *Candidate: //p')
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "rustc-web=$v" cargo-web "libstd-rust-web-dev:arm64=$v" gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
      qemu-user-static
    have_toolchain
    ;;
  check)
    have_toolchain
    ;;
  run)
    shift
    exec $QEMU "$@"
    ;;
  e2e)
    shift
    exec targets/aarch64-e2e.sh "$@"
    ;;
  build)
    shift
    exec "$CARGO" build --target "$TRIPLE" "$@"
    ;;
  test)
    shift
    exec "$CARGO" test --target "$TRIPLE" "$@"
    ;;
  *)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
