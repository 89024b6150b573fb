"""MQTT-SN with a real client: PyPI's `mqtt-sn-12` (its `mqtt_sn_pub` and `mqtt_sn_sub`
commands and its `MqttSnClient` library), against the real binary over UDP on loopback, with
MQTT clients (paho, mosquitto_pub/mosquitto_sub) and the device executor on the same broker."""
import os
import queue
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest
from mqttsn12.client.MqttSnClient import MqttSnClient, MqttSnListener

from clients import Client, MosquittoSub, connected, mosquitto_pub

VENV_BIN = Path(sys.executable).parent
PUB = str(VENV_BIN / "mqtt_sn_pub")
SUB = str(VENV_BIN / "mqtt_sn_sub")

SECTION = ["mqttsn_topic 1 sensors/hall/motion", "mqttsn_topic 2 devices/lamp/power/set"]


def sn_pub(port, *args, timeout=20):
    r = subprocess.run([PUB, "-p", str(port), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


class SnSub:
    """`mqtt_sn_sub` in the background; its output lines are the payloads it got. (Its `-C`
    is parsed but not acted on, so the test reads the lines it needs and stops it.)"""

    def __init__(self, port, *args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([SUB, "-p", str(port), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env)
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))

    def lines(self, n, timeout=20):
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            try:
                got.append(self.q.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"mqtt_sn_sub printed only {got}") from None
        return got

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def sn_subs():
    made = []

    def make(port, *args):
        s = SnSub(port, *args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def wait_subscribed(b, client_id, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"{client_id} subscribed to" in b.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{client_id} did not subscribe:\n{b.log()}")


def test_mqtt_sn_pub_at_each_qos_reaches_mqtt_subscribers(sn_broker):
    b = sn_broker(SECTION)
    sub = connected(b.port)
    sub.subscribe("sensors/#", 2)
    mosq = MosquittoSub(b.port, "-t", "sensors/#", "-q", "1")
    mosq.wait_subscribed()
    for qos in (0, 1, 2):
        sn_pub(b.sn_port, "-t", "sensors/kitchen/temp", "-m", f"21.{qos}", "-q", str(qos))
    # QoS -1: no CONNECT at all, to a predefined topic id.
    sn_pub(b.sn_port, "-q", "-1", "-T", "1", "-m", "motion")
    got = [(m.topic, m.payload, m.qos) for m in sub.get_n(4)]
    assert got == [("sensors/kitchen/temp", b"21.0", 0), ("sensors/kitchen/temp", b"21.1", 1),
                   ("sensors/kitchen/temp", b"21.2", 2), ("sensors/hall/motion", b"motion", 0)]
    # mosquitto_sub at QoS 1: (qos, retain, topic, payload).
    assert [mosq.get() for _ in range(4)] == [
        (0, 0, "sensors/kitchen/temp", "21.0"), (1, 0, "sensors/kitchen/temp", "21.1"),
        (1, 0, "sensors/kitchen/temp", "21.2"), (0, 0, "sensors/hall/motion", "motion")]
    mosq.stop()
    # Three connections (QoS 0, 1, 2) came and went; QoS -1 made none.
    assert b.log().count("MQTT-SN client mqtt-sn-python-") == 3


def test_mqtt_publishes_reach_mqtt_sn_sub_with_wildcards_and_registration(sn_broker, sn_subs):
    b = sn_broker(SECTION)
    # QoS 0: mqtt-sn-12 1.0.9's subscriber never acknowledges a QoS 1 PUBLISH (it compares
    # the QoS to the flag's bit value), so at QoS 1 the gateway would send the first message
    # again and again (test_mqttsn.py covers QoS 1 delivery with a client that acknowledges).
    s = sn_subs(b.sn_port, "-t", "home/+/temp", "-q", "0", "-i", "sn-sub-1")
    wait_subscribed(b, "sn-sub-1")
    mosquitto_pub(b.port, "-t", "home/kitchen/temp", "-m", "20", "-q", "1")
    mosquitto_pub(b.port, "-t", "home/hall/temp", "-m", "19")
    mosquitto_pub(b.port, "-t", "home/hall/humidity", "-m", "not for it")
    p = connected(b.port)
    p.publish("home/kitchen/temp", b"21", qos=2)
    assert s.lines(3) == ["20", "19", "21"]
    # The gateway registered each topic with the client before its first PUBLISH.
    assert "subscribed to home/+/temp (QoS 0)" in b.log()


def test_predefined_topic_subscription_and_device_command_from_mqtt_sn(sn_broker, sn_subs,
                                                                       tmp_path):
    (tmp_path / "devices.toml").write_text(
        '[lamp]\nname = "Lamp"\ncommands.power = { type = "bool", initial = "OFF" }\n')
    b = sn_broker(SECTION, ["devices_file devices.toml"])
    watch = connected(b.port)
    watch.subscribe("devices/lamp/#", 1)
    watch.drain(quiet=0.5)
    s = sn_subs(b.sn_port, "-T", "2", "-i", "sn-lamp-watch")
    wait_subscribed(b, "sn-lamp-watch")
    # A sensor commands the lamp through its predefined topic id, with QoS -1 (no connection).
    sn_pub(b.sn_port, "-q", "-1", "-T", "2", "-m", "ON")
    got = {m.topic: m.payload for m in watch.drain(quiet=1.0)}
    assert got["devices/lamp/power"] == b"ON"
    assert got["devices/lamp/power/result"] == b'{"ok":true,"value":"ON"}'
    # The command message itself reached the MQTT-SN subscriber of predefined id 2.
    assert s.lines(1) == ["ON"]


def test_retained_and_will_with_the_client_library(sn_broker):
    b = sn_broker(SECTION)
    # Retained, from MQTT-SN, for a later MQTT subscriber.
    sn_pub(b.sn_port, "-t", "status/sensor9", "-m", "online", "-r", "-q", "1")
    late = connected(b.port)
    late.subscribe("status/#", 1)
    m = late.get()
    assert (m.topic, m.payload, m.retain) == ("status/sensor9", b"online", True)

    # The library's will dialogue; the will is published when its keep-alive runs out.
    watcher = connected(b.port)
    watcher.subscribe("wills/#", 1)
    c = MqttSnClient()
    c.set_client_id("sn-willing")
    c.set_keep_alive(1)
    c.set_will("wills/sn-willing", "gone", 1, False)
    c.set_timeout(5)
    c.open("127.0.0.1", b.sn_port)
    c.send_connect()
    # It goes silent (no PINGREQ): lost after 1.5 s, its will published.
    m = watcher.get(timeout=5)
    assert (m.topic, m.payload) == ("wills/sn-willing", b"gone")
    c.close()


def test_library_subscriber_gets_retained_message_at_subscribe(sn_broker):
    b = sn_broker(SECTION)
    mosquitto_pub(b.port, "-t", "config/sensor9/interval", "-m", "60", "-r", "-q", "1")

    got = []

    class L(MqttSnListener):
        def message_arrived(self, msg):
            got.append((msg.get_topic_name(), msg.get_payload(), msg.get_retain()))

    c = MqttSnClient()
    c.set_client_id("sn-retained")
    c.set_timeout(5)
    c.open("127.0.0.1", b.sn_port)
    c.send_connect()
    c.send_subscribe("config/sensor9/interval", 1, L())
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        c.polling()
        time.sleep(0.05)
    c.send_disconnect()
    c.close()
    assert got == [("config/sensor9/interval", b"60", True)]
