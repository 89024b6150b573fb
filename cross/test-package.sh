#!/usr/bin/env bash
# Install the amd64 package on this machine, check it, and remove it again:
# dpkg -i, the system user, the unit, `gatemq --test-config -c /etc/gatemq/gatemq.conf`, the unit
# verified by systemd-analyze, then dpkg -r and dpkg -P leave nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh
deb=$(cross/package.sh amd64 | tail -1)
echo "  package: $deb ($(du -k "$deb" | cut -f1) KiB)"
fail() { echo "PACKAGE TEST FAIL: $*" >&2; exit 1; }
if dpkg -s gatemq >/dev/null 2>&1; then as_root dpkg -P gatemq >/dev/null; fi
as_root dpkg -i "$deb" >/dev/null || fail "dpkg -i failed"
[ -x /usr/bin/gatemq ] || fail "no /usr/bin/gatemq"
getent passwd gatemq >/dev/null || fail "no gatemq user"
[ "$(stat -c %U /var/lib/gatemq)" = gatemq ] || fail "/var/lib/gatemq not owned by gatemq"
unit=$(ls /lib/systemd/system/gatemq.service /usr/lib/systemd/system/gatemq.service 2>/dev/null | head -1)
[ -n "$unit" ] || fail "unit not installed"
dpkg-query -W -f='${Conffiles}\n' gatemq | grep -q /etc/gatemq/gatemq.conf || fail "gatemq.conf is not a conffile"
dpkg-query -W -f='${Conffiles}\n' gatemq | grep -q /etc/gatemq/devices.toml || fail "devices.toml is not a conffile"
out=$(/usr/bin/gatemq --test-config -c /etc/gatemq/gatemq.conf) || fail "--test-config: $out"
echo "  $out"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
    echo "  systemd-analyze verify $unit: ok"
fi
as_root dpkg -r gatemq >/dev/null || fail "dpkg -r failed"
[ ! -e /usr/bin/gatemq ] || fail "/usr/bin/gatemq left after dpkg -r"
[ ! -e "$unit" ] || fail "unit left after dpkg -r"
[ -e /etc/gatemq/gatemq.conf ] || fail "dpkg -r removed a conffile (only purge should)"
as_root dpkg -P gatemq >/dev/null || fail "dpkg -P failed"
[ ! -e /etc/gatemq/gatemq.conf ] || fail "conffile left after purge"
[ ! -e /var/lib/gatemq ] || fail "/var/lib/gatemq left after purge"
! getent passwd gatemq >/dev/null || fail "gatemq user left after purge"
echo "  package installs, verifies, removes and purges cleanly"
