"""Shared fixtures: start the real gatemq binary on an ephemeral loopback port.

The broker is started with a config written to a temp dir (`listener 0 127.0.0.1` plus any
extra lines), its stderr goes to a file, and the port is read from its "listening on" log
line. Each broker is stopped by its PID at the end of the test.
"""
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("GATEMQ_BIN", str(ROOT / "target" / "release" / "gatemq"))
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class Broker:
    def __init__(self, tmp_path: Path, config_lines=(), args=()):
        self.tmp = tmp_path
        self.conf = tmp_path / f"gatemq-{uuid.uuid4().hex[:8]}.conf"
        # Anonymous clients are allowed in the tests unless a test says otherwise (a config
        # with a listener refuses them by default, as Mosquitto 2 does).
        self.conf.write_text("listener 0 127.0.0.1\nallow_anonymous true\n"
                             + "".join(l + "\n" for l in config_lines))
        self.log_path = self.conf.with_suffix(".log")
        self.args = list(args)
        self.proc = None
        self.port = None

    def start(self, timeout=10.0):
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "debug")
        self.proc = subprocess.Popen(
            [BIN, "-c", str(self.conf), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env=env,
        )
        listeners = sum(1 for l in self.conf.read_text().splitlines() if l.startswith("listener "))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTEN_RE.findall(self.log())
            if found and len(found) >= listeners:
                # Every listener's port in config order; `port` is the first one's.
                self.ports = [int(p) for p in found]
                self.port = self.ports[0]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatemq exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"gatemq did not start listening:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def make_broker(tmp_path):
    """Factory: make_broker(config_lines=[...], args=[...]) -> started Broker."""
    started = []

    def make(config_lines=(), args=()):
        b = Broker(tmp_path, config_lines, args).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def sn_broker(make_broker):
    """Factory: sn_broker(section=[...], config_lines=[...]) -> Broker with an MQTT listener
    (`port`) and an MQTT-SN listener after it (`sn_port`, UDP), both on loopback."""

    def make(section=(), config_lines=()):
        b = make_broker([*config_lines, "listener 0 127.0.0.1", "protocol mqttsn", *section])
        b.sn_port = b.ports[1]
        return b

    return make


@pytest.fixture
def broker(make_broker):
    """A broker with default options (and $SYS every second for the $SYS tests)."""
    return make_broker(["sys_interval 1"])


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def mosquitto(tmp_path):
    """Factory: mosquitto(config_lines) -> port. Debian's real mosquitto on a free loopback
    port, as a peer to compare with or to read files gatemq wrote; stopped by PID."""
    import socket

    procs = []

    def start(config_lines=()):
        port = free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        # `user root`: started as root, mosquitto would switch to its own user, which cannot
        # read files in the test's private directory.
        conf.write_text(f"user root\nlistener {port} 127.0.0.1\n" + "".join(l + "\n" for l in config_lines))
        p = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return port
            except OSError:
                if p.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {p.returncode}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)
