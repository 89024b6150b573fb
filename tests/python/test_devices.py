"""Black-box tests of the device command executor (devices_file, devices/<d>/<c>/set, ...).

Every test starts the real gatemq binary with a devices file written next to its config in
tmp_path, and talks to it over 127.0.0.1 with paho-mqtt (MQTT 3.1.1) and mosquitto_pub /
mosquitto_sub. Waits are bounded: a "sync" marker published by the watching client itself
proves that everything the broker published before it has been received.
"""
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clients import RawClient, publish_packet
from conftest import ROOT, free_port

HOST = "127.0.0.1"
TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("GATEMQ_BIN", str(ROOT / "target" / "release" / "gatemq"))


# --- clients ----------------------------------------------------------------------------------

class Client:
    """A paho MQTT 3.1.1 client; received messages go to a queue as (topic, payload, retain)."""

    def __init__(self, port, name="t"):
        self.id = f"{name}-{uuid.uuid4().hex[:10]}"
        self.q = queue.Queue()
        self._acks = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id,
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._ack(mid)
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        assert self._connected.wait(TIMEOUT), f"{self.id}: no CONNACK"
        self.sync_topic = f"sync/{self.id}"
        self._subscribe(self.sync_topic)

    def _event(self, mid):
        with self._lock:
            return self._acks.setdefault(mid, threading.Event())

    def _ack(self, mid):
        self._event(mid).set()

    def _subscribe(self, topic, qos=0):
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert self._event(mid).wait(TIMEOUT), f"{self.id}: no SUBACK for {topic}"

    def sub(self, *topics, qos=0):
        """Subscribe; returns the retained messages delivered for the subscription."""
        for t in topics:
            self._subscribe(t, qos)
        return self.sync()

    def pub(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def get(self, timeout=TIMEOUT):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.id}: no message within {timeout}s") from None

    def until(self, topic, timeout=TIMEOUT):
        """(messages before the first one on `topic`, that message)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.id}: nothing on {topic} within {timeout}s; "
                                     f"got {[(t, p) for t, p, _ in before]}")
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if m[0] == topic:
                return before, m
            before.append(m)

    def sync(self, timeout=TIMEOUT):
        """Every message the broker sent this client before now (a self-published marker)."""
        marker = uuid.uuid4().hex.encode()
        self.c.publish(self.sync_topic, marker, qos=0)
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.id}: sync marker not received; got {out}"
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if m[0] == self.sync_topic and m[1] == marker:
                return out
            if m[0] != self.sync_topic:
                out.append(m)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()



def mosquitto_pub(port, topic, message):
    r = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-q", "1",
                        "-t", topic, "-m", message], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"mosquitto_pub failed: {r.stderr}"


def mosquitto_sub_retained(port, topic, timeout=3):
    """A late subscriber: `mosquitto_sub -C 1`; returns (retain flag, topic, payload)."""
    r = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(port), "-C", "1",
                        "-W", str(timeout), "-F", "%r|%t|%p", "-t", topic],
                       capture_output=True, text=True, timeout=timeout + 5)
    assert r.returncode == 0, f"mosquitto_sub {topic}: rc {r.returncode} {r.stdout!r} {r.stderr!r}"
    flag, t, p = r.stdout.rstrip("\n").split("|", 2)
    return int(flag), t, p


def retained(port, topic):
    """The retained payload on `topic` (as text) seen by a fresh subscriber, or None."""
    c = Client(port, "ret")
    try:
        msgs = c.sub(topic)
    finally:
        c.close()
    assert all(r for _, _, r in msgs), f"non-retained message on subscribe: {msgs}"
    assert len(msgs) <= 1, msgs
    return msgs[0][1].decode() if msgs else None


def current(port, topic):
    """The latest payload on `topic` (as text) a fresh subscriber sees, or None: its retained
    message, or one published while it subscribed. For polling a value that may change at that
    moment, which `retained` refuses to see."""
    c = Client(port, "cur")
    try:
        msgs = c.sub(topic)
    finally:
        c.close()
    return msgs[-1][1].decode() if msgs else None


def retained_state(port, device, prefix="devices"):
    s = retained(port, f"{prefix}/{device}/state")
    assert s is not None, f"no retained state for {device}"
    return json.loads(s)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def clients():
    made = []

    def make(port, name="t"):
        c = Client(port, name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def dev_broker(make_broker, tmp_path):
    """start(toml, extra config lines) -> broker with devices_file devices.toml (relative)."""

    def start(toml, lines=()):
        (tmp_path / "devices.toml").write_text(toml)
        return make_broker(["devices_file devices.toml", *lines])

    return start


def script(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


class Dev:
    """A watcher on devices/# plus a publisher, with command helpers."""

    def __init__(self, port, clients, prefix="devices"):
        self.port = port
        self.prefix = prefix
        self.w = clients(port, "watch")
        self.initial = self.w.sub(f"{prefix}/#")
        self.p = clients(port, "pub")

    def send(self, device, command, payload):
        """Publish a command; returns (messages before the response, parsed response)."""
        base = f"{self.prefix}/{device}" + (f"/{command}" if command else "")
        self.p.pub(f"{base}/set", payload)
        before, (_, body, _) = self.w.until(f"{base}/result")
        return before, json.loads(body)

    def ok(self, device, command, payload, value, status):
        """A valid command: response, status, one state JSON; returns the state."""
        before, res = self.send(device, command, payload)
        assert res == {"ok": True, "value": value}, (payload, res)
        st = [(t, p.decode()) for t, p, _ in before if t == f"{self.prefix}/{device}/{command}"]
        assert st == [(f"{self.prefix}/{device}/{command}", status)], (payload, before)
        _, (_, state, _) = self.w.until(f"{self.prefix}/{device}/state")
        state = json.loads(state)
        assert state[command] == value and type(state[command]) is type(value), (payload, state)
        return state

    def err(self, device, command, payload, error):
        """An invalid command: the error response, and no status or state published."""
        before, res = self.send(device, command, payload)
        assert res == {"ok": False, "error": error}, (payload, res)
        after = self.w.sync()
        changed = [(t, p) for t, p, _ in before + after
                   if not t.endswith("/set") and not t.endswith("/result")]
        assert changed == [], f"{payload!r} was refused but published {changed}"


LAMP = """
[lamp]
name = "Test lamp"
commands.power = { type = "bool", initial = "OFF" }
commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }
commands.temp = { type = "float", min = 10, max = 30, step = 0.5, initial = 20 }
commands.colour = { type = "enum", values = ["warm", "neutral", "cold"], initial = "warm" }
commands.label = { type = "string", max_length = 5 }
commands.identify = { type = "trigger" }
commands.level = { type = "float" }
"""


@pytest.fixture
def lamp(dev_broker, clients):
    b = dev_broker(LAMP)
    d = Dev(b.port, clients)
    d.broker = b
    return d


# --- announcements and retained status --------------------------------------------------------

def test_initial_values_availability_and_state_are_retained(lamp):
    got = {t: (p.decode(), r) for t, p, r in lamp.initial}
    assert got.pop("devices/lamp/availability") == ("online", True)
    assert got.pop("devices/lamp/power") == ("OFF", True)
    assert got.pop("devices/lamp/brightness") == ("128", True)
    assert got.pop("devices/lamp/temp") == ("20.0", True)
    assert got.pop("devices/lamp/colour") == ("warm", True)
    state, retain = got.pop("devices/lamp/state")
    assert retain
    assert json.loads(state) == {"power": "OFF", "brightness": 128, "temp": 20.0,
                                 "colour": "warm"}
    # label, identify and level have no initial value: nothing announced for them.
    assert got == {}


def test_devices_go_offline_on_shutdown(dev_broker, clients):
    """A graceful stop announces every device offline (retained) before closing."""
    b = dev_broker(LAMP + '[pump]\ncommands.on = { type = "bool" }\n')
    w = clients(b.port, "watch")
    w.sub("devices/+/availability")
    got = queue.Queue()
    w.c.on_message = lambda c, u, m: got.put((m.topic, m.payload.decode()))
    assert b.stop() == 0
    seen = {}
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        try:
            t, p = got.get(timeout=0.2)
            seen[t] = p
        except queue.Empty:
            pass
    assert seen == {"devices/lamp/availability": "offline", "devices/pump/availability": "offline"}


def test_status_retained_for_late_mosquitto_sub(lamp):
    mosquitto_pub(lamp.port, "devices/lamp/brightness/set", "200")
    lamp.w.until("devices/lamp/state")
    assert mosquitto_sub_retained(lamp.port, "devices/lamp/brightness") == (
        1, "devices/lamp/brightness", "200")
    flag, topic, state = mosquitto_sub_retained(lamp.port, "devices/lamp/state")
    assert (flag, topic) == (1, "devices/lamp/state")
    assert json.loads(state)["brightness"] == 200
    assert mosquitto_sub_retained(lamp.port, "devices/lamp/availability") == (
        1, "devices/lamp/availability", "online")


# --- value types ------------------------------------------------------------------------------

def test_bool_values(lamp):
    for payload, norm in [("ON", "ON"), ("off", "OFF"), ("true", "ON"), ("0", "OFF"),
                          ("1", "ON"), ("false", "OFF"), ("TOGGLE", "ON"), ("toggle", "OFF"),
                          ("On", "ON")]:
        lamp.ok("lamp", "power", payload, norm, norm)
    bad = "power: '{}' is not ON or OFF (nor on/off, true/false, 1/0, TOGGLE)"
    lamp.err("lamp", "power", "maybe", bad.format("maybe"))
    lamp.err("lamp", "power", "2", bad.format("2"))
    lamp.err("lamp", "power", "", "power: a value is needed")
    assert retained(lamp.port, "devices/lamp/power") == "ON"
    assert retained_state(lamp.port, "lamp")["power"] == "ON"


def test_int_values_and_rejected_value_keeps_old_state(lamp):
    lamp.err("lamp", "brightness", "300", "brightness: 300 is above max 255")
    assert retained(lamp.port, "devices/lamp/brightness") == "128"
    assert retained_state(lamp.port, "lamp")["brightness"] == 128
    for payload, n in [("0", 0), ("255", 255), ("128.0", 128), (" 42 ", 42)]:
        lamp.ok("lamp", "brightness", payload, n, str(n))
    lamp.err("lamp", "brightness", "-1", "brightness: -1 is below min 0")
    lamp.err("lamp", "brightness", "1.5", "brightness: '1.5' is not a whole number")
    lamp.err("lamp", "brightness", "bright", "brightness: 'bright' is not a whole number")
    lamp.err("lamp", "brightness", "256", "brightness: 256 is above max 255")
    assert retained(lamp.port, "devices/lamp/brightness") == "42"
    state = retained_state(lamp.port, "lamp")
    assert state == {"power": "OFF", "brightness": 42, "temp": 20.0, "colour": "warm"}


def test_float_values_snap_to_step(lamp):
    for payload, value, status in [("21.3", 21.5, "21.5"), ("21.2", 21.0, "21.0"),
                                   ("30", 30.0, "30.0"), ("10", 10.0, "10.0")]:
        lamp.ok("lamp", "temp", payload, value, status)
    lamp.err("lamp", "temp", "30.5", "temp: 30.5 is above max 30")
    lamp.err("lamp", "temp", "9.99", "temp: 9.99 is below min 10")
    lamp.err("lamp", "temp", "warm", "temp: 'warm' is not a number")
    lamp.err("lamp", "temp", "NaN", "temp: 'NaN' is not a number")
    lamp.err("lamp", "temp", "inf", "temp: 'inf' is not a number")
    assert retained(lamp.port, "devices/lamp/temp") == "10.0"
    # Without min/max/step the number is kept as written (normalised).
    lamp.ok("lamp", "level", "2.50", 2.5, "2.5")
    lamp.ok("lamp", "level", "-7", -7, "-7")  # a whole number is written bare
    lamp.ok("lamp", "level", "1e3", 1000, "1000")
    state = retained_state(lamp.port, "lamp")
    assert state["temp"] == 10.0 and state["level"] == 1000


def test_enum_values(lamp):
    lamp.ok("lamp", "colour", "COLD", "cold", "cold")
    lamp.ok("lamp", "colour", "Neutral", "neutral", "neutral")
    lamp.err("lamp", "colour", "purple", "colour: 'purple' is not one of warm, neutral, cold")
    lamp.err("lamp", "colour", "warm cold", "colour: 'warm cold' is not one of warm, neutral, cold")
    assert retained(lamp.port, "devices/lamp/colour") == "neutral"
    assert retained_state(lamp.port, "lamp")["colour"] == "neutral"


def test_string_values(lamp):
    lamp.ok("lamp", "label", "hi", "hi", "hi")
    lamp.ok("lamp", "label", "héllo", "héllo", "héllo")
    state = lamp.ok("lamp", "label", 'a"b\\c', 'a"b\\c', 'a"b\\c')
    assert state["label"] == 'a"b\\c'
    lamp.err("lamp", "label", "toolong", "label: 7 characters is longer than max 5")
    lamp.err("lamp", "label", b"\xff\xfe", "payload is not UTF-8")
    assert retained(lamp.port, "devices/lamp/label") == 'a"b\\c'
    assert retained_state(lamp.port, "lamp")["label"] == 'a"b\\c'


def test_trigger_responds_without_state(lamp):
    before, res = lamp.send("lamp", "identify", "PRESS")
    assert res == {"ok": True}
    after = lamp.w.sync()
    published = [t for t, _, _ in before + after if not t.endswith("/set")]
    assert published == [], published
    before, res = lamp.send("lamp", "identify", "")
    assert res == {"ok": True}
    assert retained(lamp.port, "devices/lamp/identify") is None
    assert "identify" not in retained_state(lamp.port, "lamp")


def test_json_value_payloads(lamp):
    lamp.ok("lamp", "brightness", '{"value": 200}', 200, "200")
    lamp.ok("lamp", "brightness", '{"value": 128.0}', 128, "128")
    lamp.ok("lamp", "brightness", '{"value": "77"}', 77, "77")
    lamp.ok("lamp", "power", '{"value": true}', "ON", "ON")
    lamp.ok("lamp", "power", '{ "other": 1, "value": "off" }', "OFF", "OFF")
    lamp.ok("lamp", "colour", '{"value":"COLD"}', "cold", "cold")
    lamp.ok("lamp", "temp", '{"value": 21.7}', 21.5, "21.5")
    lamp.ok("lamp", "label", '{"value": "h\\u00e9\\"y"}', 'hé"y', 'hé"y')
    lamp.err("lamp", "brightness", '{"value": 300}', "brightness: 300 is above max 255")
    lamp.err("lamp", "brightness", '{"val": 1}', 'payload JSON has no "value"')
    lamp.err("lamp", "brightness", '{"value": [1, 2]}',
             "a value must be a string, number or boolean")
    lamp.err("lamp", "brightness", '{"value": ', "payload is not valid JSON")
    lamp.err("lamp", "brightness", '{"value": null}', "brightness: a value is needed")
    assert retained(lamp.port, "devices/lamp/brightness") == "77"
    assert retained_state(lamp.port, "lamp") == {
        "power": "OFF", "brightness": 77, "temp": 21.5, "colour": "cold", "label": 'hé"y'}


# --- device-level set, unknown names ----------------------------------------------------------

def test_multi_set_applies_all_or_nothing(lamp):
    lamp.p.pub("devices/lamp/set", '{"power": "ON", "brightness": 200, "colour": "cold"}')
    results = {}
    statuses = {}
    before, (_, state, _) = lamp.w.until("devices/lamp/state")
    for t, p, _ in before:
        if t.endswith("/result"):
            results[t] = json.loads(p)
        elif not t.endswith("/set"):
            statuses[t] = p.decode()
    assert results == {
        "devices/lamp/power/result": {"ok": True, "value": "ON"},
        "devices/lamp/brightness/result": {"ok": True, "value": 200},
        "devices/lamp/colour/result": {"ok": True, "value": "cold"},
    }
    assert statuses == {"devices/lamp/power": "ON", "devices/lamp/brightness": "200",
                        "devices/lamp/colour": "cold"}
    assert json.loads(state) == {"power": "ON", "brightness": 200, "temp": 20.0,
                                 "colour": "cold"}
    # One state message for the whole set.
    assert [t for t, _, _ in lamp.w.sync() if t == "devices/lamp/state"] == []

    for payload, error in [
        ('{"power": "OFF", "brightness": 300}', "brightness: 300 is above max 255"),
        ('{"power": "OFF", "colr": "x"}', "unknown command 'colr' for device 'lamp'"),
        ('{"power": "OFF", "colour": {"x": 1}}', "a value must be a string, number or boolean"),
        ('{"power": "OFF", ', "payload is not valid JSON"),
        ("OFF", "a device-level set needs a JSON object of command: value"),
    ]:
        lamp.err("lamp", None, payload, error)
    assert retained(lamp.port, "devices/lamp/power") == "ON"
    assert retained(lamp.port, "devices/lamp/brightness") == "200"
    assert retained_state(lamp.port, "lamp") == {"power": "ON", "brightness": 200,
                                                 "temp": 20.0, "colour": "cold"}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_command_at_each_qos_runs_once(lamp, qos):
    lamp.p.c.publish("devices/lamp/brightness/set", "9", qos=qos).wait_for_publish(TIMEOUT)
    before, (_, res, _) = lamp.w.until("devices/lamp/brightness/result")
    assert json.loads(res) == {"ok": True, "value": 9}
    after = lamp.w.sync()
    got = [(t, p) for t, p, _ in before + after]
    assert got.count(("devices/lamp/brightness", b"9")) == 1, got
    assert [t for t, _ in got].count("devices/lamp/brightness/result") == 0, got
    assert [t for t, _ in got].count("devices/lamp/state") == 1, got


def test_unknown_device_and_command(lamp):
    before, res = lamp.send("nosuch", "power", "ON")
    assert res == {"ok": False, "error": "unknown device 'nosuch'"}
    before, res = lamp.send("nosuch", None, '{"power": "ON"}')
    assert res == {"ok": False, "error": "unknown device 'nosuch'"}
    lamp.err("lamp", "colr", "warm", "unknown command 'colr' for device 'lamp'")
    assert [t for t, _, _ in lamp.w.sync() if not t.endswith("/set")] == []
    assert retained(lamp.port, "devices/nosuch/power") is None
    assert retained(lamp.port, "devices/lamp/colr") is None


# --- file action ------------------------------------------------------------------------------

def test_file_action_writes_and_reads_back(dev_broker, clients, tmp_path):
    b = dev_broker("""
[relay]
commands.power = { type = "bool", action = "file", path = "relay.value", payload_on = "1", payload_off = "0", read_back = true }
commands.level = { type = "int", min = 0, max = 100, action = "file", path = "out/level.txt" }
commands.broken = { type = "bool", action = "file", path = "no/such/dir/x", initial = "OFF" }
""")
    (tmp_path / "out").mkdir()
    d = Dev(b.port, clients)
    relay = tmp_path / "relay.value"
    d.ok("relay", "power", "ON", "ON", "ON")
    assert relay.read_text() == "1"
    d.ok("relay", "power", "off", "OFF", "OFF")
    assert relay.read_text() == "0"
    d.ok("relay", "power", "true", "ON", "ON")
    assert relay.read_text() == "1"
    d.ok("relay", "level", "100", 100, "100")
    d.ok("relay", "level", "7", 7, "7")
    assert (tmp_path / "out" / "level.txt").read_text() == "7"
    d.err("relay", "level", "101", "level: 101 is above max 100")
    assert (tmp_path / "out" / "level.txt").read_text() == "7"
    # A write that fails is an error, and the state does not change.
    before, res = d.send("relay", "broken", "ON")
    assert res["ok"] is False
    assert res["error"].startswith(f"broken: cannot write {tmp_path}/no/such/dir/x"), res
    assert retained(b.port, "devices/relay/broken") == "OFF"
    assert retained_state(b.port, "relay") == {"power": "ON", "level": 7, "broken": "OFF"}


def test_values_survive_kill_9_without_persistence(dev_broker, clients, tmp_path):
    """persistence off: the devices' last values are kept all the same (their retained
    status topics, in persistence_location's gatemq-devices.db); nothing else is."""
    b = dev_broker(LAMP)
    d = Dev(b.port, clients)
    d.ok("lamp", "brightness", "200", 200, "200")
    d.ok("lamp", "power", "ON", "ON", "ON")
    other = clients(b.port, "o")
    other.pub("other/topic", "kept?", retain=True)
    assert retained(b.port, "other/topic") == "kept?"
    b.stop(sig=signal.SIGKILL)
    assert (tmp_path / "gatemq-devices.db").exists()
    b2 = dev_broker(LAMP)
    assert retained(b2.port, "devices/lamp/brightness") == "200"
    assert retained(b2.port, "devices/lamp/power") == "ON"
    assert retained_state(b2.port, "lamp")["brightness"] == 200
    assert retained(b2.port, "devices/lamp/availability") == "online"
    assert retained(b2.port, "other/topic") is None, "only the devices' topics are kept"
    assert "the devices' last status" in b2.log()


def test_a_read_back_file_wins_at_start_and_at_reload(dev_broker, clients, tmp_path):
    """A `file` command with read_back reads its file at start and at each reload: the file
    (the hardware) wins over the last value kept."""
    toml = """
[relay]
commands.power = { type = "bool", action = "file", path = "relay.value", payload_on = "high", payload_off = "low", read_back = true }
"""
    relay = tmp_path / "relay.value"
    relay.write_text("high\n")
    b = dev_broker(toml)
    assert retained(b.port, "devices/relay/power") == "ON"
    d = Dev(b.port, clients)
    d.ok("relay", "power", "OFF", "OFF", "OFF")
    assert relay.read_text() == "low"
    b.stop()
    relay.write_text("high\n")  # changed while gatemq was down: the file wins
    b2 = dev_broker(toml)
    assert retained(b2.port, "devices/relay/power") == "ON"
    w = clients(b2.port, "w")
    w.sub("devices/relay/#")
    relay.write_text("low\n")  # changed under a running gatemq: read at the reload
    b2.proc.send_signal(signal.SIGHUP)
    _, (_, v, _) = w.until("devices/relay/power")
    assert v == b"OFF"
    _, (_, state, _) = w.until("devices/relay/state")
    assert json.loads(state) == {"power": "OFF"}
    assert retained(b2.port, "devices/relay/power") == "OFF"


# --- readings ---------------------------------------------------------------------------------

def http_port(b):
    return int(re.search(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)", b.log()).group(1))


def reads(b, device, reading):
    """(ok, failed) of gatemq_device_reads_total for a reading, from /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port(b)}/metrics", timeout=5) as r:
        text = r.read().decode()
    got = {}
    for result in ("ok", "failed"):
        m = re.search(rf'gatemq_device_reads_total{{device="{device}",reading="{reading}",'
                      rf'result="{result}"}} (\d+)', text)
        got[result] = int(m.group(1)) if m else None
    return got["ok"], got["failed"]


def wait_for(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := check()):
            return v
        time.sleep(0.02)
    raise AssertionError(f"{what} not within {timeout}s (last: {check()!r})")


GATEWAY = """
[gw]
name = "Gateway"
readings.cpu = { type = "float", path = "cpu", scale = 0.001, round = 1, deadband = 0.5, every_s = 0.1, unit = "°C", device_class = "temperature", state_class = "measurement" }
readings.door = { type = "bool", path = "door", every_s = 0.1, payload_on = "1", payload_off = "0", device_class = "door" }
readings.label = { type = "string", path = "label", every_s = 0.1, entity_category = "diagnostic" }
commands.fan = { type = "bool", initial = "OFF" }
"""


def test_readings_follow_their_files(dev_broker, clients, tmp_path):
    """A reading is published retained on devices/<d>/<name> only when it changes (beyond its
    deadband), scaled and rounded; it is part of the device's state and announced to Home
    Assistant as a sensor or binary_sensor; a bool reading takes payload_on/payload_off."""
    (tmp_path / "cpu").write_text("45312\n")
    (tmp_path / "door").write_text("0\n")
    (tmp_path / "label").write_text("rack 1\n")
    b = dev_broker(GATEWAY, ["homeassistant_discovery true", "http_listener 0 127.0.0.1"])
    w = clients(b.port, "w")
    w.sub("devices/gw/#")
    # The three files are read by three threads: their values come in any order.
    first = {"fan": "OFF", "cpu": 45.3, "door": "OFF", "label": "rack 1"}
    wait_for("the first readings", lambda: (s := current(b.port, "devices/gw/state"))
             and json.loads(s) == first)
    assert retained(b.port, "devices/gw/cpu") == "45.3"
    assert retained(b.port, "devices/gw/door") == "OFF"
    assert retained(b.port, "devices/gw/label") == "rack 1"
    assert retained_state(b.port, "gw") == first
    w.sync()
    # Within the deadband (0.5): read, not published.
    ok_before = reads(b, "gw", "cpu")[0]
    (tmp_path / "cpu").write_text("45700\n")
    wait_for("more reads", lambda: reads(b, "gw", "cpu")[0] >= ok_before + 3)
    assert [t for t, _, _ in w.sync()] == []
    (tmp_path / "cpu").write_text("46000\n")
    _, (_, v, _) = w.until("devices/gw/cpu")
    assert v == b"46.0"
    _, (_, state, _) = w.until("devices/gw/state")
    assert json.loads(state)["cpu"] == 46.0
    (tmp_path / "door").write_text("1\n")
    _, (_, v, _) = w.until("devices/gw/door")
    assert v == b"ON"
    _, (_, state, _) = w.until("devices/gw/state")
    assert json.loads(state)["door"] == "ON"
    # The same value again: nothing more.
    time.sleep(0.3)
    assert [t for t, _, _ in w.sync()] == []
    # Home Assistant: sensor and binary_sensor with their keys.
    cmps = ha_config(b.port, "gw")["cmps"]
    assert {k: v["p"] for k, v in cmps.items()} == {
        "fan": "switch", "cpu": "sensor", "door": "binary_sensor", "label": "sensor",
        "command_result": "event"}
    cpu = cmps["cpu"]
    assert (cpu["state_topic"], cpu["unit_of_measurement"], cpu["device_class"],
            cpu["state_class"], cpu["suggested_display_precision"]) == \
        ("devices/gw/cpu", "°C", "temperature", "measurement", 1)
    assert (cpu["default_entity_id"], cpu["availability_topic"]) == \
        ("sensor.gw_cpu", "devices/gw/availability")
    assert (cmps["door"]["payload_on"], cmps["door"]["payload_off"]) == ("ON", "OFF")
    assert cmps["label"]["entity_category"] == "diagnostic"
    # A reading takes no commands.
    d = Dev(b.port, clients)
    _, res = d.send("gw", "cpu", "50")
    assert res == {"ok": False, "error": "'cpu' is a reading of device 'gw': it takes no commands"}
    assert retained(b.port, "devices/gw/cpu") == "46.0"


def test_a_failing_read_keeps_the_last_value_and_is_counted(dev_broker, clients, tmp_path):
    """A file that is gone, or holds what is not a value: the last value stays, every failure
    is counted in /metrics, and it is logged once, not at every read."""
    (tmp_path / "cpu").write_text("45312\n")
    (tmp_path / "door").write_text("0\n")
    (tmp_path / "label").write_text("x\n")
    b = dev_broker(GATEWAY, ["http_listener 0 127.0.0.1"])
    wait_for("the first reading", lambda: current(b.port, "devices/gw/cpu") == "45.3")
    (tmp_path / "cpu").unlink()
    (tmp_path / "door").write_text("open\n")
    wait_for("ten failed reads", lambda: (reads(b, "gw", "cpu")[1] or 0) >= 10
             and (reads(b, "gw", "door")[1] or 0) >= 10)
    assert retained(b.port, "devices/gw/cpu") == "45.3"
    assert retained(b.port, "devices/gw/door") == "OFF"
    log = b.log()
    cpu_lines = [l for l in log.splitlines() if "gw/cpu:" in l and "WARN" in l]
    assert len(cpu_lines) == 1, cpu_lines
    assert f"{tmp_path}/cpu: cannot read: no such file or directory; the last value stays" in cpu_lines[0]
    assert 'gw/door: ' in log and 'read "open": neither payload_on "1" nor payload_off "0"' in log
    # Back: read again, and said so.
    (tmp_path / "cpu").write_text("50000\n")
    wait_for("the new value", lambda: current(b.port, "devices/gw/cpu") == "50.0")
    assert re.search(r"gw/cpu: read again \(\d+ reads failed before\)", b.log())


def test_program_readings_with_a_timeout(dev_broker, clients, tmp_path):
    """program/args (no shell): the first line of its output is the reading; a program that
    fails or outlives timeout_ms is a failed read (killed), and the loop is not held up."""
    script(tmp_path, "rssi.sh", 'echo "$1"\necho "second line"\n')
    script(tmp_path, "hang.sh", 'echo $$ > "$(dirname "$0")/hang.pid"\nexec sleep 30\n')
    script(tmp_path, "fail.sh", 'echo 12\nexit 3\n')
    script(tmp_path, "slow.sh", 'echo $$ > "$(dirname "$0")/slow.pid"\nexec sleep 30\n')
    b = dev_broker("""
[gw]
readings.rssi = { type = "int", program = "rssi.sh", args = ["-67 dBm"], every_s = 0.2 }
readings.up = { type = "int", program = "rssi.sh", args = ["41.6"], every_s = 0.2 }
readings.hang = { type = "float", program = "hang.sh", every_s = 60, timeout_ms = 300 }
readings.fail = { type = "int", program = "fail.sh", every_s = 0.2 }
readings.slow = { type = "int", program = "slow.sh", every_s = 60, timeout_ms = 60000 }
""", ["http_listener 0 127.0.0.1"])
    wait_for("the program's reading", lambda: current(b.port, "devices/gw/up") == "42")
    # "-67 dBm" is not a number: a failed read.
    wait_for("rssi failing", lambda: (reads(b, "gw", "rssi")[1] or 0) >= 2)
    assert retained(b.port, "devices/gw/rssi") is None
    assert "gw/rssi: " in b.log() and 'read "-67 dBm": not a number' in b.log()
    wait_for("fail.sh counted", lambda: (reads(b, "gw", "fail")[1] or 0) >= 2)
    assert "the program exited with status 3" in b.log()
    assert retained(b.port, "devices/gw/fail") is None
    wait_for("the hung program killed", lambda: reads(b, "gw", "hang")[1] == 1)
    assert "gw/hang: " in b.log() and "timed out after 300 ms and was killed" in b.log()
    pid = int((tmp_path / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    # A program still running when gatemq stops is stopped with it.
    slow = int(wait_for("slow.sh started", lambda: (tmp_path / "slow.pid").exists()
                        and (tmp_path / "slow.pid").read_text().strip()))
    os.kill(slow, 0)
    assert b.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(slow, 0)


def test_a_program_reading_printing_too_much(dev_broker, clients, tmp_path):
    """A reading's program that prints megabytes: at most 4096 bytes of it are kept, the
    program (blocked on its full pipe) is killed at its timeout, the log says why, and gatemq
    goes on serving with its memory bounded."""
    script(tmp_path, "chatty.sh", 'i=0\nwhile [ $i -lt 1000000 ]; do echo 42; i=$((i+1)); done\n')
    b = dev_broker("""
[gw]
readings.chatty = { type = "int", program = "chatty.sh", every_s = 0.5, timeout_ms = 300 }
""", ["http_listener 0 127.0.0.1"])
    wait_for("two runs killed", lambda: (reads(b, "gw", "chatty")[1] or 0) >= 2)
    assert "gw/chatty: " in b.log() and "timed out after 300 ms and was killed (it had printed " \
        "more than 4096 bytes: a reading's program prints its value and exits" in b.log()
    assert retained(b.port, "devices/gw/chatty") is None
    rss = int(next(l.split()[1] for l in open(f"/proc/{b.proc.pid}/status")
                   if l.startswith("VmRSS:")))
    assert rss < 20_000, f"{rss} kB"
    a, z = clients(b.port, "a"), clients(b.port, "z")
    z.sub("t")
    a.pub("t", "still here")
    assert z.until("t")[1][1] == b"still here"


def test_a_slow_file_read_does_not_stall_other_clients(dev_broker, clients, tmp_path):
    """A reading whose file blocks (a FIFO nobody writes, like a 1-wire sensor taking its
    time): the read happens off the loop, other clients' round trips stay fast, the read is
    counted as failed at its timeout and its value arrives when the file answers."""
    fifo = tmp_path / "w1_temperature"
    os.mkfifo(fifo)
    b = dev_broker("""
[gw]
readings.temp = { type = "float", path = "w1_temperature", scale = 0.001, round = 2, every_s = 0.2, timeout_ms = 800 }
readings.cpu = { type = "int", path = "cpu", every_s = 0.1 }
commands.power = { type = "bool", initial = "OFF" }
""", ["http_listener 0 127.0.0.1"])
    (tmp_path / "cpu").write_text("1\n")
    wait_for("the other reading", lambda: current(b.port, "devices/gw/cpu") == "1")
    a, z = clients(b.port, "a"), clients(b.port, "z")
    z.sub("other/topic")
    worst = 0.0
    for i in range(20):
        t = time.monotonic()
        a.pub("other/topic", f"ping {i}")
        _, (_, payload, _) = z.until("other/topic", timeout=2)
        worst = max(worst, time.monotonic() - t)
        assert payload == f"ping {i}".encode()
    assert worst < 0.1, f"a round trip took {worst * 1000:.0f} ms while the read blocked"
    # Another reading of the same device goes on, and commands are executed.
    (tmp_path / "cpu").write_text("2\n")
    wait_for("the other reading again", lambda: current(b.port, "devices/gw/cpu") == "2")
    Dev(b.port, clients).ok("gw", "power", "ON", "ON", "ON")
    wait_for("the blocked read counted", lambda: reads(b, "gw", "temp")[1] == 1, timeout=3)
    assert "gw/temp: " in b.log() and "no answer after 800 ms" in b.log()
    # The file answers: the value is taken.
    with open(fifo, "w") as f:
        f.write("21437\n")
    wait_for("the slow value", lambda: current(b.port, "devices/gw/temp") == "21.44")
    assert reads(b, "gw", "temp")[0] >= 1


def until_value(w, topic, value):
    """Wait until watcher `w` sees `value` on `topic` (earlier values there are skipped)."""
    deadline = time.monotonic() + TIMEOUT
    while (got := w.until(topic, timeout=max(deadline - time.monotonic(), 0.01))[1][1]) \
            != value.encode():
        pass
    return got


def reading_threads(b):
    """How many of gatemq's file-reading threads exist."""
    tasks = Path(f"/proc/{b.proc.pid}/task")
    return sum(1 for t in tasks.iterdir()
               if (t / "comm").read_text().strip() == "gatemq-read")


def test_a_hung_file_read_keeps_one_thread_across_reloads(dev_broker, clients, tmp_path):
    """A reading whose file never answers blocks its thread for ever. A reload that changes
    its device hands that thread, with its read, to the reading of the same file declared
    now: editing the devices file does not pile up blocked threads."""
    os.mkfifo(tmp_path / "w1")
    (tmp_path / "cpu").write_text("1\n")

    def toml(n):
        return ('[gw]\nreadings.temp = { type = "float", path = "w1", every_s = 0.1, timeout_ms = 200 }\n'
                'readings.cpu = { type = "int", path = "cpu", every_s = 0.1 }\n'
                f'commands.c{n} = {{ type = "int", initial = 0 }}\n')

    b = dev_broker(toml(0), ["http_listener 0 127.0.0.1"])
    w = clients(b.port, "w")
    w.sub("devices/gw/#")
    wait_for("the hung read counted", lambda: reads(b, "gw", "temp")[1] == 1)
    assert reading_threads(b) == 2
    for n in range(1, 6):
        (tmp_path / "devices.toml").write_text(toml(n))
        b.proc.send_signal(signal.SIGHUP)
        until_value(w, f"devices/gw/c{n}", "0")
        # The other reading is read by the reloaded device: its readings run.
        (tmp_path / "cpu").write_text(f"{n + 1}\n")
        until_value(w, "devices/gw/cpu", str(n + 1))
    assert reading_threads(b) == 2
    # The thread's read, handed over, answers to the reading declared now.
    with open(tmp_path / "w1", "w") as f:
        f.write("21.5\n")
    until_value(w, "devices/gw/temp", "21.5")


def test_threads_blocked_for_readings_gone_are_bounded(dev_broker, clients, tmp_path):
    """A reading whose file hangs, moved to another file at each reload: the thread blocked on
    the old file cannot be stopped. At most 16 are left; then no new reading thread starts (a
    failed read, logged) until one of them ends."""
    fifos = [tmp_path / f"w{n}" for n in range(20)]
    for f in fifos:
        os.mkfifo(f)

    def toml(n):
        return (f'[gw]\nreadings.temp = {{ type = "float", path = "w{n}", every_s = 0.1, timeout_ms = 100 }}\n'
                f'commands.c{n} = {{ type = "int", initial = 0 }}\n')

    b = dev_broker(toml(0), ["http_listener 0 127.0.0.1"])
    w = clients(b.port, "w")
    w.sub("devices/gw/#")
    wait_for("the first thread", lambda: reading_threads(b) == 1)
    for n in range(1, 20):
        (tmp_path / "devices.toml").write_text(toml(n))
        b.proc.send_signal(signal.SIGHUP)
        until_value(w, f"devices/gw/c{n}", "0")
        # Its new file is opened (by a new thread) before the next reload, while threads may
        # be started.
        if n < 16:
            wait_for(f"thread {n + 1}", lambda: reading_threads(b) == n + 1)
    wait_for("the refusal logged", lambda: "cannot start its reading thread: 16 threads of "
             "readings no longer declared are still blocked in a read" in b.log())
    time.sleep(0.3)
    assert reading_threads(b) == 16
    # One of them ends (its file answers): the reading declared now gets a thread.
    with open(fifos[0], "w") as f:
        f.write("1\n")
    with open(fifos[19], "w") as f:
        f.write("19.5\n")
    until_value(w, "devices/gw/temp", "19.5")
    # Threads still blocked in a read do not hold up gatemq's stop.
    assert reading_threads(b) == 16
    t = time.monotonic()
    assert b.stop() == 0
    assert time.monotonic() - t < 2


def loop_wakeups(b):
    """Context switches of gatemq's event loop (its main thread) so far."""
    status = Path(f"/proc/{b.proc.pid}/task/{b.proc.pid}/status").read_text()
    return sum(int(l.split()[1]) for l in status.splitlines() if "ctxt_switches" in l)


def test_an_idle_broker_with_readings_sleeps(dev_broker, clients, tmp_path):
    """When a reading is next due is a deadline of the loop: between reads, and while a read
    hangs past its timeout, the loop sleeps instead of polling."""
    os.mkfifo(tmp_path / "w1")
    (tmp_path / "cpu").write_text("1\n")
    b = dev_broker("""
[gw]
readings.temp = { type = "float", path = "w1", every_s = 60, timeout_ms = 200 }
readings.cpu = { type = "int", path = "cpu", every_s = 60 }
readings.up = { type = "int", program = "/bin/echo", args = ["7"], every_s = 60 }
""", ["sys_interval 0", "http_listener 0 127.0.0.1"])
    wait_for("the hung read past its timeout", lambda: reads(b, "gw", "temp")[1] == 1)
    wait_for("the other readings", lambda: current(b.port, "devices/gw/cpu") == "1"
             and current(b.port, "devices/gw/up") == "7")
    time.sleep(0.2)
    before = loop_wakeups(b)
    time.sleep(3)
    woke = loop_wakeups(b) - before
    assert woke <= 2, f"the loop woke {woke} times in 3 s"


def test_readings_survive_kill_9_without_persistence(dev_broker, clients, tmp_path):
    """A reading's last value is kept like a command's: after kill -9 (persistence off) it is
    published again at start, and stays while its file cannot be read."""
    (tmp_path / "cpu").write_text("45312\n")
    toml = GATEWAY.replace("every_s = 0.1, unit", "every_s = 3600, unit")
    (tmp_path / "door").write_text("1\n")
    (tmp_path / "label").write_text("x\n")
    b = dev_broker(toml)
    wait_for("the reading", lambda: current(b.port, "devices/gw/cpu") == "45.3")
    wait_for("the door", lambda: current(b.port, "devices/gw/door") == "ON")
    b.stop(sig=signal.SIGKILL)
    (tmp_path / "cpu").unlink()
    b2 = dev_broker(toml)
    assert retained(b2.port, "devices/gw/cpu") == "45.3"
    assert retained_state(b2.port, "gw")["cpu"] == 45.3
    wait_for("the failed read logged", lambda: "gw/cpu: " in b2.log() and "the last value stays" in b2.log())
    assert retained(b2.port, "devices/gw/cpu") == "45.3"


def test_a_reading_removed_at_reload_is_cleared(dev_broker, clients, tmp_path):
    (tmp_path / "cpu").write_text("45312\n")
    (tmp_path / "door").write_text("1\n")
    (tmp_path / "label").write_text("x\n")
    b = dev_broker(GATEWAY, ["homeassistant_discovery true"])
    wait_for("the door", lambda: current(b.port, "devices/gw/door") == "ON")
    w = clients(b.port, "w")
    w.sub("devices/gw/door", "homeassistant/device/gw/config")
    (tmp_path / "devices.toml").write_text(GATEWAY.replace("readings.door", "#readings.door"))
    b.proc.send_signal(signal.SIGHUP)
    _, (_, v, r) = w.until("devices/gw/door")
    assert v == b""
    _, (_, removal, r) = w.until("homeassistant/device/gw/config")
    assert (json.loads(removal)["cmps"], r) == ({"door": {"p": "binary_sensor"}}, False)
    _, (_, config, _) = w.until("homeassistant/device/gw/config")
    assert "door" not in json.loads(config)["cmps"] and "cpu" in json.loads(config)["cmps"]
    assert retained(b.port, "devices/gw/door") is None
    assert "door" not in retained_state(b.port, "gw")


def test_bad_readings_refuse_to_start(tmp_path):
    for toml, what in [
        ('[gw]\nreadings.t = { type = "float", path = "t", payload_on = "1", payload_off = "0" }\n',
         "gw.readings.t.payload_on: only for bool readings"),
        ('[gw]\nreadings.t = { type = "double", path = "t" }\n',
         "gw.readings.t.type: unknown type 'double' (expected float, int, bool or string)"),
        ('[gw]\nreadings.t = { type = "int", path = "t", program = "p" }\n',
         "gw.readings.t: a reading needs either 'path' (a file) or 'program'"),
        ('[gw]\ncommands.t = { type = "bool" }\nreadings.t = { type = "int", path = "t" }\n',
         "gw.readings.t: a command has that name already"),
        ('[gw]\nreadings.state = { type = "int", path = "t" }\n',
         "gw.readings.state: a reading name must be one topic level"),
        # Keys of the device's Home Assistant config taken by the grouped entity and the event.
        ('[gw]\nhomeassistant = "light"\ncommands.power = { type = "bool" }\n'
         'readings.light = { type = "int", path = "t" }\n',
         "gw.readings.light: the name of the device's Home Assistant light (homeassistant = \"light\")"),
        ('[gw]\nhomeassistant = "fan"\ncommands.power = { type = "bool" }\n'
         'commands.fan = { type = "bool" }\n',
         "gw.commands.fan: the name of the device's Home Assistant fan"),
        ('[gw]\ncommands.command_result = { type = "bool" }\n',
         "gw.commands.command_result: the name of the device's Home Assistant \"command result\" event"),
        ('[gw]\nreadings.command_result = { type = "int", path = "t" }\n',
         "gw.readings.command_result: the name of the device's Home Assistant"),
    ]:
        assert what in config_error(tmp_path, toml), toml


# --- removals while gatemq was stopped, and an older gatemq's single-component configs ----------

def test_a_device_removed_while_gatemq_was_stopped_is_cleared_at_start(dev_broker, clients, tmp_path):
    """Without persistence, the devices store also keeps what gatemq announced to Home
    Assistant: a device deleted from the file while gatemq was stopped has its discovery
    config and retained topics cleared at start, and when Home Assistant (re)starts its old
    config goes out once more, then the clear; a command deleted from a device that stays is
    removed from its config."""
    toml = LAMP + '\n[gone]\ncommands.power = { type = "bool", initial = "ON" }\n'
    b = dev_broker(toml, ["homeassistant_discovery true"])
    assert retained(b.port, "devices/gone/power") == "ON"
    assert "power" in ha_config(b.port, "gone")["cmps"]
    # Someone else's retained topics under the prefix are not gatemq's to clear.
    other = clients(b.port, "other")
    other.pub("devices/sensor9/availability", "Online", retain=True)
    other.pub("devices/sensor9/temp", "21.5", retain=True)
    b.stop()
    b2 = dev_broker(LAMP.replace("commands.label", "#commands.label"), ["homeassistant_discovery true"])
    for topic in ("devices/gone/power", "devices/gone/state", "devices/gone/availability",
                  "homeassistant/device/gone/config", "devices/lamp/label"):
        assert retained(b2.port, topic) is None, topic
    assert "label" not in ha_config(b2.port, "lamp")["cmps"]
    assert retained(b2.port, "devices/lamp/brightness") == "128"
    assert retained(b2.port, "devices/sensor9/availability") == "Online"
    assert retained(b2.port, "devices/sensor9/temp") == "21.5"
    c = clients(b2.port, "ha")
    c.sub("homeassistant/#")
    c.pub("homeassistant/status", "online")
    got = [(t, p) for t, p, _ in c.sync() if t != "homeassistant/status"]
    lamp = [json.loads(p) for t, p in got if t == "homeassistant/device/lamp/config"]
    gone = [p for t, p in got if t == "homeassistant/device/gone/config"]
    # The lamp as it was (with the label), the label removed, the lamp as it is.
    assert [sorted(c["cmps"]) for c in lamp] == [
        ["brightness", "colour", "command_result", "identify", "label", "level", "power", "temp"],
        ["label"],
        ["brightness", "colour", "command_result", "identify", "level", "power", "temp"]]
    assert lamp[1]["cmps"] == {"label": {"p": "text"}}
    # The removed device as it was, then cleared, last.
    assert len(gone) == 2 and "power" in json.loads(gone[0])["cmps"] and gone[1] == b""
    assert got[-1] == ("homeassistant/device/gone/config", b"")


@pytest.mark.parametrize("persistence", ["false", "true"])
@pytest.mark.parametrize("made_at", ["reload", "start"])
def test_removals_survive_kill_9_until_home_assistant_is_back(dev_broker, clients, made_at,
                                                              persistence):
    """The removals Home Assistant may not have seen are kept in the store (the devices store,
    or the journal with persistence): a device and a command removed (at a reload, or at a
    start, of a file edited while gatemq was stopped) while no HA listens, then gatemq killed
    with -9 and started again before HA's birth: HA's birth still gets the old configs again
    (not retained), then the clears."""
    toml = LAMP + '\n[gone]\ncommands.power = { type = "bool", initial = "ON" }\n'
    less = LAMP.replace("commands.label", "#commands.label")
    ha = ["homeassistant_discovery true", f"persistence {persistence}"]
    b = dev_broker(toml, ha)
    before = ha_config(b.port, "gone")
    if made_at == "reload":
        (b.tmp / "devices.toml").write_text(less)
        b.proc.send_signal(signal.SIGHUP)
    else:
        b.stop()
        b = dev_broker(less, ha)
    wait_for("the clear", lambda: retained(b.port, "homeassistant/device/gone/config") is None)
    b.stop(sig=signal.SIGKILL)
    b2 = dev_broker(less, ha)
    assert retained(b2.port, "homeassistant/device/gone/config") is None
    c = clients(b2.port, "ha")
    c.sub("homeassistant/#")
    c.pub("homeassistant/status", "online")
    got = [(t, p, r) for t, p, r in c.sync() if t != "homeassistant/status"]
    gone = [(p, r) for t, p, r in got if t == "homeassistant/device/gone/config"]
    assert len(gone) == 2, got
    assert json.loads(gone[0][0]) == before and gone[0][1] is False
    assert gone[1] == (b"", False) and got[-1][0] == "homeassistant/device/gone/config"
    lamp = [json.loads(p) for t, p, _ in got if t == "homeassistant/device/lamp/config"]
    assert [sorted(c["cmps"]) for c in lamp] == [
        ["brightness", "colour", "command_result", "identify", "label", "level", "power", "temp"],
        ["label"],
        ["brightness", "colour", "command_result", "identify", "level", "power", "temp"]]
    assert retained(b2.port, "homeassistant/device/gone/config") is None


def test_a_devices_own_topics_under_the_prefix_are_not_cleared_at_start(dev_broker, clients,
                                                                      tmp_path):
    """A device may report on topics under the devices prefix (its LWT, a state topic, the
    topic commands are forwarded to): those are the device's, not stale status to clear when
    gatemq starts."""
    toml = """
[plug]
availability_topic = "devices/plug/lwt"
state_topic = "devices/plug/tele"
commands.power = { type = "bool", action = "publish", topic = "devices/plug/cmnd", retain = true, state_topic = "devices/plug/stat" }
"""
    b = dev_broker(toml)
    dev = clients(b.port, "plug1")
    for topic, payload in [("devices/plug/lwt", "Online"), ("devices/plug/stat", "ON"),
                           ("devices/plug/tele", "{}")]:
        dev.pub(topic, payload, retain=True)
    Dev(b.port, clients).p.pub("devices/plug/power/set", "OFF")
    wait_for("the forwarded command", lambda: current(b.port, "devices/plug/cmnd") == "OFF")
    b.stop()
    b2 = dev_broker(toml)
    for topic, payload in [("devices/plug/lwt", "Online"), ("devices/plug/stat", "ON"),
                           ("devices/plug/tele", "{}"), ("devices/plug/cmnd", "OFF")]:
        assert retained(b2.port, topic) == payload, topic
    assert retained(b2.port, "devices/plug/availability") == "online"


def test_an_older_gatemqs_single_component_configs_are_migrated(dev_broker, clients, tmp_path):
    """Single-component configs (homeassistant/<platform>/<device>/<key>/config) of an older
    gatemq are moved to the device config the way Home Assistant documents it: migrate_discovery
    on the old topic, the device config, then the old topic cleared; one of a command no
    longer declared is removed."""
    b = dev_broker(LAMP, ["persistence true"])
    old = clients(b.port, "old")
    origin = {"name": "gatemq", "sw_version": "0.0.9"}
    old.pub("homeassistant/switch/lamp/power/config",
            json.dumps({"name": "power", "unique_id": "gatemq_lamp_power", "origin": origin}),
            retain=True)
    old.pub("homeassistant/switch/lamp/gone/config",
            json.dumps({"name": "gone", "unique_id": "gatemq_lamp_gone", "origin": origin}),
            retain=True)
    old.pub("homeassistant/switch/other/x/config", json.dumps({"name": "x"}), retain=True)
    b.stop()
    b2 = dev_broker(LAMP, ["persistence true", "homeassistant_discovery true"])
    assert retained(b2.port, "homeassistant/switch/lamp/power/config") is None
    assert retained(b2.port, "homeassistant/switch/lamp/gone/config") is None
    assert retained(b2.port, "homeassistant/switch/other/x/config") is not None, "not ours"
    assert "power" in ha_config(b2.port, "lamp")["cmps"]
    c = clients(b2.port, "ha")
    c.sub("homeassistant/#")
    c.pub("homeassistant/status", "online")
    got = [(t, p) for t, p, _ in c.sync() if t not in ("homeassistant/status",
                                                      "homeassistant/switch/other/x/config")]
    # First what each old topic needs (migrate, or the old config again before its clear),
    # then the device config, then the clears.
    first = dict(got[:2])
    assert set(first) == {"homeassistant/switch/lamp/power/config",
                          "homeassistant/switch/lamp/gone/config"}, got
    assert first["homeassistant/switch/lamp/power/config"] == b'{"migrate_discovery":true}'
    assert json.loads(first["homeassistant/switch/lamp/gone/config"])["unique_id"] == \
        "gatemq_lamp_gone"
    assert got[2][0] == "homeassistant/device/lamp/config" and "power" in json.loads(got[2][1])["cmps"]
    assert sorted(got[3:]) == [("homeassistant/switch/lamp/gone/config", b""),
                               ("homeassistant/switch/lamp/power/config", b"")], got


AVAILABILITY = """
[plug]
name = "Tasmota plug"
availability_topic = "tele/plug1/LWT"
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug1/POWER", state_topic = "stat/plug1/POWER" }

[bulb]
availability_topic = "zigbee2mqtt/bulb/availability"
availability_key = "state"
payload_available = "online"
payload_not_available = "offline"
commands.power = { type = "bool" }

[lamp]
commands.power = { type = "bool" }
"""


def test_a_device_reports_its_own_availability(dev_broker, clients, tmp_path):
    """availability_topic: devices/<d>/availability follows the device's own report (Tasmota's
    LWT Online/Offline by default, a JSON member with availability_key), offline until it has
    reported; a device without one is online while gatemq runs."""
    b = dev_broker(AVAILABILITY)
    assert retained(b.port, "devices/plug/availability") == "offline"
    assert retained(b.port, "devices/bulb/availability") == "offline"
    assert retained(b.port, "devices/lamp/availability") == "online"
    w = clients(b.port, "w")
    w.sub("devices/+/availability")
    p = clients(b.port, "p")
    p.pub("tele/plug1/LWT", "Online", retain=True)
    _, (_, v, _) = w.until("devices/plug/availability")
    assert v == b"online"
    p.pub("zigbee2mqtt/bulb/availability", '{"state":"online"}')
    _, (_, v, _) = w.until("devices/bulb/availability")
    assert v == b"online"
    p.pub("tele/plug1/LWT", "whatever")  # neither: ignored
    p.pub("tele/plug1/LWT", "Online")  # no change: nothing published
    p.pub("zigbee2mqtt/bulb/availability", '{"state":"offline"}')
    _, (_, v, _) = w.until("devices/bulb/availability")
    assert v == b"offline"
    assert [t for t, _, _ in w.sync()] == []
    assert retained(b.port, "devices/plug/availability") == "online"
    # The device's report is retained: a reload that changes the plug takes it up at once.
    (tmp_path / "devices.toml").write_text(AVAILABILITY.replace('"Tasmota plug"', '"Plug"'))
    b.proc.send_signal(signal.SIGHUP)
    _, (_, v, _) = w.until("devices/plug/availability")
    assert v == b"online"
    p.pub("tele/plug1/LWT", "Offline", retain=True)
    _, (_, v, _) = w.until("devices/plug/availability")
    assert v == b"offline"


def test_a_devices_last_will_is_its_availability(dev_broker, clients):
    """Tasmota's LWT is a last will: when the plug's connection dies, the broker publishes
    `Offline` for it, and the executor takes that like any report."""
    b = dev_broker(AVAILABILITY)
    w = clients(b.port, "w")
    w.sub("devices/plug/availability")
    plug = RawClient(b.port)
    plug.connect(client_id="plug1", will={"topic": "tele/plug1/LWT", "payload": b"Offline",
                                          "qos": 1, "retain": True})
    plug.send(publish_packet("tele/plug1/LWT", b"Online", retain=True))
    _, (_, v, _) = w.until("devices/plug/availability")
    assert v == b"online"
    plug.close()  # no DISCONNECT: the will goes out
    _, (_, v, _) = w.until("devices/plug/availability")
    assert v == b"offline"
    assert retained(b.port, "devices/plug/availability") == "offline"


def config_error(tmp_path, toml):
    """What `gatemq --test-config` says of a config naming this devices file (it must fail)."""
    (tmp_path / "devices.toml").write_text(toml)
    conf = tmp_path / "g.conf"
    conf.write_text("listener 0 127.0.0.1\ndevices_file devices.toml\n")
    r = subprocess.run([BIN, "--test-config", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    return r.stderr


def test_entity_category_is_config_or_diagnostic(tmp_path):
    err = config_error(tmp_path, '[lamp]\ncommands.power = { type = "bool", entity_category = "main" }\n')
    assert "devices.toml:2: lamp.commands.power.entity_category: expected config or diagnostic" in err


def test_availability_options_need_the_topic(tmp_path):
    err = config_error(tmp_path, '[plug]\npayload_available = "up"\ncommands.power = { type = "bool" }\n')
    assert "devices.toml:2: plug.payload_available: only with availability_topic" in err


# --- exec action ------------------------------------------------------------------------------

def test_exec_passes_value_as_one_argument_without_shell(dev_broker, clients, tmp_path):
    script(tmp_path, "record.sh",
           'out="$(dirname "$0")/record.out"\n'
           '{ echo "$#"; for a in "$@"; do printf "%s\\n" "$a"; done; } > "$out.tmp"\n'
           'mv "$out.tmp" "$out"\n')
    b = dev_broker("""
[runner]
commands.say = { type = "string", max_length = 100, action = "exec", program = "record.sh", args = ["--msg", "{value}", "{device}/{command}"] }
commands.sw = { type = "bool", action = "exec", program = "record.sh", args = ["{value}"], payload_on = "enable", payload_off = "disable" }
""")
    d = Dev(b.port, clients)
    out = tmp_path / "record.out"
    value = "a; rm -rf x $(echo hi) | touch pwned && `touch pwned2` 'q' \"dq\" *"
    mosquitto_pub(b.port, "devices/runner/say/set", value)
    before, (_, res, _) = d.w.until("devices/runner/say/result")
    assert json.loads(res) == {"ok": True, "value": value}
    assert ("devices/runner/say", value.encode(), False) in before
    assert out.read_text() == f"3\n--msg\n{value}\nrunner/say\n"
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()
    assert not (ROOT / "pwned2").exists()
    assert retained(b.port, "devices/runner/say") == value
    d.ok("runner", "sw", "on", "ON", "ON")
    assert out.read_text() == "1\nenable\n"
    d.ok("runner", "sw", "0", "OFF", "OFF")
    assert out.read_text() == "1\ndisable\n"
    # An invalid value never runs the program.
    out.unlink()
    d.err("runner", "say", "x" * 101, "say: 101 characters is longer than max 100")
    assert not out.exists()


def test_exec_nonzero_exit_is_an_error_and_keeps_state(dev_broker, clients, tmp_path):
    script(tmp_path, "code.sh", 'exit "$1"\n')
    b = dev_broker("""
[runner]
commands.code = { type = "int", min = 0, max = 9, initial = 5, action = "exec", program = "code.sh", args = ["{value}"] }
commands.missing = { type = "trigger", action = "exec", program = "does-not-exist.sh" }
""")
    d = Dev(b.port, clients)
    d.ok("runner", "code", "0", 0, "0")
    d.err("runner", "code", "3", "code: exec exited with status 3")
    assert retained(b.port, "devices/runner/code") == "0"
    assert retained_state(b.port, "runner") == {"code": 0}
    before, res = d.send("runner", "missing", "")
    assert res["ok"] is False
    assert res["error"].startswith(f"missing: cannot run {tmp_path}/does-not-exist.sh"), res
    # The device is not stuck: the next command runs.
    d.ok("runner", "code", "0", 0, "0")


def test_exec_timeout_while_other_clients_are_served(dev_broker, clients, tmp_path):
    script(tmp_path, "hang.sh", 'echo $$ > "$(dirname "$0")/hang.pid"\nexec sleep 30\n')
    b = dev_broker("""
[slow]
commands.hang = { type = "bool", initial = "OFF", action = "exec", program = "hang.sh", timeout_ms = 1000 }
[lamp]
commands.power = { type = "bool", initial = "OFF" }
""")
    d = Dev(b.port, clients)
    pidfile = tmp_path / "hang.pid"
    t0 = time.monotonic()
    d.p.pub("devices/slow/hang/set", "ON")
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() - t0 < 3, "hang.sh did not start"
        time.sleep(0.01)
    pid = int(pidfile.read_text())

    # While the program hangs, another pair of clients does a publish/subscribe round trip.
    a, z = clients(b.port, "a"), clients(b.port, "z")
    z.sub("other/topic")
    t1 = time.monotonic()
    a.pub("other/topic", "ping")
    _, (_, payload, _) = z.until("other/topic", timeout=2)
    round_trip = time.monotonic() - t1
    assert payload == b"ping"
    assert round_trip < 0.3, f"round trip during the exec took {round_trip:.3f}s"
    # ... and other devices' commands are executed.
    d.ok("lamp", "power", "ON", "ON", "ON")
    assert time.monotonic() - t0 < 0.9, "the exec timeout has passed already"

    before, (_, res, _) = d.w.until("devices/slow/hang/result", timeout=5)
    elapsed = time.monotonic() - t0
    assert json.loads(res) == {"ok": False, "error": "hang: exec timed out after 1 s"}
    assert 0.9 <= elapsed < 3.0, f"timeout response after {elapsed:.2f}s"
    assert [t for t, _, _ in before + d.w.sync() if t.startswith("devices/slow/")
            and not t.endswith("/set")] == []
    assert retained(b.port, "devices/slow/hang") == "OFF"
    assert retained_state(b.port, "slow") == {"hang": "OFF"}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_exec_queue_full_is_busy(dev_broker, clients, tmp_path):
    script(tmp_path, "job.sh", 'echo "$1" >> "$(dirname "$0")/job.log"\nsleep 0.4\n')
    b = dev_broker("""
[worker]
exec_queue = 1
commands.job = { type = "int", min = 0, max = 100, action = "exec", program = "job.sh", args = ["{value}"], timeout_ms = 5000 }
""")
    d = Dev(b.port, clients)
    for n in ("1", "2", "3"):
        d.p.pub("devices/worker/job/set", n)
    results = []
    statuses = []
    for _ in range(3):
        before, (_, res, _) = d.w.until("devices/worker/job/result")
        results.append(json.loads(res))
        statuses += [p.decode() for t, p, _ in before if t == "devices/worker/job"]
    assert results == [
        {"ok": False, "error": "worker: busy, 1 commands already waiting"},
        {"ok": True, "value": 1},
        {"ok": True, "value": 2},
    ]
    assert statuses == ["1", "2"]  # each status just before its response, none for 3
    assert (tmp_path / "job.log").read_text() == "1\n2\n"
    assert retained(b.port, "devices/worker/job") == "2"


# --- publish action (adapter) -----------------------------------------------------------------

def test_publish_adapter_tasmota_round_trip(dev_broker, clients):
    b = dev_broker("""
[plug]
name = "Tasmota plug"
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug1/POWER", payload = "{value}", state_topic = "stat/plug1/POWER" }
""")
    tasmota = clients(b.port, "tasmota")
    tasmota.sub("cmnd/plug1/POWER")
    d = Dev(b.port, clients)
    before, res = d.send("plug", "power", "on")
    assert res == {"ok": True, "value": "ON"}
    _, (_, cmnd, _) = tasmota.until("cmnd/plug1/POWER")
    assert cmnd == b"ON"
    # No status until the plug reports.
    assert [t for t, _, _ in before + d.w.sync() if t in
            ("devices/plug/power", "devices/plug/state")] == []
    assert retained(b.port, "devices/plug/power") is None
    tasmota.pub("stat/plug1/POWER", cmnd)  # the plug switched and reports
    _, (_, status, _) = d.w.until("devices/plug/power")
    assert status == b"ON"
    _, (_, state, _) = d.w.until("devices/plug/state")
    assert json.loads(state) == {"power": "ON"}
    assert retained(b.port, "devices/plug/power") == "ON"
    # Switched by hand: the report alone changes the status.
    tasmota.pub("stat/plug1/POWER", "OFF")
    _, (_, status, _) = d.w.until("devices/plug/power")
    assert status == b"OFF"
    # A report that changes nothing publishes nothing; garbage is ignored.
    d.w.sync()
    tasmota.pub("stat/plug1/POWER", "OFF")
    tasmota.pub("stat/plug1/POWER", "garbage")
    assert [t for t, _, _ in d.w.sync() if t.startswith("devices/plug/")] == []
    assert retained(b.port, "devices/plug/power") == "OFF"


def test_publish_adapter_zigbee2mqtt_device_state_topic(dev_broker, clients):
    b = dev_broker("""
[bulb]
state_topic = "zigbee2mqtt/bulb"
commands.power = { type = "bool", action = "publish", topic = "zigbee2mqtt/bulb/set", payload = '{"state":"{value}"}', state_key = "state" }
commands.brightness = { type = "int", min = 0, max = 254, action = "publish", topic = "zigbee2mqtt/bulb/set", payload = '{"brightness":{value}}' }
""")
    z2m = clients(b.port, "z2m")
    z2m.sub("zigbee2mqtt/bulb/set")
    d = Dev(b.port, clients)
    _, res = d.send("bulb", "brightness", "100")
    assert res == {"ok": True, "value": 100}
    assert json.loads(z2m.get()[1]) == {"brightness": 100}
    _, res = d.send("bulb", "power", "ON")
    assert res == {"ok": True, "value": "ON"}
    assert json.loads(z2m.get()[1]) == {"state": "ON"}
    assert [t for t, _, _ in d.w.sync() if t in ("devices/bulb/power", "devices/bulb/brightness",
                                                 "devices/bulb/state")] == []
    z2m.pub("zigbee2mqtt/bulb", json.dumps(
        {"state": "ON", "brightness": 100, "linkquality": 120, "color": {"x": 0.3, "y": 0.4}}))
    before, (_, state, _) = d.w.until("devices/bulb/state")
    assert json.loads(state) == {"power": "ON", "brightness": 100}
    st = {t: p for t, p, _ in before if t in ("devices/bulb/power", "devices/bulb/brightness")}
    assert st == {"devices/bulb/power": b"ON", "devices/bulb/brightness": b"100"}
    # An out-of-range report value is ignored, a valid one in the same report applies.
    z2m.pub("zigbee2mqtt/bulb", '{"state": "OFF", "brightness": 999}')
    _, (_, state, _) = d.w.until("devices/bulb/state")
    assert json.loads(state) == {"power": "OFF", "brightness": 100}
    assert retained(b.port, "devices/bulb/brightness") == "100"
    assert retained(b.port, "devices/bulb/power") == "OFF"


def test_publish_adapter_without_state_topic_sets_state_at_once(dev_broker, clients):
    b = dev_broker("""
[siren]
commands.tone = { type = "enum", values = ["quiet", "loud"], action = "publish", topic = "cmnd/{device}/{command}", payload = "{device}:{command}={value}", retain = true }
""")
    d = Dev(b.port, clients)
    d.ok("siren", "tone", "LOUD", "loud", "loud")
    assert mosquitto_sub_retained(b.port, "cmnd/siren/tone") == (1, "cmnd/siren/tone",
                                                                 "siren:tone=loud")
    d.err("siren", "tone", "deafening", "tone: 'deafening' is not one of quiet, loud")
    assert retained(b.port, "cmnd/siren/tone") == "siren:tone=loud"
    assert retained(b.port, "devices/siren/tone") == "loud"


# --- rate limit, routing, discovery, prefixes -------------------------------------------------

def test_rate_limit(dev_broker, clients):
    b = dev_broker("""
[gate]
min_interval_ms = 500
commands.power = { type = "bool", initial = "OFF" }
""")
    d = Dev(b.port, clients)
    d.ok("gate", "power", "ON", "ON", "ON")
    accepted = time.monotonic()
    error = "gate: too many commands, at most one every 500 ms"
    d.err("gate", "power", "OFF", error)
    d.err("gate", None, '{"power": "OFF"}', error)
    assert time.monotonic() - accepted < 0.45, "too slow to test the 500 ms limit"
    assert retained(b.port, "devices/gate/power") == "ON"
    time.sleep(max(0.0, accepted + 0.6 - time.monotonic()))
    d.ok("gate", "power", "OFF", "OFF", "OFF")
    assert retained(b.port, "devices/gate/power") == "OFF"


@pytest.mark.parametrize("route", [False, True])
def test_route_commands_option(dev_broker, clients, route):
    lines = [] if route else ["devices_route_commands false"]
    b = dev_broker(LAMP, lines)
    d = Dev(b.port, clients)
    exact = clients(b.port, "exact")
    exact.sub("devices/lamp/power/set")
    mosquitto_pub(b.port, "devices/lamp/power/set", "ON")
    before, (_, res, _) = d.w.until("devices/lamp/power/result")
    assert json.loads(res) == {"ok": True, "value": "ON"}
    assert ("devices/lamp/power", b"ON", False) in before
    _, (_, state, _) = d.w.until("devices/lamp/state")
    assert json.loads(state)["power"] == "ON"
    raw = [(t, p) for t, p, _ in before + d.w.sync() if t.endswith("/set")]
    exact_raw = [(t, p) for t, p, _ in exact.sync()]
    if route:
        assert raw == [("devices/lamp/power/set", b"ON")]
        assert exact_raw == [("devices/lamp/power/set", b"ON")]
    else:
        assert raw == [] and exact_raw == []


@pytest.mark.parametrize("route", [False, True])
def test_a_will_on_a_command_topic_is_a_command(dev_broker, clients, route):
    """A will is a message like any other: on a command topic it is run, and it reaches
    ordinary subscribers only as `devices_route_commands` says (as a command published is)."""
    lines = [] if route else ["devices_route_commands false"]
    b = dev_broker(LAMP, lines)
    d = Dev(b.port, clients)
    exact = clients(b.port, "exact")
    exact.sub("devices/lamp/power/set")
    dying = RawClient(b.port)
    dying.connect(client_id="dying", will={"topic": "devices/lamp/power/set", "payload": b"ON",
                                           "qos": 1, "retain": True})
    dying.close()  # no DISCONNECT: the will goes out
    before, (_, res, _) = d.w.until("devices/lamp/power/result")
    assert json.loads(res) == {"ok": True, "value": "ON"}
    assert ("devices/lamp/power", b"ON", False) in before
    assert retained(b.port, "devices/lamp/power") == "ON"
    raw = [(t, p) for t, p, _ in before + d.w.sync() if t.endswith("/set")]
    exact_raw = [(t, p) for t, p, _ in exact.sync()]
    if route:
        assert raw == [("devices/lamp/power/set", b"ON")]
        assert exact_raw == [("devices/lamp/power/set", b"ON")]
        assert retained(b.port, "devices/lamp/power/set") == "ON"
    else:
        assert raw == [] and exact_raw == []
        assert retained(b.port, "devices/lamp/power/set") is None


DISCOVERY = """
[lamp]
name = "Living room lamp"
commands.power = { type = "bool" }
commands.brightness = { type = "int", min = 0, max = 255 }
commands.temp = { type = "float", min = 5, max = 30, step = 0.5, device_class = "temperature", unit = "°C", icon = "mdi:thermometer" }
commands.colour = { type = "enum", values = ["warm", "cold"] }
commands.identify = { type = "trigger", entity_category = "diagnostic" }
commands.label = { type = "string", max_length = 20, entity_category = "config" }
"""


def ha_config(port, device, prefix="homeassistant"):
    """Device `device`'s retained Home Assistant device config (device-based discovery)."""
    text = retained(port, f"{prefix}/device/{device}/config")
    assert text, f"no retained {prefix}/device/{device}/config"
    return json.loads(text)


def test_home_assistant_discovery(dev_broker, clients):
    """One retained device-based config per device (HA 2024.11+): the device, the origin and
    every entity in `cmps`, keyed by command."""
    b = dev_broker(DISCOVERY, ["homeassistant_discovery true"])
    c = clients(b.port, "ha")
    msgs = c.sub("homeassistant/#")
    assert [(t, r) for t, _, r in msgs] == [("homeassistant/device/lamp/config", True)]
    config = json.loads(msgs[0][1])
    version = re.search(r'^version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert config["device"] == {"identifiers": ["gatemq_lamp"], "name": "Living room lamp",
                                "manufacturer": "gatemq", "model": "declared device",
                                "sw_version": version}
    assert config["origin"] == {"name": "gatemq", "sw_version": version}
    cmps = config["cmps"]
    expect = {"power": "switch", "brightness": "number", "temp": "number",
              "colour": "select", "identify": "button", "label": "text"}
    event = cmps.pop("command_result")
    assert {k: v["p"] for k, v in cmps.items()} == expect
    assert event["p"] == "event"
    assert event["state_topic"] == "devices/lamp/event"
    assert event["event_types"] == ["ok", "refused"]
    assert event["unique_id"] == "gatemq_lamp_command_result"
    assert "availability_topic" not in event, "refusals show while the device is offline"
    for cmd, comp in expect.items():
        cfg = cmps[cmd]
        assert cfg["name"] == cmd
        assert cfg["command_topic"] == f"devices/lamp/{cmd}/set"
        assert cfg["availability_topic"] == "devices/lamp/availability"
        assert cfg["unique_id"] == f"gatemq_lamp_{cmd}"
        if comp == "button":
            assert "state_topic" not in cfg
        else:
            assert cfg["state_topic"] == f"devices/lamp/{cmd}"
        # Modern discovery: default_entity_id beside object_id.
        assert (cfg["object_id"], cfg["default_entity_id"]) == (f"lamp_{cmd}", f"{comp}.lamp_{cmd}")
    assert (cmps["power"]["payload_on"], cmps["power"]["payload_off"]) == ("ON", "OFF")
    num = cmps["brightness"]
    assert (num["min"], num["max"], num["step"]) == (0, 255, 1)
    num = cmps["temp"]
    assert (num["min"], num["max"], num["step"]) == (5, 30, 0.5)
    assert cmps["colour"]["options"] == ["warm", "cold"]
    assert cmps["label"]["max"] == 20
    assert event["default_entity_id"] == "event.lamp_command_result"
    # Per-command keys pass through to discovery (unit as unit_of_measurement).
    temp = cmps["temp"]
    assert (temp["device_class"], temp["unit_of_measurement"], temp["icon"]) == \
        ("temperature", "°C", "mdi:thermometer")
    assert cmps["identify"]["entity_category"] == "diagnostic"
    assert cmps["label"]["entity_category"] == "config"
    assert "device_class" not in cmps["power"]


def test_discovery_links_the_status_page(dev_broker, clients):
    """With an http_listener, the devices' configuration_url and the origin's support_url are
    the status page."""
    b = dev_broker(DISCOVERY, ["homeassistant_discovery true", "http_listener 0 127.0.0.1"])
    port = int(re.search(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)", b.log()).group(1))
    cfg = ha_config(b.port, "lamp")
    assert cfg["device"]["configuration_url"] == f"http://127.0.0.1:{port}/"
    assert cfg["origin"]["support_url"] == f"http://127.0.0.1:{port}/"


def test_a_light_is_one_home_assistant_entity(dev_broker, clients):
    """homeassistant = "light": power, brightness (HA's 0-255 scaled to its max), colour_temp
    (kelvin) and effect are one light in HA's template schema on the device's own topics;
    other commands keep their own entities, and a light without a bool power is refused at
    load. (The real Home Assistant test proves what HA renders from the templates.)"""
    b = dev_broker('''
[desk]
name = "Desk"
homeassistant = "light"
commands.power = { type = "bool" }
commands.brightness = { type = "int", min = 0, max = 100 }
commands.colour_temp = { type = "int", min = 2700, max = 6500 }
commands.effect = { type = "enum", values = ["none", "candle"] }
commands.colour = { type = "enum", values = ["warm", "cold"] }
''', ["homeassistant_discovery true"])
    cmps = ha_config(b.port, "desk")["cmps"]
    assert {k: v["p"] for k, v in cmps.items()} == {
        "colour": "select", "light": "light", "command_result": "event"}
    light = cmps["light"]
    assert light["name"] is None and light["schema"] == "template"
    assert (light["command_topic"], light["state_topic"]) == ("devices/desk/set", "devices/desk/state")
    assert light["effect_list"] == ["none", "candle"]
    assert (light["color_temp_kelvin"], light["min_kelvin"], light["max_kelvin"]) == (True, 2700, 6500)
    assert light["color_temp_template"] == "{{ value_json.colour_temp }}"
    assert "brightness * 100 / 255" in light["command_on_template"]
    assert light["brightness_template"] == "{{ (value_json.brightness * 255 / 100) | round(0) | int }}"
    assert light["command_off_template"] == '{"power":"OFF"}'
    # What HA's template renders for turn_on with brightness 255 is one multi-command.
    d = Dev(b.port, clients)
    d.p.pub("devices/desk/set", '{"power":"ON","brightness":100,"colour_temp":3000}')
    assert retained_state(b.port, "desk") == {"power": "ON", "brightness": 100, "colour_temp": 3000}


def test_fan_and_cover_are_one_home_assistant_entity_each(dev_broker, clients):
    """homeassistant = "fan": power and an int speed (a percentage of its range) or an enum
    (preset modes); "cover": position and/or move (open/close/stop). Each part keeps its own
    command topic, so one HA service call is one command."""
    b = dev_broker('''
[attic]
homeassistant = "fan"
commands.power = { type = "bool" }
commands.speed = { type = "int", min = 0, max = 3 }
[hall]
homeassistant = "fan"
commands.power = { type = "bool", icon = "mdi:fan" }
commands.speed = { type = "enum", values = ["low", "high"] }
[blind]
homeassistant = "cover"
commands.position = { type = "int", min = 0, max = 100, device_class = "blind" }
commands.move = { type = "enum", values = ["OPEN", "CLOSE", "STOP"] }
[garage]
homeassistant = "cover"
commands.move = { type = "enum", values = ["open", "close"] }
[shade]
homeassistant = "cover"
commands.position = { type = "int", min = 0, max = 10 }
''', ["homeassistant_discovery true"])
    attic = ha_config(b.port, "attic")["cmps"]
    assert set(attic) == {"fan", "command_result"}
    fan = attic["fan"]
    assert fan["p"] == "fan" and fan["default_entity_id"] == "fan.attic"
    assert (fan["command_topic"], fan["state_topic"]) == ("devices/attic/power/set", "devices/attic/power")
    assert (fan["percentage_command_topic"], fan["percentage_state_topic"]) == \
        ("devices/attic/speed/set", "devices/attic/speed")
    assert (fan["speed_range_min"], fan["speed_range_max"]) == (1, 3)
    hall = ha_config(b.port, "hall")["cmps"]["fan"]
    assert hall["preset_modes"] == ["low", "high"] and hall["icon"] == "mdi:fan"
    assert hall["preset_mode_command_topic"] == "devices/hall/speed/set"
    assert "percentage_command_topic" not in hall
    blind = ha_config(b.port, "blind")["cmps"]["cover"]
    assert (blind["command_topic"], blind["payload_open"], blind["payload_close"],
            blind["payload_stop"]) == ("devices/blind/move/set", "OPEN", "CLOSE", "STOP")
    assert (blind["set_position_topic"], blind["position_topic"]) == \
        ("devices/blind/position/set", "devices/blind/position")
    assert (blind["position_open"], blind["position_closed"], blind["device_class"]) == (100, 0, "blind")
    assert "state_topic" not in blind, "the position says whether it is open"
    garage = ha_config(b.port, "garage")["cmps"]["cover"]
    assert (garage["state_topic"], garage["state_open"], garage["state_closed"]) == \
        ("devices/garage/move", "open", "close")
    assert garage["payload_stop"] is None and "set_position_topic" not in garage
    shade = ha_config(b.port, "shade")["cmps"]["cover"]
    assert (shade["command_topic"], shade["payload_open"], shade["payload_close"]) == \
        ("devices/shade/position/set", "10", "0")
    for bad, what in [
        ('homeassistant = "fan"\ncommands.speed = { type = "int", max = 3 }\n', "a fan needs a bool command 'power'"),
        ('homeassistant = "cover"\ncommands.power = { type = "bool" }\n', "a cover needs an int command 'position'"),
        ('homeassistant = "cover"\ncommands.move = { type = "enum", values = ["up", "down"] }\n', "a cover needs"),
        ('homeassistant = "light"\ncommands.power = { type = "bool" }\ncommands.colour_temp = { type = "int", min = 153, max = 500 }\n',
         "a light's colour temperature is in kelvin"),
        ('homeassistant = "vacuum"\ncommands.power = { type = "bool" }\n', "unknown Home Assistant entity 'vacuum' (expected light, fan or cover)"),
    ]:
        d = b.tmp / "bad"
        d.mkdir(exist_ok=True)
        assert what in config_error(d, "[x]\n" + bad)


def test_a_light_needs_a_bool_power(tmp_path):
    err = config_error(tmp_path, '[desk]\nhomeassistant = "light"\ncommands.on = { type = "bool" }\n')
    assert "devices.toml:2: desk.homeassistant: a light needs a bool command 'power'" in err


def test_results_are_home_assistant_events_with_discovery(dev_broker, clients):
    """Every result is also an event on devices/<d>/event (not retained), so a refused
    command shows in Home Assistant; without discovery nothing is sent there."""
    b = dev_broker(DISCOVERY, ["homeassistant_discovery true"])
    c = clients(b.port, "ev")
    c.sub("devices/+/event")
    c.pub("devices/lamp/brightness/set", "300")
    c.pub("devices/lamp/brightness/set", "200")
    c.pub("devices/lamp/set", '{"power": "ON", "colour": "warm"}')
    c.pub("devices/lamp/identify/set", "PRESS")
    c.pub("devices/nope/power/set", "ON")  # not declared: no entity, no event
    got = [(t, json.loads(p), r) for t, p, r in c.sync()]
    assert got == [
        ("devices/lamp/event", {"event_type": "refused", "command": "brightness",
                                "error": "brightness: 300 is above max 255"}, False),
        ("devices/lamp/event", {"event_type": "ok", "command": "brightness", "value": 200}, False),
        ("devices/lamp/event", {"event_type": "ok", "command": "power", "value": "ON"}, False),
        ("devices/lamp/event", {"event_type": "ok", "command": "colour", "value": "warm"}, False),
        ("devices/lamp/event", {"event_type": "ok", "command": "identify"}, False),
    ]
    plain = dev_broker(DISCOVERY)
    q = clients(plain.port, "q")
    q.sub("devices/+/event")
    q.pub("devices/lamp/brightness/set", "300")
    assert q.sync() == []


def test_custom_prefixes_and_discovery_off_by_default(dev_broker, clients):
    b = dev_broker(LAMP, ["devices_prefix home/devs", "homeassistant_prefix ha/disc"])
    d = Dev(b.port, clients, prefix="home/devs")
    assert ("home/devs/lamp/availability", b"online", True) in d.initial
    d.ok("lamp", "brightness", "12", 12, "12")
    assert retained(b.port, "home/devs/lamp/brightness") == "12"
    # The default prefix is not a command topic any more.
    other = clients(b.port, "o")
    other.sub("devices/#")
    other.pub("devices/lamp/power/set", "ON")
    assert [t for t, _, _ in other.sync()] == ["devices/lamp/power/set"]
    assert [t for t, _, _ in d.w.sync()] == []
    # Discovery is off unless asked for.
    assert clients(b.port, "ha").sub("ha/#") == []
    b2 = dev_broker(LAMP, ["devices_prefix home/devs", "homeassistant_prefix ha/disc",
                           "homeassistant_discovery true"])
    cfg = ha_config(b2.port, "lamp", prefix="ha/disc")["cmps"]["brightness"]
    assert cfg["command_topic"] == "home/devs/lamp/brightness/set"
    assert cfg["state_topic"] == "home/devs/lamp/brightness"
    assert cfg["availability_topic"] == "home/devs/lamp/availability"


# --- a bad devices file -----------------------------------------------------------------------

BAD_FILES = [
    ('[lamp]\nname = "x"\ncommands.brightness = { type = "integer", min = 0 }\n',
     3, "lamp.commands.brightness.type: unknown type 'integer'"),
    ('[lamp]\ncommands.power = { type = "bool" }\ncolor = "red"\n', 3, "lamp.color: unknown key"),
    ('[lamp]\n\n\ncommands.brightness = { type = "int", max = 9, initial = 10 }\n',
     4, "lamp.commands.brightness.initial: brightness: 10 is above max 9"),
    ('[lamp]\ncommands.p = { type = "bool", action = "publish" }\n',
     2, "lamp.commands.p: a publish action needs 'topic'"),
    ('[lamp]\ncommands.p = { type = "bool" }\ncommands.result = { type = "bool" }\n',
     3, "lamp.commands.result: a command name must be one topic level"),
    ('[lamp]\ncommands.c = { type = "enum", values = [] }\n', 2, "lamp.commands.c.values: must not be empty"),
]


@pytest.mark.parametrize("toml,line,what", BAD_FILES)
def test_bad_devices_file_refuses_to_start(tmp_path, toml, line, what):
    (tmp_path / "bad.toml").write_text(toml)
    conf = tmp_path / "gatemq.conf"
    conf.write_text("listener 0 127.0.0.1\ndevices_file bad.toml\n")
    expect = f"{tmp_path / 'bad.toml'}:{line}: {what}"
    for args in (["--test-config", "-c", str(conf)], ["-c", str(conf)]):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert expect in r.stderr, (args, r.stderr)


def test_missing_devices_file_names_config_line(tmp_path):
    conf = tmp_path / "gatemq.conf"
    conf.write_text("listener 0 127.0.0.1\n# devices\ndevices_file nope.toml\n")
    for args in (["--test-config", "-c", str(conf)], ["-c", str(conf)]):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1, (args, r.stderr)
        assert f"{conf}:3: option 'devices_file': cannot read devices file" in r.stderr
        assert "nope.toml" in r.stderr
    (tmp_path / "nope.toml").write_text(LAMP)
    r = subprocess.run([BIN, "--test-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr


# --- the README scenario with the shipped example config --------------------------------------

def test_readme_scenario_with_example_config(tmp_path, clients):
    port = free_port()
    log = open(tmp_path / "example.log", "wb")
    # A copy of examples/: the devices' kept values start fresh, as on a first start.
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("gatemq-devices.db*"))
    proc = subprocess.Popen([BIN, "-c", str(tmp_path / "examples" / "gatemq.conf"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / "example.log").read_text()
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "example broker did not listen"
                time.sleep(0.02)
        w = clients(port, "readme")
        initial = {t: p.decode() for t, p, _ in w.sub("devices/lamp/#")}
        assert initial["devices/lamp/power"] == "OFF"
        assert initial["devices/lamp/brightness"] == "128"

        mosquitto_pub(port, "devices/lamp/power/set", "ON")
        before, (_, res, _) = w.until("devices/lamp/power/result")
        assert json.loads(res) == {"ok": True, "value": "ON"}
        assert ("devices/lamp/power", b"ON", False) in before
        _, (_, state, _) = w.until("devices/lamp/state")
        assert json.loads(state) == {"power": "ON", "brightness": 128, "colour": "warm"}

        mosquitto_pub(port, "devices/lamp/brightness/set", "300")
        before, (_, res, _) = w.until("devices/lamp/brightness/result")
        assert json.loads(res) == {"ok": False, "error": "brightness: 300 is above max 255"}
        assert [t for t, _, _ in before + w.sync() if not t.endswith("/set")] == \
            ["devices/lamp/event"]  # the refusal as a Home Assistant event, nothing else

        assert mosquitto_sub_retained(port, "devices/lamp/power") == (1, "devices/lamp/power",
                                                                      "ON")
        assert mosquitto_sub_retained(port, "devices/lamp/brightness") == (
            1, "devices/lamp/brightness", "128")
        flag, _, state = mosquitto_sub_retained(port, "devices/lamp/state")
        assert flag == 1
        assert json.loads(state) == {"power": "ON", "brightness": 128, "colour": "warm"}
        cfg = ha_config(port, "lamp")["cmps"]["power"]
        assert cfg["command_topic"] == "devices/lamp/power/set"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_mqtt5_response_topic_gets_the_response_with_correlation_data(dev_broker, tmp_path):
    """An MQTT 5 command with a Response Topic gets its response there too, with its
    Correlation Data, for a synchronous action and for an exec that answers later."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    s = script(tmp_path, "ok.sh", "exit 0\n")
    b = dev_broker(LAMP + f'[fan]\ncommands.speed = {{ type = "int", action = "exec", program = "{s}" }}\n')
    got = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5app", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.put(
        (m.topic, json.loads(m.payload), getattr(m.properties, "CorrelationData", None)))
    c.connect(HOST, b.port)
    c.loop_start()
    try:
        c.subscribe("replies/#", qos=1)
        time.sleep(0.3)
        for topic, payload, corr in [("devices/lamp/brightness/set", "300", b"req-1"),
                                     ("devices/lamp/power/set", "ON", b"req-2"),
                                     ("devices/fan/speed/set", "3", b"req-3")]:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "replies/app"
            props.CorrelationData = corr
            c.publish(topic, payload, qos=1, properties=props)
        seen = [got.get(timeout=5) for _ in range(3)]
    finally:
        c.loop_stop()
        c.disconnect()
    assert seen == [
        ("replies/app", {"ok": False, "error": "brightness: 300 is above max 255"}, b"req-1"),
        ("replies/app", {"ok": True, "value": "ON"}, b"req-2"),
        ("replies/app", {"ok": True, "value": 3}, b"req-3"),
    ]
