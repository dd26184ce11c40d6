#!/usr/bin/env bash
# Puts promtool (Prometheus's rule and config checker) in .venv/bin for the tests of deploy/,
# taken from Debian's `prometheus` package without installing it: no Prometheus server is
# installed or started. Quiet when promtool is there already; a warning (not a failure) where it
# cannot be had, in which case those tests skip with the reason.
set -u
cd "$(dirname "$0")/.."

target=.venv/bin/promtool
if command -v promtool >/dev/null 2>&1 || [[ -x $target ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "warning: cannot fetch promtool (no apt-get); the promtool checks of deploy/ will skip" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "Fetching promtool from Debian's prometheus package…"
if (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1) &&
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool; then
  mkdir -p "$(dirname "$target")"
  install -m 0755 "$work/usr/bin/promtool" "$target"
else
  echo "warning: fetching promtool failed; the promtool checks of deploy/ will skip" >&2
fi
exit 0
