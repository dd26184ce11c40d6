#!/usr/bin/env bash
# Puts promtool (Prometheus's rule and config checker) and the prometheus server binary in
# .venv/bin for the tests of deploy/ and of the autoscaler's Prometheus source, taken from
# Debian's `prometheus` package without installing it: no service is installed or started (the
# tests run their own server on loopback, and stop it). Quiet when both are there already; a
# warning (not a failure) where they cannot be had, in which case those tests skip with the reason.
set -u
cd "$(dirname "$0")/.."

missing=()
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x .venv/bin/$tool ]] || missing+=("$tool")
done
((${#missing[@]})) || exit 0
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "warning: cannot fetch ${missing[*]} (no apt-get); the tests that need them will skip" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "Fetching ${missing[*]} from Debian's prometheus package…"
members=()
for tool in "${missing[@]}"; do members+=("./usr/bin/$tool"); done
if (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1) &&
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" "${members[@]}"; then
  mkdir -p .venv/bin
  for tool in "${missing[@]}"; do install -m 0755 "$work/usr/bin/$tool" ".venv/bin/$tool"; done
else
  echo "warning: fetching ${missing[*]} failed; the tests that need them will skip" >&2
fi
exit 0
