"""SIGHUP: the config file and the files it names are read again while clients stay connected;
a config that does not load leaves the running one in place."""
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
