#!/usr/bin/env bash
# Installs netd, netctl and the netd-cni plugin with a default configuration, the systemd
# unit, shell completions and man pages.
#
#   scripts/install.sh                  # build (release) and install under /usr/local
#   PREFIX=/usr scripts/install.sh      # distribution-style paths
#   DESTDIR=/tmp/pkg scripts/install.sh # stage into a directory (packaging, tests)
#
# Environment:
#   PREFIX         installation prefix (default /usr/local): bin/, share/, lib/systemd/system/
#   DESTDIR        staging root prepended to every path (default: none, i.e. the real system)
#   NETD_BUILD_DIR directory holding built netd, netctl and netd-cni (default: build with
#                  scripts/build-release.sh and use target/dist, where the plugin is static)
#   SYSTEMD_UNIT_DIR  where netd.service goes (default $PREFIX/lib/systemd/system)
#   CNI_BIN_DIRS   plugin directories, space-separated (default "/opt/cni/bin /usr/lib/cni")
#
# The configuration /etc/netd/netd.toml is written only if it does not exist: an operator's
# file is never replaced. Nothing is started; the script prints the next steps.
set -euo pipefail

cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
SYSTEMD_UNIT_DIR="${SYSTEMD_UNIT_DIR:-$PREFIX/lib/systemd/system}"
CNI_BIN_DIRS="${CNI_BIN_DIRS:-/opt/cni/bin /usr/lib/cni}"

if [ -z "${NETD_BUILD_DIR:-}" ]; then
  scripts/build-release.sh
  NETD_BUILD_DIR="${CARGO_TARGET_DIR:-target}/dist"
fi
for b in netd netctl netd-cni; do
  if [ ! -x "$NETD_BUILD_DIR/$b" ]; then
    echo "install.sh: $NETD_BUILD_DIR/$b is missing; build first (scripts/build-release.sh) or set NETD_BUILD_DIR" >&2
    exit 1
  fi
done

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: installing into the system needs root (or set DESTDIR to stage the files)" >&2
  exit 1
fi

bindir="$PREFIX/bin"
mandir="$PREFIX/share/man"
docdir="$PREFIX/share/doc/netd"

say() { printf '  %s\n' "$1"; }
put() { # put MODE SRC DST: install a file, creating its directory
  install -D -m "$1" "$2" "$DESTDIR$3"
  say "$3"
}

echo "Installing netd (PREFIX=$PREFIX${DESTDIR:+, DESTDIR=$DESTDIR}):"
put 0755 "$NETD_BUILD_DIR/netd" "$bindir/netd"
put 0755 "$NETD_BUILD_DIR/netctl" "$bindir/netctl"
for d in $CNI_BIN_DIRS; do
  put 0755 "$NETD_BUILD_DIR/netd-cni" "$d/netd-cni"
done

# Configuration: never overwrite the operator's file.
if [ -e "$DESTDIR/etc/netd/netd.toml" ]; then
  say "/etc/netd/netd.toml (kept: it exists)"
else
  put 0644 netd/netd.toml /etc/netd/netd.toml
fi
install -d -m 0755 "$DESTDIR/etc/cni/net.d"

# systemd unit, with the real path of the binary.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#@BINDIR@#$bindir#g" systemd/netd.service.in > "$tmp/netd.service"
put 0644 "$tmp/netd.service" "$SYSTEMD_UNIT_DIR/netd.service"

# Shell completions and man pages come from the same definitions as netctl's arguments.
"$NETD_BUILD_DIR/netctl" completion bash > "$tmp/netctl.bash"
"$NETD_BUILD_DIR/netctl" completion zsh > "$tmp/_netctl"
"$NETD_BUILD_DIR/netctl" completion fish > "$tmp/netctl.fish"
put 0644 "$tmp/netctl.bash" "$PREFIX/share/bash-completion/completions/netctl"
put 0644 "$tmp/_netctl" "$PREFIX/share/zsh/site-functions/_netctl"
put 0644 "$tmp/netctl.fish" "$PREFIX/share/fish/vendor_completions.d/netctl.fish"
mkdir -p "$tmp/man"
"$NETD_BUILD_DIR/netctl" man --dir "$tmp/man"
"$NETD_BUILD_DIR/netd" --man > "$tmp/man/netd.8"
for page in "$tmp"/man/*.1; do
  put 0644 "$page" "$mandir/man1/$(basename "$page")"
done
put 0644 "$tmp/man/netd.8" "$mandir/man8/netd.8"

for doc in docs/guide.md docs/security.md docs/isolation.md docs/kubernetes.md nft-templates/netd.nft; do
  if [ -e "$doc" ]; then
    put 0644 "$doc" "$docdir/$(basename "$doc")"
  fi
done

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<EOF

Next steps:
  1. Forwarding (netd needs it and never turns it on itself):
       sysctl -w net.ipv4.ip_forward=1   # persist it in /etc/sysctl.d/
  2. Start netd:   systemctl enable --now netd
  3. Check:        netctl status && netctl doctor
Uninstall with scripts/uninstall.sh (add --purge to remove configuration and state too).
EOF
