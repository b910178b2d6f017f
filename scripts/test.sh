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
