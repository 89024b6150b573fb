# Shared by the cross/ scripts (sourced, not run).

# Run a command as root: directly when we are root (CI), else through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Install the Debian packages named that are not installed yet.
need_apt() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The Debian architectures gatemq is packaged for, and the static (musl) target each package's
# binary is built for. armhf is ARMv6 so that it runs on every 32-bit Pi (Zero, Zero W, 1..4).
deb_archs="amd64 arm64 armhf"
deb_target() {
    case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    armhf) echo arm-unknown-linux-musleabihf ;;
    *) echo "unknown Debian architecture $1 (amd64, arm64, armhf)" >&2; return 2 ;;
    esac
}

# check_binary ARCH FILE: FILE is a static executable for ARCH (no ELF interpreter, no shared
# libraries), and for armhf an ARMv6 one. Prints one line saying what was checked.
check_binary() {
    local arch=$1 bin=$2 machine
    machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
    case "$arch" in
    amd64) [ "$machine" = "Advanced Micro Devices X86-64" ] ;;
    arm64) [ "$machine" = AArch64 ] ;;
    armhf) [ "$machine" = ARM ] && readelf -A "$bin" | grep -q 'Tag_CPU_arch: v6$' &&
        readelf -A "$bin" | grep -q 'Tag_ABI_VFP_args: VFP registers' ;;
    esac || { echo "$bin: not an $arch binary (Machine: $machine; $(readelf -A "$bin" 2>/dev/null | grep Tag_CPU_arch:))" >&2; return 1; }
    if readelf -l "$bin" | grep -q 'Requesting program interpreter' ||
        readelf -d "$bin" | grep -q '(NEEDED)'; then
        echo "$bin: not static:" >&2
        readelf -l "$bin" | grep interpreter >&2 || true
        readelf -d "$bin" | grep NEEDED >&2 || true
        return 1
    fi
    echo "$bin: $arch, $machine$([ "$arch" = armhf ] && echo ', Tag_CPU_arch: v6, hard float'), static (no interpreter, no NEEDED), $(stat -c %s "$bin") bytes"
}
