#!/usr/bin/env bash
# Install the amd64 package into a throwaway Debian 12 root, never into this machine's own
# system: dpkg -i, the system user, the unit, `gatemq --test-config`, the broker started as
# installed (its user, its config, in a network namespace of its own so port 1883 of the host
# is not touched) with its RSS at start checked against 2 MB, the unit verified by
# systemd-analyze, then dpkg -r and dpkg -P leave nothing behind inside that root.
#
# The root: `debootstrap --variant=minbase --include=adduser,systemd,procps bookworm`, made
# once and kept in target/pkg-root/base; every run works on a fresh copy of it,
# deleted at the end. Needs root (sudo otherwise) for debootstrap, chroot and unshare.
# Usage: cross/test-package.sh [path.deb]  (default: cross/package.sh amd64)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh
deb=${1:-$(cross/package.sh amd64 | tail -1)}
echo "  package: $deb ($(du -k "$deb" | cut -f1) KiB)"
fail() {
    echo "PACKAGE TEST FAIL: $*" >&2
    if [ -n "${log:-}" ]; then cat "$log" >&2; rm -f "$log"; fi
    exit 1
}

# adduser for the postinst; systemd and procps (/bin/kill of ExecReload) so that
# systemd-analyze verify --root checks the unit against that root.
include=adduser,systemd,procps
base="$PWD/target/pkg-root/base"
if [ "$(cat "$base/.gatemq-include" 2>/dev/null)" != "$include" ]; then
    need_apt debootstrap
    as_root rm -rf "$base" "$base.tmp"
    mkdir -p target/pkg-root
    echo "  debootstrap: a minimal Debian 12 root with $include in $base (once)"
    as_root debootstrap --variant=minbase --include="$include" bookworm "$base.tmp" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null ||
        fail "debootstrap failed"
    echo "$include" | as_root tee "$base.tmp/.gatemq-include" >/dev/null
    as_root mv "$base.tmp" "$base"
fi
# unshare (util-linux) and ip (iproute2) for the broker's own network namespace.
need_apt iproute2 util-linux
root=$(mktemp -d "$PWD/target/pkg-root/run.XXXXXX")
log=""
pid=""
cleanup() {
    [ -z "$pid" ] || as_root kill "$pid" 2>/dev/null || true
    as_root rm -rf "$root"
}
trap cleanup EXIT
as_root cp -a "$base/." "$root/"
in_root() { as_root chroot "$root" "$@"; }

as_root cp "$deb" "$root/tmp/gatemq.deb"
in_root dpkg -i /tmp/gatemq.deb >/dev/null || fail "dpkg -i failed"
[ -x "$root/usr/bin/gatemq" ] || fail "no /usr/bin/gatemq"
in_root getent passwd gatemq >/dev/null || fail "no gatemq user"
[ "$(in_root stat -c %U /var/lib/gatemq)" = gatemq ] || fail "/var/lib/gatemq not owned by gatemq"
unit=$(cd "$root" && ls lib/systemd/system/gatemq.service usr/lib/systemd/system/gatemq.service 2>/dev/null | head -1)
[ -n "$unit" ] || fail "unit not installed"
in_root dpkg-query -W -f='${Conffiles}\n' gatemq | grep -q /etc/gatemq/gatemq.conf || fail "gatemq.conf is not a conffile"
in_root dpkg-query -W -f='${Conffiles}\n' gatemq | grep -q /etc/gatemq/devices.toml || fail "devices.toml is not a conffile"
out=$(in_root /usr/bin/gatemq --test-config -c /etc/gatemq/gatemq.conf) || fail "--test-config: $out"
echo "  $out"

# The broker as installed: the packaged binary, config and state directory, as the gatemq user.
log=$(mktemp)
as_root unshare -n sh -c 'echo $$ > "$1/tmp/gatemq.pid"; ip link set lo up && exec chroot --userspec=gatemq:gatemq "$1" /usr/bin/gatemq -c /etc/gatemq/gatemq.conf' \
    sh "$root" 2>"$log" &
for _ in $(seq 1 100); do
    grep -q 'listening on 127.0.0.1:1883' "$log" && break
    sleep 0.05
done
pid=$(cat "$root/tmp/gatemq.pid")
grep -q 'listening on 127.0.0.1:1883' "$log" || fail "the installed broker did not listen on 127.0.0.1:1883"
sleep 0.5
rss=$(as_root awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
anon=$(as_root awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
echo "  installed broker started (as gatemq, /etc/gatemq/gatemq.conf): RSS at start $rss kB (RssAnon $anon kB)"
[ "$rss" -le 2048 ] || fail "RSS at start $rss kB is above 2 MB (2048 kB)"
as_root kill -TERM "$pid"
for _ in $(seq 1 100); do as_root kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
! as_root kill -0 "$pid" 2>/dev/null || fail "the installed broker did not stop on SIGTERM"
pid=""
rm -f "$log"
log=""

if command -v systemd-analyze >/dev/null; then
    # The unit names /usr/bin/gatemq, so it is checked against the throwaway root.
    systemd-analyze verify --root="$root" "/$unit" || fail "systemd-analyze verify $unit"
    echo "  systemd-analyze verify $unit: ok"
fi
in_root dpkg -r gatemq >/dev/null || fail "dpkg -r failed"
[ ! -e "$root/usr/bin/gatemq" ] || fail "/usr/bin/gatemq left after dpkg -r"
[ ! -e "$root/$unit" ] || fail "unit left after dpkg -r"
[ -e "$root/etc/gatemq/gatemq.conf" ] || fail "dpkg -r removed a conffile (only purge should)"
in_root dpkg -P gatemq >/dev/null || fail "dpkg -P failed"
[ ! -e "$root/etc/gatemq/gatemq.conf" ] || fail "conffile left after purge"
[ ! -e "$root/var/lib/gatemq" ] || fail "/var/lib/gatemq left after purge"
! in_root getent passwd gatemq >/dev/null || fail "gatemq user left after purge"
echo "  package installs, starts, verifies, removes and purges cleanly (in a throwaway root; host untouched)"
