#!/usr/bin/env bash
# Benchmarks gatemq against Debian's Mosquitto side by side in one run and writes the results
# into BENCHMARKS.md (between its gatemq-bench markers; the rest of the file is kept).
#
#   ./tests/bench/run.sh
#
# Both brokers run pinned to CPU 0 (taskset -c 0), the load generator (gatemq-bench) to CPU 1.
# Beside them runs "gatemq-static", the binary users get: taken out of the amd64 package
# (cross/package.sh amd64, static musl), in the idle (RSS at start), fan-in and fan-out runs.
# Every scenario runs against both brokers, REPS times (3); the table shows the medians.
# Per repetition each broker is started fresh three times, so the memory figures are not
# skewed by earlier scenarios: (1) RSS at start, idle wake-ups, 1 000 idle connections;
# (2) 10 000 idle connections; (3) fan-in QoS 0 and 1, fan-out, latency, device commands.
# Then MQTT-SN through gatemq's gateway (tests/bench/mqttsn.sh: wire cost of one reading,
# messages through the gateway; Mosquitto has none). A full run takes about 6 minutes. Knobs (environment): REPS=3, LOAD_SECONDS=3 (each fan-in,
# fan-out and devices run), LATENCY_SECONDS=10, IDLE_SECONDS=10, BIG_CONNECTIONS=10000.
#
# Exit status: 0 when every run completed (targets met or not: see BENCHMARKS.md), 1 when a
# run failed, e.g. a QoS 1 run that lost an acknowledged message.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
started=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

REPS=${REPS:-3}
LOAD_SECONDS=${LOAD_SECONDS:-3}
LATENCY_SECONDS=${LATENCY_SECONDS:-10}
IDLE_SECONDS=${IDLE_SECONDS:-10}
BIG_CONNECTIONS=${BIG_CONNECTIONS:-10000}
command_line="./tests/bench/run.sh"
for v in BIG_CONNECTIONS IDLE_SECONDS LATENCY_SECONDS LOAD_SECONDS REPS; do
    if printenv "$v" >/dev/null; then command_line="$v=${!v} $command_line"; fi
done

step "dependencies"
for tool in taskset getconf; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (util-linux, libc-bin)" >&2; exit 1; }
done
mosquitto=$(command -v mosquitto || true)
[ -n "$mosquitto" ] || [ ! -x /usr/sbin/mosquitto ] || mosquitto=/usr/sbin/mosquitto
if [ -z "$mosquitto" ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto >/dev/null
    mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
mosquitto_version=$("$mosquitto" -h 2>/dev/null | head -n 1 || true)
echo "$mosquitto_version ($mosquitto)"
if [ "$(nproc)" -lt 2 ]; then
    echo "run.sh: needs 2 CPUs (broker on CPU 0, load on CPU 1); this machine has $(nproc)" >&2
    exit 1
fi

step "cargo build --release"
cargo build --release --quiet --bin gatemq --bin gatemq-bench
# The binary users get: the amd64 package's static musl build (cross/package.sh amd64),
# taken out of the .deb, runs as "gatemq-static" beside the glibc build on the same scenarios.
deb=$(cross/package.sh amd64 | tail -1)
static_dir=$(mktemp -d /tmp/gatemq-bench-deb.XXXXXX)
dpkg-deb -x "$deb" "$static_dir"
static_bin="$static_dir/usr/bin/gatemq"
work=$(mktemp -d /tmp/gatemq-bench.XXXXXX)
# Copies, so a rebuild during the run changes nothing.
cp target/release/gatemq target/release/gatemq-bench "$work/"
cp "$static_bin" "$work/gatemq-static"
rm -rf "$static_dir"
bench="$work/gatemq-bench"
gatemq="$work/gatemq"
records="$work/records.tsv"
: >"$records"
echo "work directory: $work"

# Open files: the bench holds BIG_CONNECTIONS sockets and so does each broker.
need=$((BIG_CONNECTIONS + 200))
fd_note=""
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ]; then
        ulimit -n "$need"
    else
        # The bench opens what fits and says so (see the "opened" row).
        ulimit -n "$hard"
        fd_note="the open files limit (ulimit -Hn $hard) is below the $need that $BIG_CONNECTIONS connections need: fewer were opened"
        echo "run.sh: note: $fd_note"
    fi
fi
echo "ulimit -n: $(ulimit -n)"

cat >"$work/devices.toml" <<'EOF'
[lamp]
name = "Bench lamp"
commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }
EOF

# Other work on the machine disturbs every figure: before each phase, wait (up to 30 s) for
# it to stop; and as root, run brokers and bench under SCHED_FIFO (chrt -f 10; else nice -10),
# so that what still runs cannot delay their wake-ups (without it, a busy machine turns the
# latency p99 into a 1 ms scheduler tick). The interference left is measured and reported.
quiet() { "$bench" quiet --seconds 30; }
prio=()
prio_note="none (not root)"
if [ "$(id -u)" = 0 ]; then
    if command -v chrt >/dev/null && chrt -f 10 true 2>/dev/null; then
        prio=(chrt -f 10) prio_note="SCHED_FIFO priority 10 (\`chrt -f 10\`)"
    else
        prio=(nice -n -10) prio_note="\`nice -n -10\`"
    fi
fi

gatemq_pid="" mosquitto_pid="" static_pid="" gatemq_port="" mosquitto_port="" static_port=""
gatemq_conf() { # $1: port, $2: a folder of its own for the devices' state file
    mkdir -p "$2"
    cat <<EOF
listener $1 127.0.0.1
allow_anonymous true
max_inflight_messages 0
max_queued_messages 10000
sys_interval 0
devices_file devices.toml
persistence_location $2
EOF
}
start_brokers() { # $1: label for the log files
    gatemq_port=$("$bench" free-port)
    mosquitto_port=$("$bench" free-port)
    while [ "$mosquitto_port" = "$gatemq_port" ]; do mosquitto_port=$("$bench" free-port); done
    static_port=$("$bench" free-port)
    while [ "$static_port" = "$gatemq_port" ] || [ "$static_port" = "$mosquitto_port" ]; do static_port=$("$bench" free-port); done
    # Each gatemq keeps its devices' last values (gatemq-devices.db) in its own folder: two
    # brokers on one store would write over each other.
    gatemq_conf "$gatemq_port" "$work/state-gatemq" >"$work/gatemq.conf"
    gatemq_conf "$static_port" "$work/state-static" >"$work/gatemq-static.conf"
    cat >"$work/mosquitto.conf" <<EOF
listener $mosquitto_port 127.0.0.1
allow_anonymous true
max_inflight_messages 0
max_queued_messages 10000
EOF
    "${prio[@]}" taskset -c 0 "$gatemq" -c "$work/gatemq.conf" 2>>"$work/gatemq-$1.log" &
    gatemq_pid=$!
    "${prio[@]}" taskset -c 0 "$mosquitto" -c "$work/mosquitto.conf" 2>>"$work/mosquitto-$1.log" &
    mosquitto_pid=$!
    "${prio[@]}" taskset -c 0 "$work/gatemq-static" -c "$work/gatemq-static.conf" 2>>"$work/gatemq-static-$1.log" &
    static_pid=$!
    "$bench" wait --port "$gatemq_port"
    "$bench" wait --port "$mosquitto_port"
    "$bench" wait --port "$static_port"
}
stop_brokers() {
    for pid in $gatemq_pid $mosquitto_pid $static_pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    gatemq_pid="" mosquitto_pid="" static_pid=""
}
trap stop_brokers EXIT

# run BROKER SCENARIO [options]: the bench on CPU 1 against BROKER; a failure is recorded.
run() {
    local name=$1 scenario=$2 port pid
    shift 2
    case "$name" in
    gatemq) port=$gatemq_port pid=$gatemq_pid ;;
    gatemq-static) port=$static_port pid=$static_pid ;;
    *) port=$mosquitto_port pid=$mosquitto_pid ;;
    esac
    local rc=0
    "${prio[@]}" taskset -c 1 "$bench" "$scenario" --broker "$name" --port "$port" --pid "$pid" \
        --record "$records" "$@" || rc=$?
    if [ "$rc" != 0 ]; then
        printf '%s\tFAIL\t%s %s (repetition %s): exit %s%s\n' "$name" "$scenario" "$*" "$rep" "$rc" \
            "$([ "$rc" = 2 ] && echo ', LOST ACKNOWLEDGED QoS 1 MESSAGES')" >>"$records"
        echo "!!! $name $scenario failed (exit $rc)" >&2
    fi
}
# both SCENARIO [options]: the scenario against each broker, the first one alternating.
both() {
    if [ $((rep % 2)) = 1 ]; then run gatemq "$@"; run mosquitto "$@"; else run mosquitto "$@"; run gatemq "$@"; fi
}
# all3 SCENARIO [options]: the same with the shipped static build too, the order alternating.
all3() {
    if [ $((rep % 2)) = 1 ]; then
        run gatemq "$@"; run gatemq-static "$@"; run mosquitto "$@"
    else
        run mosquitto "$@"; run gatemq-static "$@"; run gatemq "$@"
    fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq 1 "$REPS"); do
    step "repetition $rep of $REPS: RSS at start, idle wake-ups, 1 000 connections"
    quiet
    start_brokers "$rep"
    run gatemq idle --seconds "$IDLE_SECONDS" &
    idle_g=$!
    run mosquitto idle --seconds "$IDLE_SECONDS" &
    idle_m=$!
    run gatemq-static idle --seconds "$IDLE_SECONDS" &
    idle_s=$!
    wait "$idle_g" "$idle_m" "$idle_s"
    both connections --connections 1000
    stop_brokers

    step "repetition $rep of $REPS: $BIG_CONNECTIONS connections"
    quiet
    start_brokers "$rep"
    both connections --connections "$BIG_CONNECTIONS"
    stop_brokers

    step "repetition $rep of $REPS: fan-in, fan-out, latency, device commands"
    quiet
    start_brokers "$rep"
    all3 fan-in --qos 0 --seconds "$LOAD_SECONDS"
    all3 fan-in --qos 1 --seconds "$LOAD_SECONDS"
    all3 fan-out --subscribers 50 --seconds "$LOAD_SECONDS"
    both latency --rate 1000 --seconds "$LATENCY_SECONDS"
    # Mosquitto has no device executor: gatemq only.
    run gatemq devices --seconds "$LOAD_SECONDS"
    stop_brokers
done

step "BENCHMARKS.md"
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
meta=(
    --meta "date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r), $(free -m | awk '/^Mem:/ {print $2}') MiB RAM"
    --meta "gatemq $(git describe --always --dirty 2>/dev/null || echo '(no git)') (release build, glibc) vs $mosquitto_version (Debian's $mosquitto); gatemq-static: the binary of $(basename "$deb") (static musl, \`cross/package.sh amd64\`), same config, in the idle, fan-in and fan-out runs"
    --meta "both brokers pinned to CPU 0 (\`taskset -c 0\`), gatemq-bench to CPU 1 (\`taskset -c 1\`); scheduling of both and the bench: $prio_note; each broker restarted fresh for the memory figures"
    --meta "gatemq config: \`max_inflight_messages 0\`, \`max_queued_messages 10000\`, \`sys_interval 0\`, \`devices_file\` with one \`lamp\` (int \`brightness\`; its last value journaled to \`gatemq-devices.db\` in a folder of each gatemq's own, as with \`persistence false\` it always is); Mosquitto config: \`allow_anonymous true\`, \`max_inflight_messages 0\`, \`max_queued_messages 10000\`, persistence off (default), otherwise defaults; both on a free loopback port"
    --meta "fan-in, fan-out and devices publish for ${LOAD_SECONDS} s each (the broker that is faster routes more messages in that time); QoS 0 goes in windows of 100 messages per publisher closed by a PINGREQ round trip (two windows in flight) and no publisher runs more than 4 000 (fan-in) / 1 000 × 50 (fan-out) deliveries ahead of its subscribers; QoS 1 keeps ≤ 100 PUBLISHes unacknowledged per publisher; payloads 64 bytes"
    --meta "broker CPU: utime+stime from /proc/<pid>/stat over the run (CLK_TCK $(getconf CLK_TCK)); RSS: VmRSS of /proc/<pid>/status; wake-ups: voluntary+nonvoluntary context switches of /proc/<pid>/status over ${IDLE_SECONDS} s, right after start; bench CPU: its own /proc/self/stat; latency: ${LATENCY_SECONDS} s at 1 000 msg/s, QoS 0, first 200 messages not counted"
)
meta+=(--meta "load average (1, 5, 15 min) before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)")
[ -z "$fd_note" ] || meta+=(--meta "note: $fd_note")
rc=0
"$bench" report --record "$records" --out "$root/BENCHMARKS.md" --command "$command_line" \
    --base gatemq --other mosquitto "${meta[@]}" || rc=$?
[ "$rc" != 1 ] || exit 1
sed -n '/## Targets/,/gatemq-bench:end/p' "$root/BENCHMARKS.md"
# MQTT-SN, which Mosquitto does not have: gatemq alone, its own section of BENCHMARKS.md.
step "MQTT-SN (tests/bench/mqttsn.sh)"
REPS=$REPS LOAD_SECONDS=$LOAD_SECONDS VENV="${VENV:-$root/.venv}" ./tests/bench/mqttsn.sh
step "done in $(($(date +%s) - started)) s (records: $work/records.tsv; broker logs in $work)"
if grep -q "$(printf '\tFAIL\t')" "$records"; then
    echo "!!! some runs FAILED: see BENCHMARKS.md and the output above" >&2
    exit 1
fi
