#!/bin/sh
# Builds a container image from the host's busybox-static: there is no registry to pull from.
#
#   mkimage.sh OUTDIR REF CMD...
#
# writes OUTDIR/rootfs.tar (for `podman import`) and OUTDIR/image.tar, a docker-archive
# (manifest.json, config.json, one layer) that `ctr image import` and containerd's CRI accept.
# CMD is the image's default command (a pause image's is the sandbox's long-lived process).
set -eu
out=$1 ref=$2
shift 2
bb=/bin/busybox
[ -x "$bb" ] || { echo "mkimage.sh: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' ||
  { echo "mkimage.sh: $bb is not statically linked (install busybox-static, not busybox)" >&2; exit 1; }
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
work=$(mktemp -d "$out/.mkimage.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
  [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$root" -cf "$out/rootfs.tar" .
diff_id=$(sha256sum "$out/rootfs.tar" | cut -d' ' -f1)
# The image config: the command as a JSON array of strings (no quotes or backslashes in CMD).
cmd=$(printf '"%s",' "$@")
cmd=${cmd%,}
mkdir "$work/archive"
cp "$out/rootfs.tar" "$work/archive/layer.tar"
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":[%s]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}\n' \
  "$arch" "$cmd" "$diff_id" >"$work/archive/config.json"
printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$ref" >"$work/archive/manifest.json"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$work/archive" -cf "$out/image.tar" \
  manifest.json config.json layer.tar
