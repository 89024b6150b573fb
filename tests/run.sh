#!/usr/bin/env bash
# Runs every test of gatemq on a fresh Debian 12 machine, installing what the tests need:
# Debian's mosquitto-clients (mosquitto_pub/sub), mosquitto and openssl (test certificates),
# a Python venv with paho-mqtt and pytest, Debian's chromium, and the npm packages of tests/js
# (MQTT.js, playwright-core). The status page test keeps its screenshot in tests/js/artifacts/.
# Used by CI (.ci/run) and by people: ./tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "test dependencies"
if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto >/dev/null ||
    ! command -v openssl >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto mosquitto-clients openssl >/dev/null
fi
# Node.js and npm for the JavaScript peers (MQTT.js, Playwright), Debian's Chromium for the
# status page test, and the npm packages as locked.
if ! command -v node >/dev/null || ! command -v npm >/dev/null || [ ! -x /usr/bin/chromium ]; then
    as_root apt-get update -qq
    command -v node >/dev/null && command -v npm >/dev/null || node_pkgs="nodejs npm"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium ${node_pkgs:-} >/dev/null
fi
if ! cmp -s tests/js/package-lock.json tests/js/node_modules/.gatemq-lock; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/js/package-lock.json tests/js/node_modules/.gatemq-lock
fi
venv="$root/.venv"
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s tests/requirements.txt "$venv/.requirements"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$venv/.requirements"
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings

step "cargo clippy --no-default-features (the build without TLS stays clean)"
cargo clippy --quiet --all-targets --no-default-features -- -D warnings

step "cargo build --release"
cargo build --release --quiet

step "cargo test --release (unit tests, rumqttc and raw-packet tests against the binary)"
cargo test --release

step "pytest tests/python (paho-mqtt and mosquitto_pub/sub against the binary)"
GATEMQ_BIN="$root/target/release/gatemq" "$venv/bin/pytest" -q -p no:cacheprovider --timeout 120 tests/python

step "Home Assistant 2025.4.4 (tests/ha: its own Python 3.13 venv, MQTT discovery against gatemq)"
ha_venv="$root/.ha-venv"
if [ ! -x "$ha_venv/bin/hass" ] || ! cmp -s tests/ha/requirements.txt "$ha_venv/.requirements"; then
    # About 6 minutes once on 2 cores; kept in .ha-venv/ for the next runs.
    ha_python="$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python"
    [ -x "$ha_python" ] || ha_python=$(command -v python3.13 || true)
    if [ -z "$ha_python" ] || [ ! -x "$ha_python" ]; then
        echo "Home Assistant 2025.4 needs Python 3.13 (pyenv's 3.13.0 or python3.13)"
        exit 1
    fi
    rm -rf "$ha_venv"
    "$ha_python" -m venv "$ha_venv"
    "$ha_venv/bin/pip" install -q --disable-pip-version-check -r tests/ha/requirements.txt
    cp tests/ha/requirements.txt "$ha_venv/.requirements"
fi
HA_VENV="$ha_venv" GATEMQ_BIN="$root/target/release/gatemq" "$venv/bin/pytest" -q -p no:cacheprovider --timeout 400 tests/ha

step "fuzzing: the decoder, the broker core, persistence replay and the MQTT-SN gateway, 60 s each (cargo fuzz, libFuzzer)"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install -q --locked cargo-fuzz@0.13.2
fi
fuzz_corpus=$(mktemp -d)
cp -r tests/fuzz/corpus/. "$fuzz_corpus"
for t in decode broker restore mqttsn; do
    # A crash stops the run with the input saved under tests/fuzz/artifacts/ to reproduce it.
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz "$t" "$fuzz_corpus/$t" -- \
        -max_total_time=60 -print_final_stats=1 > "$fuzz_corpus/$t.log" 2>&1; then
        tail -40 "$fuzz_corpus/$t.log"
        echo "fuzz target $t failed"
        exit 1
    fi
    echo "  $t: $(grep -E '^Done' "$fuzz_corpus/$t.log")"
done
rm -rf "$fuzz_corpus"

step "packages (amd64, arm64, armhf): static binaries, checked and smoke-tested from the .deb (qemu for ARM), installed in a throwaway root"
# Each target is built once (cross/package.sh), for its package and for the smoke test of the
# binary taken out of that package; builds, zig and the Debian root are kept in target/.
cross_started=$(date +%s)
for arch in amd64 arm64 armhf; do
    cross/check-package.sh "$arch"
done
cross/test-package.sh
echo "  cross step: $(( $(date +%s) - cross_started )) s"

step "done in $(( $(date +%s) - started )) s"
