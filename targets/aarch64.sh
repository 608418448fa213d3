#!/usr/bin/env bash
# Cross-compile edge-run for aarch64 Linux (Raspberry Pi 4/5, Jetson) and, optionally, run the
# tests under qemu-user. Works on a Debian 12 x86_64 machine.
#
#   targets/aarch64.sh setup            # apt: Debian's Rust with an aarch64 std, cross gcc, qemu
#   targets/aarch64.sh build [ARGS..]   # cargo build --target aarch64-unknown-linux-gnu ARGS
#   targets/aarch64.sh test [ARGS..]    # cargo test under qemu-aarch64 (QEMU_CPU=max: dotprod, i8mm)
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

case "${1:-}" in
  setup)
    dpkg --add-architecture arm64
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
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
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
