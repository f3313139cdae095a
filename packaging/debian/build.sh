#!/usr/bin/env bash
# Builds vmhook_VERSION_amd64.deb from dist/vmhook (npm run package builds it
# first) with dpkg-deb only: no debhelper, no fakeroot.
#   packaging/debian/build.sh [--version V] [--output DIR]
# --version defaults to package.json's; --output to dist/. Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
here=packaging/debian

die() {
  echo "package: $*" >&2
  exit 1
}

version=$(node -p 'require("./package.json").version')
output=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --output) output=${2:?--output needs a directory}; shift 2 ;;
    *) die "unknown argument $1; usage: packaging/debian/build.sh [--version V] [--output DIR]" ;;
  esac
done
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "version '$version' is not a Debian native version (digits first, then letters, digits, . + ~)"
binary=dist/vmhook
[ -x "$binary" ] || die "$binary is missing: run npm run build (npm run package does both)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "the bun binary is built for this machine; the package is amd64 only"

# Who publishes the package: set DEBFULLNAME and DEBEMAIL; the default is a reserved, undeliverable address.
maintainer=${DEBFULLNAME:-vmhook maintainers}" <${DEBEMAIL:-maintainers@vmhook.invalid}>"
# One fixed date (the last commit's) for the changelog, file times and dpkg-deb's own:
# the same binary gives the same package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
epoch=$SOURCE_DATE_EPOCH

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
umask 022
root=$stage/root
install -d "$root/DEBIAN" "$root/etc/logrotate.d" "$root/usr/bin" "$root/usr/lib/vmhook" "$root/usr/share/doc/vmhook" "$root/usr/share/lintian/overrides" "$root/usr/share/man/man1"
# Not stripped: bun --compile appends the program to the executable, and strip would cut it off.
install -m 0755 "$binary" "$root/usr/lib/vmhook/vmhook"
ln -s ../lib/vmhook/vmhook "$root/usr/bin/vmhook"
install -m 0644 "$here/copyright" "$root/usr/share/doc/vmhook/copyright"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/vmhook"
gzip -9n <"$here/vmhook.1" >"$root/usr/share/man/man1/vmhook.1.gz"
printf 'vmhook (%s) unstable; urgency=medium\n\n  * Release %s; changes: git log.\n\n -- %s  %s\n' \
  "$version" "$version" "$maintainer" "$(date -u -R -d "@$epoch")" | gzip -9n >"$root/usr/share/doc/vmhook/changelog.gz"
for script in postinst prerm postrm; do install -m 0755 "$here/$script" "$root/DEBIAN/$script"; done
# The log's rotation, dpkg's conffile: an administrator's edits survive upgrades,
# purge removes it, and vmhook install/uninstall --debian-package (postinst, prerm)
# never write or remove it, also one install.sh wrote before the package came.
install -m 0644 "$here/logrotate" "$root/etc/logrotate.d/vmhook"
echo /etc/logrotate.d/vmhook >"$root/DEBIAN/conffiles"

# The highest glibc symbol version the binary needs is its libc6 dependency.
glibc=$(grep -aoE 'GLIBC_2\.[0-9]+' "$binary" | sort -uV | tail -1)
[ -n "$glibc" ] || die "found no GLIBC_ symbol version in $binary; is it a dynamically linked bun binary?"
cat >"$root/DEBIAN/control" <<CONTROL
Package: vmhook
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6 (>= ${glibc#GLIBC_})
Recommends: libvirt-daemon-system
Section: admin
Priority: optional
Description: libvirt QEMU hook framework with an exact undo journal
 One binary, installed as /etc/libvirt/hooks/qemu, runs on every VM event
 and does what the VM's own domain XML asks for in its <metadata>: GPU
 handover between the host driver and vfio-pci (single-GPU passthrough
 included), mediated devices (GVT-g, vGPU), hugepages, CPU isolation and
 custom plugins. Every change is journaled before it is made and undone
 exactly at release, also after a crash.
 .
 Installing the package installs the hook and keeps a hook that was
 already there; removing it puts that hook back.
CONTROL
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles"
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p "$output"
deb=$output/vmhook_${version}_amd64.deb
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
