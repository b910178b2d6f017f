#!/usr/bin/env bash
# The test command (README.md): unit tests, and integration tests that run netd, netctl and
# netd-cni against the real kernel inside private network namespaces. Needs root; never
# changes the machine's root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the integration tests create network namespaces; run as root (sudo)" >&2
  exit 1
fi
# Formatting and lints first: they are cheap and end style debates before review.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The netns tests run the binaries as a runtime would, so build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${NETD_TEST_THREADS:-4}"
# The plugin is installed statically linked, built for musl (scripts/build-release.sh): run the
# end-to-end core tests once more with such a build of it (debug) beside the daemon.
musl="$(uname -m)-unknown-linux-musl"
out="${CARGO_TARGET_DIR:-target}"
scripts/musl-target.sh "$musl"
cargo build -p netd-cni --bin netd-cni --target "$musl"
static_dir="$out/static-plugin"
mkdir -p "$static_dir"
cp -f "$out/debug/netd" "$out/debug/netctl" "$out/$musl/debug/netd-cni" "$static_dir/"
if ldd "$static_dir/netd-cni" 2>&1 | grep -q '=>'; then
  echo "scripts/test.sh: $static_dir/netd-cni is dynamically linked" >&2
  exit 1
fi
NETD_BIN_DIR="$(realpath "$static_dir")" cargo test -p netd-netns-tests --test core --no-fail-fast \
  -- --test-threads="${NETD_TEST_THREADS:-4}"
