#!/usr/bin/env bash
# Builds what gets installed into target/dist/: netd and netctl (--release), and the netd-cni
# plugin --release and linked statically.
#
#   scripts/build-release.sh     # then: NETD_BUILD_DIR=target/dist scripts/install.sh
#
# Why the plugin is static: a runtime execs it for every ADD and DEL, so its start-up is part
# of every container's attach. A dynamically linked Rust binary spends that start-up in the
# dynamic loader (loading libgcc_s, libm and libc, resolving symbols) and in CPU feature probes
# of those libraries, each a CPUID instruction that traps to the hypervisor on a VM; linked
# statically it starts like /bin/true (docs/benchmarks.md has the numbers). It also runs on
# a host whose glibc is older than the one it was built with, which matters when a DaemonSet
# copies it from an image onto the node (deploy/netd-daemonset.yaml).
#
# The static build needs an explicit --target: with it, RUSTFLAGS reach only the target's
# crates, not build scripts and proc-macros (which must stay dynamic). So it lands in
# target/<host triple>/release/ and builds its dependencies once more there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}"
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bin netd --bin netctl
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked -p netd-cni --bin netd-cni --target "$host"
mkdir -p "$out/dist"
cp -f "$out/release/netd" "$out/release/netctl" "$out/$host/release/netd-cni" "$out/dist/"
echo "build-release.sh: $out/dist holds netd, netctl and netd-cni (static)" >&2
