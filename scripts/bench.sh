#!/usr/bin/env bash
# Benchmarks netd side by side with its peers (issue #7, and issue #4's port benchmark):
# the CNI reference plugins (bridge + portmap + firewall, host-local IPAM) and netavark.
# Builds --release, installs the peers from Debian's packages when missing, and runs the
# bench binary as root. Everything happens in private network namespaces that the bench
# creates and removes; the machine's root network namespace is never touched.
#
#   scripts/bench.sh                       # full run, writes docs/bench/{results.json,results.md,add-latency.png}
#   scripts/bench.sh --quick --out /tmp/b  # smoke run
#   scripts/bench.sh --help                # the bench's options
#
# Not part of `cargo test`: the bench is a binary (package netd-bench), not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/bench.sh: the bench creates network namespaces; run it as root (sudo)" >&2
  exit 1
fi

# The peers, from Debian's packages (bookworm has containernetworking-plugins 1.1.1 and
# netavark 1.4.0). iptables is what both use for their firewall rules there.
missing=()
[ -x /usr/lib/cni/portmap ] || missing+=(containernetworking-plugins)
[ -x /usr/lib/podman/netavark ] || missing+=(netavark)
command -v iptables >/dev/null || missing+=(iptables)
command -v nft >/dev/null || missing+=(nftables)
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

cargo build --release --workspace --bins
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
