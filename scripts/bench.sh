#!/usr/bin/env bash
# Benchmarks netd side by side with its peers (issues #7, #4 and #14): the CNI reference
# plugins (bridge + portmap + firewall, host-local IPAM), Debian's netavark 1.4 (iptables
# driver) and netavark 2.1.0 (nftables driver, what a current Podman runs).
# Builds --release, provides the peers when missing (below), and runs the bench binary as root. Everything happens in private network namespaces that the bench
# creates and removes; the machine's root network namespace is never touched.
#
#   scripts/bench.sh                       # full run, writes docs/bench/{results.json,results.md,add-latency.png}
#   scripts/bench.sh --quick --out /tmp/b  # smoke run (small sizes, every phase)
#   scripts/bench.sh --quick --out /tmp/b --systems netd --phases burst   # one phase, one system
#   scripts/bench.sh --help                # the bench's options
#
# The peers' binaries live outside the repository, in $BENCH_CACHE (/var/cache/netd-bench):
# netavark 2.1.0 is built there once with `cargo install` (a few minutes; needs
# protobuf-compiler), and Debian's netavark 1.4 package is unpacked there rather than
# installed, because an installed netavark makes Podman 4 pick it over its CNI backend.
#
# Not part of `cargo test`: the bench is a binary (package netd-bench), not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/bench.sh: the bench creates network namespaces; run it as root (sudo)" >&2
  exit 1
fi

cache="${BENCH_CACHE:-/var/cache/netd-bench}"
mkdir -p "$cache"

# The peers from Debian's packages (bookworm has containernetworking-plugins 1.1.1 and
# netavark 1.4.0; iptables is what both use for their firewall rules there).
missing=()
[ -x /usr/lib/cni/portmap ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
command -v nft >/dev/null || missing+=(nftables)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/bench.sh: installing ${missing[*]}" >&2
  if ! command -v apt-get >/dev/null; then
    echo "scripts/bench.sh: no apt-get; install ${missing[*]} by hand (the bench skips missing peers)" >&2
  else
    apt-get update -qq
    # --no-install-recommends: netavark recommends aardvark-dns, which the bench does not use.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
      echo "scripts/bench.sh: could not install ${missing[*]}; the bench skips missing peers" >&2
  fi
fi

# Debian's netavark 1.4: the installed one if there is one, else the package unpacked.
nv14=/usr/lib/podman/netavark
if [ ! -x "$nv14" ]; then
  nv14="$cache/netavark-1.4/usr/lib/podman/netavark"
  if [ ! -x "$nv14" ]; then
    echo "scripts/bench.sh: unpacking Debian's netavark into $cache/netavark-1.4" >&2
    (cd "$cache" && apt-get download netavark && dpkg-deb -x netavark_*.deb "$cache/netavark-1.4") ||
      echo "scripts/bench.sh: could not fetch Debian's netavark; the bench skips it" >&2
  fi
fi
export BENCH_NETAVARK14="$nv14"

# netavark 2.1.0 from crates.io, built once into the cache (never into the repository).
nv21="$cache/netavark-2.1.0/bin/netavark"
if [ ! -x "$nv21" ]; then
  echo "scripts/bench.sh: building netavark 2.1.0 into $cache/netavark-2.1.0 (takes minutes)" >&2
  cargo install netavark --version 2.1.0 --locked --root "$cache/netavark-2.1.0" ||
    echo "scripts/bench.sh: could not build netavark 2.1.0; the bench skips it" >&2
fi
export BENCH_NETAVARK21="$nv21"

cargo build --release --workspace --bins
# netd as installed: scripts/build-release.sh links the plugin statically into target/dist.
# NETD_BIN_DIR set by the caller (another build to compare) wins.
scripts/build-release.sh
export NETD_BIN_DIR="${NETD_BIN_DIR:-${CARGO_TARGET_DIR:-target}/dist}"
bench_bin="${CARGO_TARGET_DIR:-target}/release/bench"

# If the bench is killed outright (no destructors run), remove what it left: its netns are
# named nd<pid>x..., its temp dirs /tmp/netd-test-nd<pid>x...
pid=""
cleanup() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^nd${pid}x" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf /tmp/netd-test-nd"${pid}"x* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bench_bin" "$@" &
pid=$!
set +e
wait "$pid"
rc=$?
set -e
cleanup
pid=""
exit "$rc"
