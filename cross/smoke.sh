#!/usr/bin/env bash
# Run a gatemq build (under qemu-user for ARM) on a loopback port and drive it from the host
# with mosquitto_pub/mosquitto_sub: a QoS 1 round trip, payloads of 1 to 300 bytes and of 100 KB
# intact, a retained message, a device command with its status and response, and a QoS 1 round
# trip over a TLS listener (ring's ARM code on the emulated CPU).
# Usage: cross/smoke.sh <target> [binary]  (binary: default target/<target>/release/gatemq, after
# cross/build.sh <target>; tests/run.sh passes the one extracted from the package)
set -euo pipefail
target=${1:?usage: cross/smoke.sh <target> [binary]}
cd "$(dirname "$0")/.."
. cross/lib.sh
case "$target" in
# The amd64 package's static binary runs on the build machine itself.
x86_64-unknown-linux-musl) qemu=(); libc=qemu-user ;;
aarch64-unknown-linux-musl) qemu=(qemu-aarch64); libc=qemu-user ;;
aarch64-unknown-linux-gnu) qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu); libc=libc6-arm64-cross ;;
armv7-unknown-linux-gnueabihf) qemu=(qemu-arm -L /usr/arm-linux-gnueabihf); libc=libc6-armhf-cross ;;
# ARMv6 (static musl): emulate the Pi Zero's CPU, so any ARMv7 instruction fails the test.
arm-unknown-linux-gnueabihf | arm-unknown-linux-musleabihf)
    target=arm-unknown-linux-musleabihf; qemu=(qemu-arm -cpu arm1176); libc=qemu-user ;;
*) echo "cross/smoke.sh: unknown target $target" >&2; exit 2 ;;
esac
need_apt qemu-user "$libc" mosquitto-clients file openssl
bin=${2:-target/$target/release/gatemq}
[ -x "$bin" ] || { echo "cross/smoke.sh: $bin missing; run cross/build.sh $target first" >&2; exit 1; }
runner=${qemu[0]:-no emulator}

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/devices.toml" <<'TOML'
[lamp]
commands.power = { type = "bool", initial = "OFF" }
commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }
TOML
# A throwaway CA and server certificate for the TLS listener.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
(cd "$work" &&
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 1 -subj /CN=smoke-ca &&
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost &&
    printf 'subjectAltName=IP:127.0.0.1\n' > server.ext &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
        -extfile server.ext -out server.crt) > /dev/null 2>&1
printf 'allow_anonymous true\nlistener 0 127.0.0.1\ndevices_file devices.toml\nsys_interval 0\nlistener 0 127.0.0.1\ncertfile server.crt\nkeyfile server.key\n' > "$work/gatemq.conf"
timeout 120 "${qemu[@]}" "$bin" -c "$work/gatemq.conf" 2> "$work/log" &
pid=$!
port=""
for _ in $(seq 1 200); do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/log" | head -1)
    tls_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (TLS)$/\1/p' "$work/log" | head -1)
    [ -n "$port" ] && [ -n "$tls_port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; echo "broker exited under qemu" >&2; exit 1; }
    sleep 0.05
done
[ -n "$port" ] && [ -n "$tls_port" ] || { cat "$work/log" >&2; echo "broker did not listen" >&2; exit 1; }
file "$bin" | sed 's/^/  /'
echo "  $target broker ($runner) on port $port, TLS on $tls_port"

fail() { echo "SMOKE FAIL ($target): $*" >&2; cat "$work/log" >&2; exit 1; }
sub() { timeout 10 mosquitto_sub -h 127.0.0.1 -p "$port" "$@"; }
pub() { timeout 10 mosquitto_pub -h 127.0.0.1 -p "$port" "$@"; }

# QoS 1 round trip.
sub -t smoke/q1 -q 1 -C 1 > "$work/q1" &
s1=$!
sleep 0.5
pub -t smoke/q1 -q 1 -m "hello from the host"
wait $s1 || fail "no QoS 1 message"
[ "$(cat "$work/q1")" = "hello from the host" ] || fail "QoS 1 payload: $(cat "$work/q1")"

# Payloads of every length from 1 to 300 bytes and one of 100 KB come back byte for byte: every
# size class of the copies (the amd64 binary's own memcpy, src/memcopy.rs) in the real binary.
python3 -c 'import string; a = string.ascii_letters + string.digits
for n in range(1, 301): print("".join(a[(i * 7 + n) % len(a)] for i in range(n)))' > "$work/sizes"
head -c 102400 /dev/urandom > "$work/big"
sub -t smoke/sizes -q 1 -C 300 > "$work/sizes.got" &
s5=$!
sub -t smoke/big -q 1 -C 1 -N > "$work/big.got" &
s6=$!
sleep 0.5
pub -t smoke/sizes -q 1 -l < "$work/sizes"
pub -t smoke/big -q 1 -f "$work/big"
wait $s5 || fail "payloads of 1 to 300 bytes missing"
wait $s6 || fail "the 100 KB payload missing"
cmp -s "$work/sizes" "$work/sizes.got" || fail "a payload of 1 to 300 bytes came back changed"
cmp -s "$work/big" "$work/big.got" || fail "the 100 KB payload came back changed"

# Retained message for a late subscriber.
pub -t smoke/retained -r -q 1 -m kept
got=$(sub -t smoke/retained -C 1 -F '%r %p')
[ "$got" = "1 kept" ] || fail "retained: $got"

# Device command: status, retained state and response; an invalid value is refused.
sub -t 'devices/lamp/#' -v -R -C 4 > "$work/dev" &
s2=$!
sleep 0.5
pub -t devices/lamp/power/set -q 1 -m ON
wait $s2 || fail "device messages missing"
grep -qx 'devices/lamp/power ON' "$work/dev" || fail "status: $(cat "$work/dev")"
grep -qx 'devices/lamp/power/result {"ok":true,"value":"ON"}' "$work/dev" || fail "response: $(cat "$work/dev")"
got=$(sub -t devices/lamp/state -C 1)
[ "$got" = '{"power":"ON","brightness":128}' ] || fail "state: $got"
sub -t devices/lamp/brightness/result -C 1 > "$work/err" &
s3=$!
sleep 0.5
pub -t devices/lamp/brightness/set -q 1 -m 300
wait $s3 || fail "no error response"
[ "$(cat "$work/err")" = '{"ok":false,"error":"brightness: 300 is above max 255"}' ] || fail "error: $(cat "$work/err")"

# QoS 1 over TLS.
tls=(--cafile "$work/ca.crt")
timeout 20 mosquitto_sub -h 127.0.0.1 -p "$tls_port" "${tls[@]}" -t smoke/tls -q 1 -C 1 > "$work/tls" &
s4=$!
sleep 1
timeout 20 mosquitto_pub -h 127.0.0.1 -p "$tls_port" "${tls[@]}" -t smoke/tls -q 1 -m "sealed" || fail "TLS publish"
wait $s4 || fail "no TLS message"
[ "$(cat "$work/tls")" = "sealed" ] || fail "TLS payload: $(cat "$work/tls")"
echo "  smoke ok: QoS 1 round trip, payloads of 1-300 bytes and 100 KB intact, retained, device command and refusal, QoS 1 over TLS ($target)"
