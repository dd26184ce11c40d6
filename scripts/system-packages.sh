#!/usr/bin/env bash
# Installs the system packages the sandboxes need, and the Redis server `make run` starts as its
# Celery broker, from Debian's packages, when they are missing; with the argument `browser`, also
# Chromium for the browser tests; with `nginx`, only nginx, for the tests of deploy/nginx/ (its
# binary only: the package's own service is stopped and disabled, as the tests run their own).
# Quiet and quick when everything is there; a warning (not a failure) where it cannot install,
# in which case the backends that need a package refuse with the reason, and their tests skip.
set -u
cd "$(dirname "$0")/.."

missing=()
as_root=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
case ${1:-} in
  browser) command -v chromium >/dev/null 2>&1 || missing+=(chromium) ;;
  nginx) missing=(); [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || missing+=(nginx) ;;
esac

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

if [[ ${1:-} == nginx ]]; then
  # Installed just now, Debian's package starts its default site on port 80: the tests start
  # their own nginx on loopback ports, so this one is stopped and kept from starting at boot.
  if [[ " ${missing[*]} " == *" nginx "* && -x /usr/sbin/nginx ]]; then
    "${as_root[@]}" service nginx stop >/dev/null 2>&1 || true
    "${as_root[@]}" update-rc.d nginx disable >/dev/null 2>&1 || true
    "${as_root[@]}" systemctl disable nginx >/dev/null 2>&1 || true
  fi
  exit 0
fi
[[ -n ${1:-} ]] && exit 0

# The microVM backend's host tools (QEMU and friends), when that backend is present.
if [[ -x vmdriver/guest/host-packages.sh ]]; then
  vmdriver/guest/host-packages.sh || echo "warning: the microVM host packages did not install" >&2
fi
exit 0
