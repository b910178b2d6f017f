#!/usr/bin/env bash
# Builds what gets installed into target/dist/: netd and netctl (--release), and the netd-cni
# plugin --release and linked statically.
#
#   scripts/build-release.sh     # then: NETD_BUILD_DIR=target/dist scripts/install.sh
#
# Why the plugin is static: a runtime execs it for every ADD and DEL, so its start-up is part
# of every container's attach. A dynamically linked Rust binary spends that start-up in the
# dynamic loader (loading libgcc_s, libm and libc, resolving symbols) and in CPU feature probes
# of those libraries, each a CPUID instruction that traps to the hypervisor on a VM. Why musl
# and not static glibc: glibc's start-up still makes those probes (its cache-size detection
# alone costs about 0.3 ms of CPU per exec on a VM), musl's makes none. The plugin brings its
# own allocator to musl (cni/src/main.rs). A static plugin also runs on any host whatever its
# libc, which matters when a DaemonSet copies it from an image onto the node
# (deploy/netd-daemonset.yaml).
#
# Rust links musl targets statically by default; the plugin lands in
# target/<musl triple>/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}"
musl="$(uname -m)-unknown-linux-musl"
scripts/musl-target.sh "$musl"
cargo build --release --locked --bin netd --bin netctl
cargo build --release --locked -p netd-cni --bin netd-cni --target "$musl"
mkdir -p "$out/dist"
cp -f "$out/release/netd" "$out/release/netctl" "$out/$musl/release/netd-cni" "$out/dist/"
echo "build-release.sh: $out/dist holds netd, netctl and netd-cni (static, musl)" >&2
