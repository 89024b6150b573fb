"""SIGHUP: the config file and the files it names are read again while clients stay connected;
a config that does not load leaves the running one in place."""
import json
import re
import signal
import subprocess
import time

from clients import Client
from conftest import BIN, LISTEN_RE


def rewrite(b, lines):
    b.conf.write_text("listener 0 127.0.0.1\nallow_anonymous true\n" + "".join(l + "\n" for l in lines))


def reload(b, expect="configuration reloaded"):
    before = b.log().count(expect)
    b.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while b.log().count(expect) == before:
        assert time.monotonic() < deadline, f"no '{expect}' after SIGHUP:\n{b.log()}"
        time.sleep(0.02)


def test_new_acl_and_a_new_listener_apply_and_clients_stay_connected(make_broker, tmp_path):
    (tmp_path / "acl").write_text("topic readwrite a/#\n")
    b = make_broker(["acl_file acl"])
    sub = Client(b.port)
    sub.connect()
    sub.subscribe("a/#", 1)
    pub = Client(b.port)
    pub.connect()
    pub.publish("a/x", b"before", qos=1)
    assert sub.get().payload == b"before"

    (tmp_path / "acl").write_text("topic readwrite a/#\ntopic deny a/secret\n")
    rewrite(b, ["acl_file acl", "listener 0 127.0.0.1"])
    reload(b)
    ports = [int(p) for p in LISTEN_RE.findall(b.log())]
    assert len(ports) == 2 and ports[0] == b.port
    # Same connections, new rules.
    pub.publish("a/secret", b"denied now", qos=1)
    pub.publish("a/x", b"after", qos=1)
    assert sub.get().payload == b"after"
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
    # The new listener serves.
    c = Client(ports[1])
    c.connect()
    c.publish("a/y", b"via the new listener", qos=1)
    assert sub.get().payload == b"via the new listener"
    for x in (sub, pub, c):
        x.disconnect()


def test_a_config_that_does_not_load_keeps_the_running_one(make_broker, tmp_path):
    (tmp_path / "acl").write_text("topic readwrite a/#\n")
    b = make_broker(["acl_file acl"])
    c = Client(b.port)
    c.connect()
    c.subscribe("a/#", 1)
    rewrite(b, ["acl_file acl", "max_inflight_messages lots"])
    reload(b, expect="reload failed")
    assert "max_inflight_messages" in b.log()
    rewrite(b, ["acl_file missing-acl"])
    reload(b, expect="reload failed")
    (tmp_path / "acl").write_text("this is not an acl\n")
    rewrite(b, ["acl_file acl"])
    reload(b, expect="reload failed")
    # Still the old rules, still connected.
    c.publish("a/ok", b"still", qos=1)
    assert c.get().payload == b"still"
    assert b.alive()
    c.disconnect()


def test_a_new_password_file_entry_and_removed_listener(make_broker, tmp_path):
    pw = tmp_path / "pw"
    subprocess.run([BIN, "passwd", "-c", "-b", str(pw), "old", "one"], check=True)
    lines = ["per_listener_settings true", "listener 0 127.0.0.1", "allow_anonymous false",
             "password_file pw"]
    b = make_broker(lines)
    first, second = b.ports
    on_first = Client(first)
    on_first.connect()
    on_second = Client(second, username="old", password="one")
    on_second.connect()
    subprocess.run([BIN, "passwd", "-b", str(pw), "new", "two"], check=True)
    reload(b)
    fresh = Client(second, username="new", password="two")
    assert fresh.connect(expect_ok=False)[0] == 0
    fresh.disconnect()
    assert not on_second.disconnected.is_set()
    # The second listener goes: its clients are disconnected, the first one's stay.
    b.conf.write_text("listener 0 127.0.0.1\nallow_anonymous true\n")
    reload(b)
    assert on_second.disconnected.wait(5)
    assert not on_first.disconnected.is_set()
    on_first.subscribe("still/here", 0)
    assert "no longer listening on" in b.log()
    on_first.disconnect()


def test_devices_file_reload_keeps_values_and_adds_devices(make_broker, tmp_path):
    devices = tmp_path / "devices.toml"
    devices.write_text('[lamp]\ncommands.brightness = { type = "int", min = 0, max = 255, initial = 1 }\n')
    b = make_broker(["devices_file devices.toml"])
    c = Client(b.port)
    c.connect()
    c.subscribe("devices/+/brightness/result", 1)
    c.publish("devices/lamp/brightness/set", b"77", qos=1)
    assert c.get().payload == b'{"ok":true,"value":77}'
    devices.write_text(devices.read_text()
                       + '[fan]\ncommands.brightness = { type = "int", min = 0, max = 9, initial = 0 }\n')
    reload(b)
    c.publish("devices/fan/brightness/set", b"3", qos=1)
    assert c.get().payload == b'{"ok":true,"value":3}'
    state = Client(b.port)
    state.connect()
    state.subscribe("devices/lamp/state", 1)
    assert state.get().payload == b'{"brightness":77}'
    state.disconnect()
    c.disconnect()


TWO_DEVICES = ('[lamp]\ncommands.power = { type = "bool", initial = "OFF" }\n'
               'commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }\n'
               '[fan]\ncommands.speed = { type = "int", min = 0, max = 3, initial = 1 }\n')


def drain_until_marker(c, marker_topic):
    """Everything `c` received before its own marker message: what the broker sent so far, as
    (topic, payload)."""
    c.publish(marker_topic, b"mark", qos=1)
    return [(m.topic, m.payload) for m in c.collect_until(marker_topic)]


def test_reload_publishes_only_the_devices_that_changed(make_broker, tmp_path):
    devices = tmp_path / "devices.toml"
    devices.write_text(TWO_DEVICES)
    b = make_broker(["devices_file devices.toml", "homeassistant_discovery true"])
    c = Client(b.port)
    c.connect()
    c.subscribe("#", 1)
    first = drain_until_marker(c, "mark/1")
    assert {t for t, _ in first} >= {"devices/lamp/availability", "devices/fan/state"}

    # Nothing changed: nothing is published (a retained value re-sent triggers automations).
    reload(b)
    c.assert_no_message(1.5)

    # The fan changes: only the fan is announced again, with its value kept.
    c.publish("devices/fan/speed/set", b"2", qos=1)
    assert ("devices/fan/speed/result", b'{"ok":true,"value":2}') in drain_until_marker(c, "mark/2")
    devices.write_text(TWO_DEVICES.replace("max = 3", "max = 5"))
    reload(b)
    again = drain_until_marker(c, "mark/3")
    assert again and all(t.startswith(("devices/fan/", "homeassistant/device/fan/"))
                         for t, _ in again), again
    assert ("devices/fan/availability", b"online") in again
    assert ("devices/fan/speed", b"2") in again
    assert ("devices/fan/state", b'{"speed":2}') in again

    # The lamp goes: what it announced is cleared (empty retained messages), nothing else is
    # published, and nothing of it stays retained.
    devices.write_text("[fan]" + TWO_DEVICES.replace("max = 3", "max = 5").split("[fan]")[1])
    reload(b)
    gone = drain_until_marker(c, "mark/4")
    assert sorted(gone) == sorted([
        ("devices/lamp/power", b""), ("devices/lamp/brightness", b""),
        ("devices/lamp/state", b""), ("devices/lamp/availability", b""),
        ("homeassistant/device/lamp/config", b"")]), gone
    late = Client(b.port)
    late.connect()
    late.subscribe("devices/lamp/#", 1)
    late.subscribe("homeassistant/device/lamp/#", 1)
    late.assert_no_message(1.0)
    late.disconnect()

    # Home Assistant starts again (its birth message): the removed config goes out once more,
    # then the devices' configs as they are, then the clear, as HA drops only what it
    # discovered since its start.
    c.publish("homeassistant/status", b"online", qos=1)
    again = [(t, p) for t, p in drain_until_marker(c, "mark/4b")
             if t.startswith("homeassistant/") and t != "homeassistant/status"]
    assert [t for t, _ in again] == ["homeassistant/device/lamp/config",
                                     "homeassistant/device/fan/config",
                                     "homeassistant/device/lamp/config"], again
    assert set(json.loads(again[0][1])["cmps"]) == {"power", "brightness", "command_result"}
    assert again[2][1] == b""

    # A changed device that loses a command, or announces one as another platform: the old
    # component is removed ({"p": "<platform>"} only, not retained), then the config as it is
    # now; the value's topic stays.
    devices.write_text('[fan]\ncommands.speed = { type = "enum", values = ["low", "high"] }\n')
    reload(b)
    changed = drain_until_marker(c, "mark/5")
    configs = [json.loads(p) for t, p in changed if t == "homeassistant/device/fan/config"]
    assert [c["cmps"] for c in configs][0] == {"speed": {"p": "number"}}
    assert configs[1]["cmps"]["speed"]["p"] == "select"
    assert ("devices/fan/speed", b"") not in changed
    c.disconnect()
