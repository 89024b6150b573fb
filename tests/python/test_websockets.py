"""MQTT over WebSocket (`listener N` + `protocol websockets`): MQTT.js in node, paho-mqtt's
websockets transport (plain and TLS), and hand-built frames for what clients do not do on
purpose: a packet split across frames, several packets in one frame, pings, text frames,
bad upgrade requests."""
import base64
import select
import hashlib
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from clients import HOST, Client, connect_packet, packet, subscribe_packet, uid
from conftest import ROOT
from test_tls import pki  # noqa: F401  (the certificates fixture)

JS = ROOT / "tests" / "js"


def ws_broker(make_broker, *extra):
    """A broker with a WebSocket listener (ports[0]) and a plain one (ports[1])."""
    return make_broker(["protocol websockets", "listener 0 127.0.0.1", *extra])


def test_mqttjs_over_websocket(make_broker):
    b = ws_broker(make_broker)
    r = subprocess.run(["node", str(JS / "mqttjs.mjs"), f"ws://127.0.0.1:{b.ports[0]}"],
                       capture_output=True, text=True, timeout=60, cwd=JS)
    assert r.returncode == 0, r.stdout + r.stderr + b.log()[-2000:]
    assert "ALL OK" in r.stdout


def ws_client(port, protocol=None):
    """The tests' paho wrapper with paho's websockets transport (same callbacks)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    protocol = protocol or mqtt.MQTTv311
    c = Client(port)
    old = c.c
    c.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=protocol,
                      transport="websockets",
                      clean_session=None if protocol == mqtt.MQTTv5 else True)
    for cb in ("on_connect", "on_disconnect", "on_message", "on_subscribe", "on_unsubscribe"):
        setattr(c.c, cb, getattr(old, cb))
    return c


@pytest.mark.parametrize("protocol", [4, 5])
def test_paho_websocket_and_tcp_clients_exchange_messages(make_broker, protocol):
    import paho.mqtt.client as mqtt
    b = ws_broker(make_broker)
    proto = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
    ws = ws_client(b.ports[0], protocol=proto)
    ws.connect()
    tcp = Client(b.ports[1])
    tcp.connect()
    ws.subscribe("mix/#", 1)
    tcp.subscribe("mix/#", 1)
    tcp.publish("mix/from-tcp", b"t", qos=1)
    ws.publish("mix/from-ws", b"w" * 100_000, qos=1)
    for c in (ws, tcp):
        got = {m.topic: m.payload for m in c.get_n(2)}
        assert got == {"mix/from-tcp": b"t", "mix/from-ws": b"w" * 100_000}
    ws.disconnect()
    tcp.disconnect()


def test_websocket_listener_over_tls_with_passwords(make_broker, pki, tmp_path):  # noqa: F811
    import ssl
    passwd = tmp_path / "passwd"
    subprocess.run([os.environ.get("GATEMQ_BIN", str(ROOT / "target/release/gatemq")), "passwd",
                    "-b", "-c", str(passwd), "dash", "board"], check=True, capture_output=True)
    b = make_broker(["protocol websockets", f"certfile {pki}/server.crt",
                     f"keyfile {pki}/server.key", f"password_file {passwd}",
                     "allow_anonymous false"])
    assert "(WebSocket, TLS)" in b.log()
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    good = ws_client(b.port)
    good.c.tls_set_context(ctx)
    good.c.username_pw_set("dash", "board")
    good.connect()
    good.subscribe("secure/#", 1)
    good.publish("secure/x", b"over wss", qos=1)
    assert good.get().payload == b"over wss"
    good.disconnect()
    bad = ws_client(b.port)
    bad.c.tls_set_context(ctx)
    bad.c.username_pw_set("dash", "wrong")
    assert bad.connect(expect_ok=False)[0] != 0
    bad.disconnect()


class RawWs:
    """A WebSocket client on a plain socket: frames built by hand."""

    def __init__(self, port, protocol="mqtt", key=None, request=None):
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.key = key or base64.b64encode(os.urandom(16)).decode()
        proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        self.sock.sendall(request or (
            f"GET /mqtt HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n").encode())
        self.buf = b""

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head.decode()

    @staticmethod
    def frame(payload, opcode=2, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send(self, data):
        self.sock.sendall(data)

    def read_frame(self):
        """(opcode, payload) of the next server frame; None at the end of the connection."""
        def need(n):
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return False
                self.buf += chunk
            return True
        if not need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames are not masked"
        n, at = b1 & 0x7F, 2
        if n == 126:
            need(4)
            n, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return b0 & 0x0F, payload

    def mqtt(self):
        """The MQTT bytes of the next data frame."""
        op, payload = self.read_frame()
        assert op == 2, f"opcode {op}"
        return payload


def test_upgrade_answer_and_packets_across_and_within_frames(make_broker):
    b = ws_broker(make_broker)
    ws = RawWs(b.ports[0])
    head = ws.response()
    assert head.startswith("HTTP/1.1 101")
    accept = base64.b64encode(hashlib.sha1(
        (ws.key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert f"Sec-WebSocket-Accept: {accept}" in head
    assert "Sec-WebSocket-Protocol: mqtt" in head
    # CONNECT split over three frames (a continuation frame among them).
    c = connect_packet(client_id=uid("raw"))
    ws.send(RawWs.frame(c[:3], fin=False) + RawWs.frame(c[3:9], opcode=0, fin=False)
            + RawWs.frame(c[9:], opcode=0))
    assert ws.mqtt() == b"\x20\x02\x00\x00"
    # SUBSCRIBE and two PUBLISHes in one frame.
    pub = lambda p: packet(0x30, struct.pack("!H", 4) + b"ws/t" + p)  # noqa: E731
    ws.send(RawWs.frame(subscribe_packet(1, "ws/#", 0) + pub(b"one") + pub(b"two")))
    want = b"\x90\x03\x00\x01\x00" + pub(b"one") + pub(b"two")
    got = b""
    while len(got) < len(want):
        got += ws.mqtt()
    assert got == want
    # A ping is answered with a pong carrying its payload.
    ws.send(RawWs.frame(b"are you there", opcode=9))
    assert ws.read_frame() == (10, b"are you there")


def test_text_frame_and_bad_upgrades_are_refused(make_broker):
    b = ws_broker(make_broker)
    ws = RawWs(b.ports[0])
    assert ws.response().startswith("HTTP/1.1 101")
    ws.send(RawWs.frame(b"hello", opcode=1))
    op, payload = ws.read_frame()
    assert (op, payload) == (8, struct.pack("!H", 1003))
    assert ws.read_frame() is None
    for bad in (RawWs(b.ports[0], protocol="stomp"),
                RawWs(b.ports[0], request=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                RawWs(b.ports[0], request=b"POST /mqtt HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")):
        assert bad.response().startswith("HTTP/1.1 400")
    # Still serving.
    ok = RawWs(b.ports[0], protocol=None)
    assert ok.response().startswith("HTTP/1.1 101")


def test_close_frame_ends_the_session_with_its_will(make_broker):
    b = ws_broker(make_broker)
    watcher = Client(b.ports[1])
    watcher.connect()
    watcher.subscribe("ws/will", 1)
    ws = RawWs(b.ports[0])
    ws.response()
    ws.send(RawWs.frame(connect_packet(client_id=uid("w"), will={"topic": "ws/will", "payload": b"bye"})))
    assert ws.mqtt() == b"\x20\x02\x00\x00"
    ws.send(RawWs.frame(struct.pack("!H", 1000), opcode=8))
    assert ws.read_frame() == (8, struct.pack("!H", 1000))
    assert watcher.get().payload == b"bye"
    watcher.disconnect()


def test_a_client_that_pings_and_never_reads_is_not_read_from(make_broker):
    """Pongs wait for the socket like MQTT output: a client sending pings without reading the
    answers stops being read (its sends block), instead of growing the broker's memory."""
    b = ws_broker(make_broker)
    ws = RawWs(b.ports[0])
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws.response()
    ws.send(RawWs.frame(connect_packet(client_id=uid("ping"))))
    ping = RawWs.frame(b"p" * 125, opcode=9)
    ws.sock.setblocking(False)
    burst, at = ping * 64, 0

    def send_for(seconds, wait):
        """Send pings for `seconds`, each time the socket takes more within `wait`."""
        nonlocal at
        sent, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([], [ws.sock], [], wait)[1]:
                n = ws.sock.send(burst[at:])  # a partial send goes on where it stopped
                sent, at = sent + n, (at + n) % len(burst)
        return sent

    first = send_for(3, 0.05)
    # The socket buffers are full by now, and the broker no longer reads: nothing more goes.
    later = send_for(3, 0.2)
    assert later < 65536, f"still read from: {later} more bytes after {first}"
    rss = int(next(l.split()[1] for l in open(f"/proc/{b.proc.pid}/status") if l.startswith("VmRSS:")))
    assert rss < 100_000, f"broker RSS {rss} kB"
    # Other clients are served meanwhile.
    other = Client(b.ports[1])
    other.connect()
    other.disconnect()
