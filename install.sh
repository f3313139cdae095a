#!/usr/bin/env bash
# Installs vmhook as libvirt's QEMU hook, in one command, on Debian, Ubuntu,
# Fedora or Arch:
#   ./install.sh               build dist/vmhook if needed, then `vmhook install`
#   ./install.sh --uninstall   `vmhook uninstall` (puts back the hook it replaced)
# Further arguments go to vmhook (e.g. --force, --json). Safe to run again.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (sudo ./install.sh): the hook goes to /etc/libvirt/hooks"

# The sources the binary is built from, and the script that builds it: a build
# is needed when any is newer.
SOURCES=(hooks lib plugins packaging/build.ts package.json package-lock.json tsconfig.json)

needs_build() {
  [ -x dist/vmhook ] || return 0
  [ -n "$(find "${SOURCES[@]}" -newer dist/vmhook -print -quit 2>/dev/null)" ]
}

# node and npm from the distribution, only when they are missing: npm ci
# fetches the bun compiler the build uses.
ensure_npm() {
  command -v npm >/dev/null && return
  echo "install.sh: installing node and npm with the system package manager" >&2
  if command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
  elif command -v dnf >/dev/null; then
    dnf install -y nodejs npm
  elif command -v pacman >/dev/null; then
    pacman -S --needed --noconfirm nodejs npm
  else
    die "npm is missing and no apt-get, dnf or pacman was found; install node (>= 18) and npm, then run again"
  fi
}

build() {
  ensure_npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 18 ] || die "node $major is too old to build vmhook (needs >= 18, e.g. from NodeSource); or build elsewhere and copy dist/vmhook here"
  npm ci --no-audit --no-fund
  npm run build
}

if [ "${1:-}" = "--uninstall" ]; then
  shift
  # The installed hook uninstalls itself, run as the CLI (any name but qemu):
  # found by its marker, not by /usr/local/bin/vmhook, which an uninstall
  # killed on the way may have removed already. A checkout without a build
  # still can; one stopped after the hook was put back needs a build to finish.
  if grep -qa vmhook-binary-marker: /etc/libvirt/hooks/qemu 2>/dev/null; then
    exec -a vmhook /etc/libvirt/hooks/qemu uninstall "$@"
  elif [ -x dist/vmhook ]; then
    exec dist/vmhook uninstall "$@"
  elif [ -e /etc/vmhook/install.json ]; then
    die "an uninstall stopped on the way left /etc/vmhook/install.json, and no vmhook binary is here to finish it; run ./install.sh to build and install, then ./install.sh --uninstall"
  fi
  echo "install.sh: vmhook is not installed; nothing to do" >&2
  exit 0
fi

if needs_build; then build; fi
exec dist/vmhook install "$@"
