#!/usr/bin/env bash
# Installs, from Debian's packages, what the qemu backend needs on the host: QEMU itself
# (qemu-system-x86, without recommends: no GUI, no firmware for other machines). The guest build
# needs only apt-get and dpkg-deb besides, which every Debian has; it fetches everything else
# (kernel, busybox, Python) as .debs and unpacks them without installing them.
# Idempotent and quiet when everything is there; exits non-zero only when it could not install.
set -u

command -v qemu-system-x86_64 >/dev/null 2>&1 && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: no apt-get here; install qemu-system-x86_64 by hand for the qemu backend" >&2
  exit 1
fi
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "warning: cannot install qemu-system-x86 (not root, no sudo); the qemu backend needs it" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "Installing qemu-system-x86 from Debian's packages…"
"${as_root[@]}" apt-get update -qq >/dev/null || true
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  qemu-system-x86 >/dev/null
