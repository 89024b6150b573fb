"""Test helpers: a synchronous paho-mqtt wrapper and a raw-socket MQTT 3.1.1 client.

`Client` runs paho's network loop in its own thread (it never reconnects on its own, unlike
`loop_start()`), collects received messages into a queue and offers blocking calls with
timeouts: connect, subscribe, publish, get, collect_until.

`RawClient` speaks MQTT over a plain socket, for what paho will not do: resending a PUBLISH,
connecting with an empty client id and clean_session=0, sending garbage, going silent.
"""
from __future__ import annotations

import queue
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
TIMEOUT = 5.0
MQTTv31 = mqtt.MQTTv31
MQTTv311 = mqtt.MQTTv311


def uid(prefix: str = "t") -> str:
    """A short unique client id (<= 23 chars, so it is valid for MQTT 3.1 too)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False


class Client:
    """A paho client with blocking helpers. Messages go to `self.messages` (a queue of Msg)."""

    def __init__(self, port, client_id=None, clean_session=True, protocol=MQTTv311,
                 keepalive=60, will=None, tls=None, username=None, password=None):
        self.port = port
        self.client_id = uid() if client_id is None else client_id
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=clean_session, protocol=protocol)
        if tls is not None:  # an ssl.SSLContext
            self.c.tls_set_context(tls)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.keepalive = keepalive
        if will is not None:
            self.c.will_set(**will)
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None  # (reason code value, session_present)
        self.server_disconnect = None  # the reason code of a DISCONNECT the broker sent
        self._acks: dict[int, list[int]] = {}
        self._ack_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_suback
        self.c.on_unsubscribe = self._on_unsuback

    # paho callbacks (run in the loop thread)
    def _on_connect(self, c, userdata, flags, rc, props):
        self.connack = (rc.value, bool(flags.session_present))
        self.connected.set()

    def _on_disconnect(self, c, userdata, flags, rc, props):
        # A DISCONNECT from the broker (MQTT 5): its reason code, e.g. 0x87 Not authorized.
        if flags.is_disconnect_packet_from_server:
            self.server_disconnect = rc.value
        self.disconnected.set()

    def _on_message(self, c, userdata, m):
        self.messages.put(Msg(m.topic, m.payload, m.qos, bool(m.retain), bool(m.dup)))

    def _ack(self, mid, codes):
        with self._lock:
            self._acks[mid] = codes
            ev = self._ack_events.setdefault(mid, threading.Event())
        ev.set()

    def _on_suback(self, c, userdata, mid, rcs, props):
        self._ack(mid, [r.value for r in rcs])

    def _on_unsuback(self, c, userdata, mid, rcs, props):
        self._ack(mid, [])

    def _wait_ack(self, mid, timeout=TIMEOUT):
        with self._lock:
            ev = self._ack_events.setdefault(mid, threading.Event())
        assert ev.wait(timeout), f"no ack for mid {mid} within {timeout}s"
        with self._lock:
            return self._acks.pop(mid)

    def _run(self):
        while not self._stop.is_set():
            if self.c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        self.disconnected.set()

    # public API
    def connect(self, timeout=TIMEOUT, expect_ok=True):
        """Connect and wait for CONNACK; returns (return code, session_present)."""
        self.c.connect(HOST, self.port, keepalive=self.keepalive)
        self._thread = threading.Thread(target=self._run, daemon=True)
        # paho writes a packet from the publishing thread itself unless it knows a loop
        # thread runs; two threads writing at once can swap packets (seen with TLS: message 7
        # before 6). Told of ours, paho wakes it and only it writes.
        self.c._thread = self._thread
        self._thread.start()
        assert self.connected.wait(timeout), f"{self.client_id}: no CONNACK within {timeout}s"
        if expect_ok:
            assert self.connack[0] == 0, f"{self.client_id}: CONNACK return code {self.connack[0]}"
        return self.connack

    def subscribe(self, topic, qos=0):
        """Subscribe (topic may be a list of (filter, qos)); returns the granted QoS list."""
        rc, mid = self.c.subscribe(topic, qos) if isinstance(topic, str) else self.c.subscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed: {rc}"
        return self._wait_ack(mid)

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed: {rc}"
        self._wait_ack(mid)

    def publish(self, topic, payload=b"", qos=0, retain=False, wait=True):
        """Publish; with wait, block until the flow completes (PUBACK / PUBCOMP / sent)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), f"publish to {topic!r} not acknowledged"
        return info

    def get(self, timeout=TIMEOUT) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def get_n(self, n, timeout=TIMEOUT) -> list[Msg]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(out)} of {n} messages: "
                    f"{[(m.topic, m.payload) for m in out]}") from None
        return out

    def collect_until(self, topic, timeout=TIMEOUT) -> list[Msg]:
        """Messages received before the first one on `topic` (a marker), which is dropped."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.get(max(deadline - time.monotonic(), 0.001))
            if m.topic == topic:
                return out
            out.append(m)

    def drain(self, quiet=1.5) -> list[Msg]:
        """Every message until none comes for `quiet` seconds (what a resumed session gets)."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def assert_no_message(self, timeout=0.3):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {m}")

    def disconnect(self):
        """Clean MQTT DISCONNECT."""
        if self.connected.is_set() and not self.disconnected.is_set():
            self.c.disconnect()
        self._stop_loop()

    def kill(self):
        """Drop the TCP connection without sending DISCONNECT."""
        self._stop_loop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def _stop_loop(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(TIMEOUT)


def connected(port, **kw) -> Client:
    c = Client(port, **kw)
    c.connect()
    return c


# --- raw MQTT packets -------------------------------------------------------------------------

def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(client_id="", clean=True, keepalive=60, will=None, protocol=4) -> bytes:
    """CONNECT; will = dict(topic, payload, qos=0, retain=False). protocol 4 = 3.1.1, 3 = 3.1."""
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        payload += _str(will["topic"]) + _str(will["payload"])
    name = b"MQTT" if protocol == 4 else b"MQIsdp"
    var = _str(name) + bytes([protocol, flags]) + struct.pack("!H", keepalive)
    return packet(0x10, var + payload)


def publish_packet(topic, payload=b"", qos=0, mid=None, retain=False, dup=False) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _str(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return packet(first, body)


def subscribe_packet(mid, topic, qos=0) -> bytes:
    return packet(0x82, struct.pack("!H", mid) + _str(topic) + bytes([qos]))


def ack_packet(first_byte, mid) -> bytes:
    """PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70, ..."""
    return bytes([first_byte, 2]) + struct.pack("!H", mid)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class RawClient:
    def __init__(self, port, timeout=TIMEOUT):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                raise AssertionError(f"timed out waiting for a packet (have {self.buf!r})") from None
            if not chunk:
                raise ConnectionError(f"connection closed by broker (have {self.buf!r})")
            self.buf += chunk

    def read_packet(self, timeout=TIMEOUT) -> bytes:
        """One whole packet (fixed header included) as bytes."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        length, mult, i = 0, 1, 1
        while True:
            self._fill(i + 1, deadline)
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        self._fill(i + length, deadline)
        pkt, self.buf = self.buf[: i + length], self.buf[i + length:]
        return pkt

    def connect(self, **kw) -> bytes:
        self.send(connect_packet(**kw))
        connack = self.read_packet()
        assert connack == b"\x20\x02\x00\x00", f"CONNACK {connack!r}"
        return connack

    def wait_closed(self, timeout=3.0) -> float:
        """Wait until the broker closes the connection (recv returns b"" or a reset);
        returns the seconds waited. Any data received meanwhile is discarded."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"broker did not close the connection within {timeout}s"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return time.monotonic() - start
            if not chunk:
                return time.monotonic() - start

    def close(self):
        self.sock.close()


# --- mosquitto_sub as a subprocess --------------------------------------------------------------

MSG_PREFIX = "MSG|"


class MosquittoSub:
    """mosquitto_sub -d with a machine-readable -F format. start() returns once the SUBACK is
    seen in the debug output, so publishes after it are certain to be delivered."""

    def __init__(self, port, *args):
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", HOST, "-p", str(port), "-d",
             "-F", MSG_PREFIX + "%q|%r|%t|%p", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, deadline):
        try:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"mosquitto_sub: timed out; output so far:\n{''.join(self.output)}") from None
        if line is None:
            raise AssertionError(f"mosquitto_sub exited ({self.proc.poll()}):\n{''.join(self.output)}")
        return line

    def wait_subscribed(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while "received SUBACK" not in self._next_line(deadline):
            pass
        return self

    def get(self, timeout=TIMEOUT):
        """Next message as (qos, retain, topic, payload)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line.startswith(MSG_PREFIX):
                qos, retain, topic, payload = line[len(MSG_PREFIX):].split("|", 3)
                return int(qos), int(retain), topic, payload

    def wait_exit(self, timeout=TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mosquitto_pub(port, *args, timeout=TIMEOUT):
    r = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), *args],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"mosquitto_pub {args} failed ({r.returncode}): {r.stderr}"
    return r


# --- MQTT-SN 1.2 over UDP ------------------------------------------------------------------

class SN:
    """MQTT-SN message types and return codes (spec 5.2.2, 5.3.10)."""
    ADVERTISE, SEARCHGW, GWINFO = 0x00, 0x01, 0x02
    CONNECT, CONNACK, WILLTOPICREQ, WILLTOPIC, WILLMSGREQ, WILLMSG = 0x04, 0x05, 0x06, 0x07, 0x08, 0x09
    REGISTER, REGACK, PUBLISH, PUBACK, PUBCOMP, PUBREC, PUBREL = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10
    SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x12, 0x13, 0x14, 0x15
    PINGREQ, PINGRESP, DISCONNECT = 0x16, 0x17, 0x18
    WILLTOPICUPD, WILLTOPICRESP, WILLMSGUPD, WILLMSGRESP = 0x1A, 0x1B, 0x1C, 0x1D
    ENCAPSULATED = 0xFE
    ACCEPTED, CONGESTION, INVALID_TOPIC_ID, NOT_SUPPORTED = 0, 1, 2, 3
    NORMAL, PREDEFINED, SHORT = 0, 1, 2


def sn_flags(qos=0, retain=False, dup=False, will=False, clean=False, topic_type=0) -> int:
    q = {0: 0, 1: 1, 2: 2, -1: 3}[qos]
    return (dup << 7) | (q << 5) | (retain << 4) | (will << 3) | (clean << 2) | topic_type


def sn_msg(kind: int, body: bytes = b"") -> bytes:
    """One MQTT-SN message with its length (1-byte form below 256 bytes, else 0x01 + 2)."""
    if len(body) + 2 < 256:
        return bytes([len(body) + 2, kind]) + body
    return b"\x01" + struct.pack(">H", len(body) + 4) + bytes([kind]) + body


@dataclass
class SnMsg:
    kind: int
    body: bytes
    node_id: bytes | None = None

    def u16(self, at):
        return struct.unpack(">H", self.body[at:at + 2])[0]

    # PUBLISH: flags, topic id, msg id, data
    @property
    def flags(self):
        return self.body[0]

    @property
    def qos(self):
        return {0: 0, 1: 1, 2: 2, 3: -1}[(self.body[0] >> 5) & 3]

    @property
    def dup(self):
        return bool(self.body[0] & 0x80)

    @property
    def retain(self):
        return bool(self.body[0] & 0x10)

    @property
    def topic_type(self):
        return self.body[0] & 3


def sn_parse(d: bytes) -> SnMsg:
    node = None
    if len(d) > 1 and d[1] == SN.ENCAPSULATED:
        n = d[0]
        node = d[3:n]
        d = d[n:]
    if d[0] == 1:
        return SnMsg(d[3], d[4:], node)
    return SnMsg(d[1], d[2:d[0]], node)


class SnClient:
    """A raw MQTT-SN client on its own UDP socket, for what mqtt-sn-12 does not do: QoS -1,
    sleeping, the will dialogue, forwarder encapsulation, duplicates, not acknowledging."""

    def __init__(self, port, node_id: bytes | None = None, source: str = HOST):
        """`source`: the loopback address to send from (127.0.0.2, ...: another source)."""
        self.addr = (HOST, port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((source, 0))
        self.node_id = node_id
        self.mid = 0

    def next_mid(self):
        self.mid = self.mid % 65535 + 1
        return self.mid

    def send_raw(self, data: bytes):
        self.s.sendto(data, self.addr)

    def send(self, kind, body=b""):
        m = sn_msg(kind, body)
        if self.node_id is not None:
            m = bytes([3 + len(self.node_id), SN.ENCAPSULATED, 0]) + self.node_id + m
        self.send_raw(m)

    def recv(self, timeout=TIMEOUT) -> SnMsg:
        self.s.settimeout(timeout)
        d, _ = self.s.recvfrom(65535)
        return sn_parse(d)

    def expect(self, kind, timeout=TIMEOUT) -> SnMsg:
        """The next message, which must be of `kind` (REGISTERs are acknowledged on the way
        only when `auto_regack` says so)."""
        m = self.recv(timeout)
        assert m.kind == kind, f"expected {kind:#x}, got {m.kind:#x} {m.body!r}"
        return m

    def nothing(self, timeout=0.5):
        try:
            m = self.recv(timeout)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected message {m.kind:#x} {m.body!r}")

    def connect(self, client_id, clean=True, duration=60, will=False, rc=0):
        self.send(SN.CONNECT, bytes([sn_flags(clean=clean, will=will), 1])
                  + struct.pack(">H", duration) + client_id.encode())
        if will:
            return
        m = self.expect(SN.CONNACK)
        assert m.body[0] == rc, m.body
        return m

    def register(self, topic) -> int:
        mid = self.next_mid()
        self.send(SN.REGISTER, struct.pack(">HH", 0, mid) + topic.encode())
        m = self.expect(SN.REGACK)
        assert m.u16(2) == mid and m.body[4] == SN.ACCEPTED, m.body
        return m.u16(0)

    def publish(self, topic_id, data: bytes, qos=0, topic_type=SN.NORMAL, retain=False, mid=None,
                dup=False):
        if mid is None:
            mid = self.next_mid() if qos > 0 else 0
        self.send(SN.PUBLISH, bytes([sn_flags(qos, retain, dup, topic_type=topic_type)])
                  + struct.pack(">HH", topic_id, mid) + data)
        return mid

    def subscribe(self, topic, qos=0, topic_type=SN.NORMAL) -> SnMsg:
        mid = self.next_mid()
        t = struct.pack(">H", topic) if isinstance(topic, int) else topic.encode()
        self.send(SN.SUBSCRIBE, bytes([sn_flags(qos, topic_type=topic_type)]) + struct.pack(">H", mid) + t)
        m = self.expect(SN.SUBACK)
        assert m.u16(3) == mid, m.body
        return m

    def ack(self, m: SnMsg):
        """Acknowledge a received QoS 1 PUBLISH (PUBACK) or REGISTER (REGACK)."""
        if m.kind == SN.REGISTER:
            self.send(SN.REGACK, struct.pack(">HH", m.u16(0), m.u16(2)) + b"\x00")
        else:
            self.send(SN.PUBACK, struct.pack(">HH", m.u16(1), m.u16(3)) + b"\x00")

    def get_publish(self, timeout=TIMEOUT, ack=True) -> SnMsg:
        """The next PUBLISH, acknowledging REGISTERs before it (and it, at QoS 1)."""
        while True:
            m = self.recv(timeout)
            if m.kind == SN.REGISTER:
                self.ack(m)
                continue
            assert m.kind == SN.PUBLISH, f"expected PUBLISH, got {m.kind:#x}"
            if ack and m.qos == 1:
                self.ack(m)
            return m

    def disconnect(self, duration=None):
        self.send(SN.DISCONNECT, b"" if duration is None else struct.pack(">H", duration))
        self.expect(SN.DISCONNECT)

    def close(self):
        self.s.close()
