#!/usr/bin/env bash
# The demo (README.md): builds netd, netctl and netd-cni and runs containers-as-namespaces
# through the plugin and the daemon in a private host namespace. Needs root; never changes the
# machine's root network namespace. Needs nftables and iproute2 (apt-get install nftables iproute2 iputils-ping).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
exec ./target/debug/netd-demo
