#!/usr/bin/env bash
# Makes sure Rust can build for TRIPLE (an `*-unknown-linux-musl` target, for the static
# plugin): adds it with rustup when rustup manages the toolchain, and fails with what to do
# otherwise.
#
#   scripts/musl-target.sh x86_64-unknown-linux-musl
set -euo pipefail
triple="$1"
sysroot="$(rustc --print sysroot)"
if [ -d "$sysroot/lib/rustlib/$triple" ]; then
  exit 0
fi
if command -v rustup >/dev/null; then
  echo "musl-target.sh: adding the Rust target $triple (rustup target add)" >&2
  rustup target add "$triple"
  exit 0
fi
echo "musl-target.sh: the Rust standard library for $triple is missing and rustup is not" \
  "here to add it; install it for this toolchain (rustup target add $triple)" >&2
exit 1
