#!/usr/bin/env bash
# Installs the system packages Loom builds against, when they are missing (Debian/Ubuntu).
# Safe to run repeatedly; does nothing when everything is present. `--python` also makes
# sure of python3 and pip (the tests fetch NVRTC from PyPI with it).
set -euo pipefail

need=()
for pkg in libopenblas-dev libdnnl-dev zlib1g-dev libpng-dev pkg-config libopenmpi-dev openmpi-bin; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${1:-}" = "--python" ] && ! python3 -m pip --version >/dev/null 2>&1; then
  need+=(python3 python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null 2>&1 || { [ -x /opt/swift/usr/bin/swift ] && echo "setup: add /opt/swift/usr/bin to PATH" >&2; }
