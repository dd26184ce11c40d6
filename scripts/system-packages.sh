#!/usr/bin/env bash
# Installs the system packages the sandboxes need, and the Redis server `make run` starts as its
# Celery broker, from Debian's packages, when they are missing; with the argument `browser`, also
# Chromium for the browser tests.
# Quiet and quick when everything is there; a warning (not a failure) where it cannot install,
# in which case the backends that need a package refuse with the reason, and their tests skip.
set -u
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [[ ${1:-} == browser ]]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    echo "warning: cannot install ${missing[*]} (not root, no sudo); make run needs it" >&2
  elif ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: cannot install ${missing[*]} (no apt-get); make run needs it" >&2
  else
    as_root=(); [[ $(id -u) -ne 0 ]] && as_root=(sudo)
    echo "Installing ${missing[*]} from Debian's packages…"
    "${as_root[@]}" apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null ||
      echo "warning: installing ${missing[*]} failed; make run needs it" >&2
  fi
fi

[[ ${1:-} == browser ]] && exit 0

# The microVM backend's host tools (QEMU and friends), when that backend is present.
if [[ -x vmdriver/guest/host-packages.sh ]]; then
  vmdriver/guest/host-packages.sh || echo "warning: the microVM host packages did not install" >&2
fi
exit 0
