#!/usr/bin/env bash
# Build the package for one architecture (cross/package.sh), take its binary out with
# dpkg-deb -x, check that it is a static binary for that architecture (ARMv6 for armhf), and
# run the smoke test on that extracted binary (under qemu-user for arm64, and for armhf under
# `qemu-arm -cpu arm1176`, the Pi Zero's CPU). Usage: cross/check-package.sh <amd64|arm64|armhf>
set -euo pipefail
arch=${1:?usage: cross/check-package.sh <amd64|arm64|armhf>}
cd "$(dirname "$0")/.."
. cross/lib.sh
target=$(deb_target "$arch")
deb=$(cross/package.sh "$arch" | tail -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
dpkg-deb -x "$deb" "$out"
echo "  $deb: $(stat -c %s "$deb") bytes, Depends: $(dpkg-deb -f "$deb" Depends)"
echo "  $(check_binary "$arch" "$out/usr/bin/gatemq")"
cross/smoke.sh "$target" "$out/usr/bin/gatemq"
