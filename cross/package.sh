#!/usr/bin/env bash
# Build the Debian package for amd64, arm64 or armhf with cargo-deb (metadata in Cargo.toml).
# Usage: cross/package.sh <amd64|arm64|armhf>   Prints the .deb's path last.
set -euo pipefail
arch=${1:?usage: cross/package.sh <amd64|arm64|armhf>}
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null; then
    cargo install -q --locked cargo-deb@3.8.0 >&2
fi
case "$arch" in
amd64)
    cargo build --release -q >&2
    cargo deb --no-build -q >&2
    deb=$(ls -t target/debian/gatemq_*_amd64.deb | head -1) ;;
arm64 | armhf)
    target=aarch64-unknown-linux-gnu
    [ "$arch" = armhf ] && target=armv7-unknown-linux-gnueabihf
    cross/build.sh "$target" >&2
    # The binary is stripped by the release profile already.
    cargo deb --no-build --no-strip -q --target "$target" >&2
    deb=$(ls -t target/"$target"/debian/gatemq_*_"$arch".deb target/debian/gatemq_*_"$arch".deb 2>/dev/null | head -1) ;;
*)
    echo "cross/package.sh: unknown arch $arch" >&2; exit 2 ;;
esac
echo "$deb"
