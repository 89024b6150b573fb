#!/usr/bin/env bash
# Build a release gatemq for a Raspberry Pi target on a Debian 12 machine, installing what the
# build needs. Usage: cross/build.sh <target> [extra cargo args...]
#
#   x86_64-unknown-linux-musl      static, the amd64 package's binary
#   aarch64-unknown-linux-musl     static, Pi 3/4/5 with a 64-bit OS: the arm64 package's binary
#   arm-unknown-linux-musleabihf   static ARMv6, every 32-bit Pi (Zero/1 up to 4): the armhf
#                                  package's binary (see below); arm-unknown-linux-gnueabihf is
#                                  accepted as its alias
#   aarch64-unknown-linux-gnu      glibc, Pi 3/4/5 with a 64-bit OS (not packaged)
#   armv7-unknown-linux-gnueabihf  glibc, 32-bit Raspberry Pi OS on Pi 2/3/4 only (not packaged)
#
# x86_64 and aarch64 musl: rustup's target std, which brings musl's libc.a and start files
# (rustc links them itself), and gcc (Debian's cross gcc for aarch64) compiling ring's C and
# linking. The result is one static binary: no libc, ld.so or libm mapped at start.
#
# aarch64 and armv7 glibc: rustup's target std and Debian's cross gcc as the linker. If rustup cannot
# get the target, Debian's own toolchain is used instead: rustc-web with the target's
# libstd-rust-web-dev unpacked into a private sysroot (the crate's rust-version allows it).
#
# ARMv6: no prebuilt std exists for it here, Debian's armhf gcc links ARMv7/Thumb-2 start files,
# and Debian's armhf glibc is ARMv7 code too (a glibc build dies with SIGILL on an emulated
# ARM1176 inside ld.so). So the ARMv6 build is static musl: std is built from source (rust-src,
# -Z build-std) for the Pi Zero's ARM1176JZF-S and linked by zig (PyPI ziglang +
# cargo-zigbuild, both wheels), which brings an ARMv6 musl. The result is checked with readelf for
# Tag_CPU_arch: v6, and it runs on any Pi OS, 32-bit or 64-bit userland, with no libc.
#
# Only the broker binary is built (`--bin gatemq`): the bench tool is not shipped, and an LTO
# link of it for every target was work that no package or smoke test used.
#
# Prints the path of the binary last.
set -euo pipefail
target=${1:?usage: cross/build.sh <target> [cargo args...]}
shift
cd "$(dirname "$0")/.."
. cross/lib.sh
upper=$(echo "$target" | tr 'a-z-' 'A-Z_')

case "$target" in
x86_64-unknown-linux-musl)
    gcc_pkg=gcc; linker=gcc; deb_arch="" ;;
aarch64-unknown-linux-musl)
    gcc_pkg=gcc-aarch64-linux-gnu; linker=aarch64-linux-gnu-gcc; deb_arch="" ;;
aarch64-unknown-linux-gnu)
    gcc_pkg=gcc-aarch64-linux-gnu; linker=aarch64-linux-gnu-gcc; deb_arch=arm64 ;;
armv7-unknown-linux-gnueabihf)
    gcc_pkg=gcc-arm-linux-gnueabihf; linker=arm-linux-gnueabihf-gcc; deb_arch=armhf ;;
arm-unknown-linux-gnueabihf | arm-unknown-linux-musleabihf)
    target=arm-unknown-linux-musleabihf; upper=ARM_UNKNOWN_LINUX_MUSLEABIHF
    gcc_pkg=""; linker=""; deb_arch="" ;;
*)
    echo "cross/build.sh: unknown target $target" >&2; exit 2 ;;
esac

if [ "$target" = arm-unknown-linux-musleabihf ]; then
    rustup component add rust-src >/dev/null 2>&1
    # zig and cargo-zigbuild as prebuilt PyPI wheels in a venv kept in target/, rather than
    # compiling cargo-zigbuild with `cargo install` on every fresh machine.
    venv=target/cross-tools
    if ! "$venv/bin/python" -c 'import ziglang' 2>/dev/null || [ ! -x "$venv/bin/cargo-zigbuild" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check ziglang==0.17.1 cargo-zigbuild==0.21.8 >&2
    fi
    # cargo-zigbuild runs `python3 -m ziglang` when no zig is on PATH: the venv's python.
    export PATH="$PWD/$venv/bin:$PATH"
    unset "CARGO_TARGET_${upper}_LINKER" 2>/dev/null || true
    # Pi Zero/1: ARM1176JZF-S, ARMv6 with VFPv2.
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C target-cpu=arm1176jzf-s -C link-self-contained=no" \
        cargo zigbuild --release --bin gatemq --target "$target" -Z build-std=std,panic_abort "$@" >&2
    bin="target/$target/release/gatemq"
    if ! readelf -A "$bin" | grep -q 'Tag_CPU_arch: v6'; then
        echo "cross/build.sh: $bin is not an ARMv6 binary:" >&2
        readelf -A "$bin" | grep Tag_CPU_arch >&2
        exit 1
    fi
    echo "$bin"
    exit 0
fi

need_apt "$gcc_pkg"
case "$target" in *-musl)
    # rustup's std or nothing: Debian has no musl std for rustc-web.
    # (A std already in the toolchain is used as is: rustup refuses to add a target again when
    # a concurrent or interrupted install left its files unregistered.)
    ls "$(rustc --print sysroot)/lib/rustlib/$target/lib/"libstd-*.rlib >/dev/null 2>&1 ||
        rustup target add "$target" >/dev/null 2>&1 ||
        { echo "cross/build.sh: rustup cannot add $target" >&2; exit 1; }
    export "CARGO_TARGET_${upper}_LINKER=$linker" "CC_${target//-/_}=$linker"
    cargo build --release --bin gatemq --target "$target" "$@" >&2
    echo "target/$target/release/gatemq"
    exit 0 ;;
esac
if rustup target add "$target" >/dev/null 2>&1; then
    export "CARGO_TARGET_${upper}_LINKER=$linker"
    cargo build --release --bin gatemq --target "$target" "$@" >&2
else
    # Debian's route: /usr/bin/cargo and rustc (rustc-web) with the target's std unpacked
    # privately (installing it through multiarch breaks qemu; see the README).
    echo "cross/build.sh: rustup has no $target std, using Debian's rustc-web" >&2
    need_apt rustc-web cargo-web
    version=$(dpkg-query -W -f='${Version}' rustc-web)
    sysroot="$PWD/target/sysroot-$deb_arch"
    if [ ! -d "$sysroot/usr/lib/rustlib/$target" ]; then
        as_root dpkg --add-architecture "$deb_arch"
        as_root apt-get update -qq
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download "libstd-rust-web-dev:$deb_arch=$version" >/dev/null)
        mkdir -p "$sysroot"
        dpkg-deb -x "$tmp"/libstd-rust-web-dev_*.deb "$sysroot"
        rm -rf "$tmp"
    fi
    export "CARGO_TARGET_${upper}_LINKER=$linker"
    export "CARGO_TARGET_${upper}_RUSTFLAGS=--sysroot=$sysroot/usr"
    PATH="/usr/bin:$PATH" /usr/bin/cargo build --release --bin gatemq --target "$target" "$@" >&2
fi
echo "target/$target/release/gatemq"
