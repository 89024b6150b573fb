#!/usr/bin/env bash
# Build the Debian package for amd64, arm64 or armhf with cargo-deb (metadata in Cargo.toml).
# Every package carries one static musl binary (cross/build.sh builds it, once; a second call
# finds it up to date): no libc dependency, so one package per architecture runs on any Debian
# or Raspberry Pi OS release, and armhf's binary is ARMv6, so it runs on every 32-bit Pi.
#
#   amd64  x86_64-unknown-linux-musl
#   arm64  aarch64-unknown-linux-musl     Pi 3/4/5, 64-bit OS
#   armhf  arm-unknown-linux-musleabihf   every 32-bit Pi: Zero, Zero W, 1, 2, 3, 4 (ARMv6 code)
#
# Usage: cross/package.sh <amd64|arm64|armhf> [extra cargo args for the build...]
# Prints the .deb's path last.
set -euo pipefail
arch=${1:?usage: cross/package.sh <amd64|arm64|armhf>}
shift
cd "$(dirname "$0")/.."
. cross/lib.sh
target=$(deb_target "$arch")
need_apt binutils  # readelf, for check_binary
if ! command -v cargo-deb >/dev/null; then
    cargo install -q --locked cargo-deb@3.8.0 >&2
fi
bin=$(cross/build.sh "$target" "$@" | tail -1)
check_binary "$arch" "$bin" >&2
# The binary is stripped by the release profile already.
# cargo deb prints the path of the package it wrote.
deb=$(cargo deb --no-build --no-strip -q --target "$target" | tail -1)
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] ||
    { echo "cross/package.sh: $deb says Architecture: $(dpkg-deb -f "$deb" Architecture)" >&2; exit 1; }
echo "$deb"
