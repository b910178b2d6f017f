#!/usr/bin/env bash
# Removes what scripts/install.sh installed. Configuration (/etc/netd) and state
# (/var/lib/netd, netd's conflists, netd's nftables table) stay unless --purge is given, so a
# reinstall picks up where it left off.
#
#   scripts/uninstall.sh            # binaries, unit, completions, man pages, docs
#   scripts/uninstall.sh --purge    # and /etc/netd, /var/lib/netd, netd-*.conflist, the table
#
# Honours PREFIX, DESTDIR, SYSTEMD_UNIT_DIR and CNI_BIN_DIRS like install.sh.
set -euo pipefail

PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
SYSTEMD_UNIT_DIR="${SYSTEMD_UNIT_DIR:-$PREFIX/lib/systemd/system}"
CNI_BIN_DIRS="${CNI_BIN_DIRS:-/opt/cni/bin /usr/lib/cni}"
purge=0
for a in "$@"; do
  case "$a" in
    --purge) purge=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown argument $a (use --purge or nothing)" >&2; exit 2 ;;
  esac
done
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "uninstall.sh: removing from the system needs root (or set DESTDIR)" >&2
  exit 1
fi

live=0
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  live=1
  systemctl disable --now netd.service 2>/dev/null || true
fi

gone() { # gone PATH...: remove files, say which
  for p in "$@"; do
    if [ -e "$DESTDIR$p" ] || [ -L "$DESTDIR$p" ]; then
      rm -f "$DESTDIR$p"
      printf '  removed %s\n' "$p"
    fi
  done
}

echo "Uninstalling netd (PREFIX=$PREFIX${DESTDIR:+, DESTDIR=$DESTDIR}):"
gone "$PREFIX/bin/netd" "$PREFIX/bin/netctl"
for d in $CNI_BIN_DIRS; do gone "$d/netd-cni"; done
gone "$SYSTEMD_UNIT_DIR/netd.service"
gone "$PREFIX/share/bash-completion/completions/netctl" \
     "$PREFIX/share/zsh/site-functions/_netctl" \
     "$PREFIX/share/fish/vendor_completions.d/netctl.fish" \
     "$PREFIX/share/man/man8/netd.8"
for page in "$DESTDIR$PREFIX"/share/man/man1/netctl.1 "$DESTDIR$PREFIX"/share/man/man1/netctl-*.1; do
  [ -e "$page" ] && gone "${page#"$DESTDIR"}"
done
if [ -d "$DESTDIR$PREFIX/share/doc/netd" ]; then
  rm -rf "$DESTDIR$PREFIX/share/doc/netd"
  printf '  removed %s\n' "$PREFIX/share/doc/netd"
fi
[ "$live" = 1 ] && systemctl daemon-reload

if [ "$purge" = 1 ]; then
  echo "Purging configuration and state:"
  for d in /etc/netd /var/lib/netd /run/netd; do
    if [ -e "$DESTDIR$d" ]; then
      rm -rf "$DESTDIR$d"
      printf '  removed %s\n' "$d"
    fi
  done
  for f in "$DESTDIR"/etc/cni/net.d/netd-*.conflist; do
    [ -e "$f" ] && gone "${f#"$DESTDIR"}"
  done
  if [ -z "$DESTDIR" ] && command -v nft >/dev/null && nft list table inet netd >/dev/null 2>&1; then
    nft delete table inet netd
    echo "  deleted nftables table inet netd"
  fi
  echo "netd's bridges (nd-*) go away with their last container or at reboot."
else
  echo "Kept /etc/netd, /var/lib/netd, netd's conflists and table inet netd (--purge removes them)."
fi
