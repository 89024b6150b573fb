"""Helpers for the MQTT 5.0 tests (this module holds no tests).

`V5Client` wraps a paho-mqtt MQTTv5 client like `clients.Client` does for 3.1.1: its own loop
thread, blocking calls with timeouts, and everything MQTT 5 adds recorded for the assertions
(CONNACK properties, reason codes of every acknowledgement, the DISCONNECT the broker sent,
the properties of each received message). paho 2.2 does not resolve Topic Aliases that the
server sends, so the wrapper does it, as a client must (section 3.3.2.3.4).

`RawV5` speaks MQTT 5 over a plain socket for what paho will not send: bad properties, Topic
Alias 0, an unacknowledged backlog, a DISCONNECT with a Session Expiry Interval, ...
Spec references are to MQTT Version 5.0, OASIS Standard, 7 March 2019.
"""
from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from clients import HOST, TIMEOUT, RawClient, packet, uid

MQTTv5 = mqtt.MQTTv5
MQTTv311 = mqtt.MQTTv311


def props(packet_type, **values) -> Properties:
    """paho Properties, e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=5,
    UserProperty=[("a", "1"), ("b", "2")])."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def props_dict(p) -> dict:
    """Received paho Properties as {name: value}; {} when absent."""
    if p is None:
        return {}
    out = {}
    for name in p.names:
        key = name.replace(" ", "")
        if hasattr(p, key):
            out[key] = getattr(p, key)
    return out


@dataclass
class Msg5:
    topic: str  # after Topic Alias resolution (None if the alias was unknown)
    payload: bytes
    qos: int
    retain: bool
    props: dict
    wire_topic: str = ""  # the Topic Name field as sent (empty when only an alias was used)


class V5Client:
    """A paho MQTTv5 (or, with protocol=MQTTv311, 3.1.1) client with blocking helpers."""

    def __init__(self, port, client_id=None, protocol=MQTTv5, keepalive=60, will=None):
        self.port = port
        self.protocol = protocol
        self.client_id = uid("v5") if client_id is None else client_id
        kw = {} if protocol == MQTTv5 else {"clean_session": True}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=protocol, **kw)
        self.keepalive = keepalive
        if will is not None:
            self.c.will_set(**will)
        self.messages: queue.Queue[Msg5] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None  # (reason code, session_present, properties dict)
        self.server_disconnect = None  # (reason code, properties dict) of a DISCONNECT received
        self.aliases: dict[int, str] = {}
        self._acks: dict[int, object] = {}
        self._ack_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_suback
        self.c.on_unsubscribe = self._on_suback
        self.c.on_publish = self._on_publish

    # paho callbacks (loop thread)
    def _on_connect(self, c, userdata, flags, rc, properties):
        self.connack = (rc.value, bool(flags.session_present), props_dict(properties))
        self.connected.set()

    def _on_disconnect(self, c, userdata, flags, rc, properties):
        if flags.is_disconnect_packet_from_server:
            self.server_disconnect = (rc.value, props_dict(properties))
        self.disconnected.set()

    def _on_message(self, c, userdata, m):
        p = props_dict(m.properties)
        wire = m.topic
        topic = wire
        alias = p.get("TopicAlias")
        if alias is not None:
            if wire:
                self.aliases[alias] = wire
            else:
                topic = self.aliases.get(alias)
        self.messages.put(Msg5(topic, m.payload, m.qos, bool(m.retain), p, wire))

    def _ack(self, mid, value):
        with self._lock:
            self._acks[mid] = value
            ev = self._ack_events.setdefault(mid, threading.Event())
        ev.set()

    def _on_suback(self, c, userdata, mid, rcs, properties):
        self._ack(mid, [r.value for r in rcs])

    def _on_publish(self, c, userdata, mid, rc, properties):
        self._ack(mid, rc.value if rc is not None else None)

    def _wait_ack(self, mid, timeout=TIMEOUT):
        with self._lock:
            ev = self._ack_events.setdefault(mid, threading.Event())
        assert ev.wait(timeout), f"{self.client_id}: no acknowledgement for mid {mid} within {timeout}s"
        with self._lock:
            return self._acks.pop(mid)

    def _run(self):
        while not self._stop.is_set():
            if self.c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        self.disconnected.set()

    # public API
    def connect(self, clean_start=True, expect_ok=True, timeout=TIMEOUT, **connect_props):
        """Connect (CONNECT properties as keyword arguments, e.g. SessionExpiryInterval=60) and
        wait for CONNACK; returns (reason code, session_present, CONNACK properties)."""
        self.aliases.clear()
        kw = {}
        if self.protocol == MQTTv5:
            kw["clean_start"] = clean_start
            if connect_props:
                kw["properties"] = props(PacketTypes.CONNECT, **connect_props)
        self.c.connect(HOST, self.port, keepalive=self.keepalive, **kw)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.connected.wait(timeout), f"{self.client_id}: no CONNACK within {timeout}s"
        if expect_ok:
            assert self.connack[0] == 0, f"{self.client_id}: CONNACK reason code {self.connack[0]:#x}"
        return self.connack

    def subscribe(self, topic, qos=0, no_local=False, retain_as_published=False,
                  retain_handling=0, sub_id=None):
        """SUBSCRIBE one filter (or a list of (filter, qos)); returns the SUBACK reason codes."""
        p = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id) if sub_id else None
        if self.protocol != MQTTv5:
            rc, mid = self.c.subscribe(topic, qos)
        elif isinstance(topic, str):
            opts = SubscribeOptions(qos=qos, noLocal=no_local,
                                    retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            rc, mid = self.c.subscribe(topic, options=opts, properties=p)
        else:
            rc, mid = self.c.subscribe(topic, properties=p)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed: {rc}"
        return self._wait_ack(mid)

    def unsubscribe(self, topic):
        """UNSUBSCRIBE; returns the UNSUBACK reason codes."""
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed: {rc}"
        return self._wait_ack(mid)

    def publish(self, topic, payload=b"", qos=0, retain=False, wait=True, **publish_props):
        """Publish (PUBLISH properties as keyword arguments); with wait and QoS > 0, block until
        PUBACK / PUBCOMP and return its reason code."""
        p = props(PacketTypes.PUBLISH, **publish_props) if publish_props else None
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r} failed: {info.rc}"
        if wait and qos > 0:
            return self._wait_ack(info.mid)
        return None

    def get(self, timeout=TIMEOUT) -> Msg5:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def get_n(self, n, timeout=TIMEOUT) -> list[Msg5]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            try:
                out.append(self.messages.get(timeout=max(deadline - time.monotonic(), 0.001)))
            except queue.Empty:
                raise AssertionError(f"{self.client_id}: got {len(out)} of {n} messages: "
                                     f"{[(m.topic, m.payload) for m in out]}") from None
        return out

    def collect_until(self, topic, timeout=TIMEOUT) -> list[Msg5]:
        """Messages received before the first one on `topic` (a marker), which is dropped."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.get(max(deadline - time.monotonic(), 0.001))
            if m.topic == topic:
                return out
            out.append(m)

    def assert_no_message(self, timeout=0.3):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {m}")

    def wait_server_disconnect(self, timeout=TIMEOUT):
        """Wait for the connection to end; returns (reason code, properties) of the DISCONNECT
        the broker sent, or None if it closed without one."""
        assert self.disconnected.wait(timeout), f"{self.client_id}: still connected after {timeout}s"
        return self.server_disconnect

    def disconnect(self, reason=0, **disconnect_props):
        """DISCONNECT with this reason code (0x00 normal, 0x04 with Will Message) and properties."""
        if self.connected.is_set() and not self.disconnected.is_set():
            kw = {}
            if self.protocol == MQTTv5:
                kw["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
                if disconnect_props:
                    kw["properties"] = props(PacketTypes.DISCONNECT, **disconnect_props)
            self.c.disconnect(**kw)
        self._stop_loop()

    def kill(self):
        """Drop the TCP connection without DISCONNECT."""
        self._stop_loop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def _stop_loop(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(TIMEOUT)


def v5(port, clean_start=True, **kw) -> V5Client:
    """A connected V5Client; CONNECT properties go in kw next to the constructor arguments."""
    ctor = {k: kw.pop(k) for k in ("client_id", "protocol", "keepalive", "will") if k in kw}
    c = V5Client(port, **ctor)
    c.connect(clean_start=clean_start, **kw)
    return c


def will(topic="will/t", payload=b"gone", qos=1, retain=False, **will_props):
    """A will_set() argument dict; Will Properties as keyword arguments."""
    p = props(PacketTypes.WILLMESSAGE, **will_props) if will_props else None
    return dict(topic=topic, payload=payload, qos=qos, retain=retain, properties=p)


# --- raw MQTT 5 packets -------------------------------------------------------------------------

# Property identifiers (section 2.2.2.2) and their data types.
PFI, MEI, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION = 0x01, 0x02, 0x03, 0x08, 0x09
SUB_ID, SESSION_EXPIRY, ASSIGNED_ID, SERVER_KEEPALIVE = 0x0B, 0x11, 0x12, 0x13
AUTH_METHOD, AUTH_DATA, REQ_PROBLEM, WILL_DELAY, REQ_RESPONSE = 0x15, 0x16, 0x17, 0x18, 0x19
RESPONSE_INFO, SERVER_REF, REASON_STRING = 0x1A, 0x1C, 0x1F
RECEIVE_MAX, TOPIC_ALIAS_MAX, TOPIC_ALIAS, MAX_QOS, RETAIN_AVAIL = 0x21, 0x22, 0x23, 0x24, 0x25
USER_PROPERTY, MAX_PACKET_SIZE, WILDCARD_AVAIL, SUB_ID_AVAIL, SHARED_AVAIL = 0x26, 0x27, 0x28, 0x29, 0x2A

_BYTE = {PFI, REQ_PROBLEM, REQ_RESPONSE, MAX_QOS, RETAIN_AVAIL, WILDCARD_AVAIL, SUB_ID_AVAIL, SHARED_AVAIL}
_U16 = {SERVER_KEEPALIVE, RECEIVE_MAX, TOPIC_ALIAS_MAX, TOPIC_ALIAS}
_U32 = {MEI, SESSION_EXPIRY, WILL_DELAY, MAX_PACKET_SIZE}
_STR = {CONTENT_TYPE, RESPONSE_TOPIC, ASSIGNED_ID, AUTH_METHOD, RESPONSE_INFO, SERVER_REF, REASON_STRING}
_BIN = {CORRELATION, AUTH_DATA}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(s) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def encode_props(items=()) -> bytes:
    """Property Length + properties from (identifier, value) pairs, in order (duplicates kept,
    so that bad packets can be built); a user property's value is a (key, value) pair."""
    body = b""
    for ident, value in items:
        body += varint(ident)
        if ident in _BYTE:
            body += bytes([value])
        elif ident in _U16:
            body += struct.pack("!H", value)
        elif ident in _U32:
            body += struct.pack("!I", value)
        elif ident in _STR or ident in _BIN:
            body += _field(value)
        elif ident == SUB_ID:
            body += varint(value)
        elif ident == USER_PROPERTY:
            body += _field(value[0]) + _field(value[1])
        else:
            raise ValueError(f"unknown property {ident:#x}")
    return varint(len(body)) + body


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n, mult = 0, 1
    while True:
        b = data[pos]
        pos += 1
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return n, pos


def _read_field(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", data, pos)
    return data[pos + 2:pos + 2 + n], pos + 2 + n


class Props(list):
    """Decoded properties: a list of (identifier, value) in wire order."""

    def get(self, ident, default=None):
        for i, v in self:
            if i == ident:
                return v
        return default

    def all(self, ident):
        return [v for i, v in self if i == ident]

    def ids(self):
        return [i for i, _ in self]


def decode_props(data: bytes, pos: int) -> tuple[Props, int]:
    length, pos = _read_varint(data, pos)
    end = pos + length
    out = Props()
    while pos < end:
        ident, pos = _read_varint(data, pos)
        if ident in _BYTE:
            value, pos = data[pos], pos + 1
        elif ident in _U16:
            (value,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif ident in _U32:
            (value,), pos = struct.unpack_from("!I", data, pos), pos + 4
        elif ident in _STR:
            raw, pos = _read_field(data, pos)
            value = raw.decode()
        elif ident in _BIN:
            value, pos = _read_field(data, pos)
        elif ident == SUB_ID:
            value, pos = _read_varint(data, pos)
        elif ident == USER_PROPERTY:
            k, pos = _read_field(data, pos)
            v, pos = _read_field(data, pos)
            value = (k.decode(), v.decode())
        else:
            raise AssertionError(f"unknown property {ident:#x} in {data!r}")
        out.append((ident, value))
    assert pos == end, f"properties overrun: {data!r}"
    return out, pos


@dataclass
class Pkt5:
    """A decoded packet from the broker: kind (4-bit type), flags, and what it carries."""
    kind: int
    flags: int
    raw: bytes
    mid: int = 0
    reason: int = 0
    props: Props = field(default_factory=Props)
    codes: list = field(default_factory=list)  # SUBACK / UNSUBACK reason codes
    session_present: bool = False
    topic: str = ""
    payload: bytes = b""

    @property
    def qos(self):
        return (self.flags >> 1) & 3

    @property
    def retain(self):
        return bool(self.flags & 1)


CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 2, 3, 4, 5, 6, 7
SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH = 9, 11, 13, 14, 15


def decode(raw: bytes) -> Pkt5:
    kind, flags = raw[0] >> 4, raw[0] & 0x0F
    _, pos = _read_varint(raw, 1)
    body = raw[pos:]
    p = Pkt5(kind, flags, raw)
    if kind == CONNACK:
        p.session_present = bool(body[0] & 1)
        p.reason = body[1]
        if len(body) > 2:
            p.props, _ = decode_props(body, 2)
    elif kind == PUBLISH:
        t, pos = _read_field(body, 0)
        p.topic = t.decode()
        if p.qos:
            (p.mid,), pos = struct.unpack_from("!H", body, pos), pos + 2
        p.props, pos = decode_props(body, pos)
        p.payload = body[pos:]
    elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        (p.mid,) = struct.unpack_from("!H", body, 0)
        if len(body) > 2:
            p.reason = body[2]
        if len(body) > 3:
            p.props, _ = decode_props(body, 3)
    elif kind in (SUBACK, UNSUBACK):
        (p.mid,) = struct.unpack_from("!H", body, 0)
        p.props, pos = decode_props(body, 2)
        p.codes = list(body[pos:])
    elif kind in (DISCONNECT, AUTH):
        if body:
            p.reason = body[0]
        if len(body) > 1:
            p.props, _ = decode_props(body, 1)
    return p


def connect5(client_id="", clean_start=True, keepalive=60, properties=(), will=None,
             username=None) -> bytes:
    """CONNECT at protocol level 5; will = dict(topic, payload, qos=0, retain=False, props=())."""
    flags = 0x02 if clean_start else 0
    payload = _field(client_id)
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        payload += encode_props(will.get("props", ())) + _field(will["topic"]) + _field(will["payload"])
    if username is not None:
        flags |= 0x80
        payload += _field(username)
    var = _field(b"MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + encode_props(properties)
    return packet(0x10, var + payload)


def publish5(topic, payload=b"", qos=0, mid=0, retain=False, dup=False, properties=()) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _field(topic) + (struct.pack("!H", mid) if qos else b"") + encode_props(properties) + payload
    return packet(first, body)


def subscribe5(mid, filters, properties=()) -> bytes:
    """filters: [(filter, options byte)]; options = QoS | No Local 0x04 | Retain As Published
    0x08 | Retain Handling << 4."""
    body = struct.pack("!H", mid) + encode_props(properties)
    for f, opts in filters:
        body += _field(f) + bytes([opts])
    return packet(0x82, body)


def unsubscribe5(mid, filters, properties=()) -> bytes:
    body = struct.pack("!H", mid) + encode_props(properties)
    for f in filters:
        body += _field(f)
    return packet(0xA2, body)


def ack5(first_byte, mid, reason=0, properties=()) -> bytes:
    """PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70 with a reason code."""
    return packet(first_byte, struct.pack("!H", mid) + bytes([reason]) + encode_props(properties))


def disconnect5(reason=0, properties=()) -> bytes:
    return packet(0xE0, bytes([reason]) + encode_props(properties))


class RawV5(RawClient):
    """An MQTT 5 client on a plain socket: clients.RawClient's socket and framing, with MQTT 5
    packets decoded."""

    def read(self, timeout=TIMEOUT) -> Pkt5:
        return decode(self.read_packet(timeout))

    def read_kind(self, kind, timeout=TIMEOUT) -> Pkt5:
        p = self.read(timeout)
        assert p.kind == kind, f"expected packet type {kind}, got {p}"
        return p

    def try_read(self, timeout) -> Pkt5 | None:
        """A packet if one arrives within timeout, else None (also None if closed)."""
        try:
            return self.read(timeout)
        except AssertionError:
            return None
        except (ConnectionError, OSError):
            return None

    def connect(self, client_id=None, clean_start=True, keepalive=60, properties=(), will=None,
                expect_reason=0) -> Pkt5:
        self.client_id = uid("raw5") if client_id is None else client_id
        self.send(connect5(self.client_id, clean_start, keepalive, properties, will))
        ack = self.read_kind(CONNACK)
        assert ack.reason == expect_reason, f"CONNACK reason {ack.reason:#x}, props {ack.props}"
        return ack

    def subscribe(self, mid, filters, properties=()) -> list:
        self.send(subscribe5(mid, filters, properties))
        ack = self.read_kind(SUBACK)
        assert ack.mid == mid
        return ack.codes

    def expect_disconnect(self, timeout=TIMEOUT) -> Pkt5:
        """The next packet must be a DISCONNECT (other packets first are allowed only if they
        are PUBLISH/acks already in flight), after which the broker closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.read(max(deadline - time.monotonic(), 0.001))
            if p.kind == DISCONNECT:
                self.wait_closed(max(deadline - time.monotonic(), 1.0))
                return p
            assert p.kind in (PUBLISH, PUBACK, PUBREC, PUBCOMP), f"expected DISCONNECT, got {p}"

    def wait_closed(self, timeout=3.0):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"broker did not close the connection within {timeout}s"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return
            if not chunk:
                return
            raise AssertionError(f"expected the connection to close, got {chunk!r}")


