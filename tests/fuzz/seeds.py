"""Writes the seed corpus of the fuzz targets (python3 tests/fuzz/seeds.py): valid packets of
every kind at each protocol level, and broker scripts in the broker target's format
([flags] then (op, len, bytes...)*; op 0x30|client = bytes from that client, 0x00 = time
passes, 0x10|client = client reads, 0x20|client = connection lost)."""
import pathlib
import struct

HERE = pathlib.Path(__file__).parent


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | 0x80 if n else b])
        if not n:
            return out


def pkt(first, body):
    return bytes([first]) + varint(len(body)) + body


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def connect(cid, level=4, clean=True, will=None, user=None, p=b""):
    flags = (0x02 if clean else 0) | (0x80 if user else 0)
    payload = s(cid)
    if will:
        flags |= 0x04 | 0x08
        payload += (props() if level == 5 else b"") + s(will) + s("gone")
    if user:
        payload += s(user)
    name = "MQIsdp" if level == 3 else "MQTT"
    return pkt(0x10, s(name) + bytes([level, flags, 0, 2]) + (props(p) if level == 5 else b"") + payload)


def publish(topic, payload, qos=0, pid=1, retain=False, level=4, p=b""):
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    return pkt(first, s(topic) + (struct.pack(">H", pid) if qos else b"") + (props(p) if level == 5 else b"") + payload)


def subscribe(filters, pid=1, level=4, p=b""):
    return pkt(0x82, struct.pack(">H", pid) + (props(p) if level == 5 else b"") + b"".join(s(f) + bytes([o]) for f, o in filters))


decode = {
    "connect4": connect("c1", will="w/t", user="u"),
    "connect3": connect("c3", level=3),
    "connect5": connect("c5", level=5, will="w/5", p=b"\x11\x00\x00\x00\x0a\x21\x00\x05\x22\x00\x04"),
    "publish": publish("a/b", b"hi", qos=1) + publish("a/b", b"x", qos=2, pid=2, retain=True),
    "publish5": publish("", b"p", qos=1, level=5, p=b"\x23\x00\x01\x02\x00\x00\x00\x05\x26\x00\x01k\x00\x01v"),
    "subscribe": subscribe([("a/#", 1), ("+/b", 2)]),
    "subscribe5": subscribe([("$share/g/t/#", 0x2d)], level=5, p=b"\x0b\x07"),
    "acks": pkt(0x40, b"\x00\x01") + pkt(0x50, b"\x00\x02") + pkt(0x62, b"\x00\x02") + pkt(0x70, b"\x00\x02"),
    "misc": pkt(0xC0, b"") + pkt(0xE0, b"") + pkt(0xA2, b"\x00\x03" + s("a/#")) + pkt(0xF0, b"\x00\x00"),
}


def op(client, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([0x30 | client, len(chunk)]) + chunk
    return out


broker = {
    "pubsub": b"\x00" + op(0, connect("sub", clean=False)) + op(0, subscribe([("a/#", 2), ("devices/#", 1)]))
    + op(1, connect("pub", will="a/will")) + op(1, publish("a/b", b"1", qos=1)) + op(1, publish("a/c", b"2", qos=2, pid=2))
    + op(1, pkt(0x62, b"\x00\x02")) + bytes([0x10, 9]) + bytes([0x20 | 1, 0]) + bytes([0x00, 40]),
    "devices": b"\x01" + op(2, connect("app", level=5, p=b"\x22\x00\x03\x11\x00\x00\x00\x05"))
    + op(2, subscribe([("devices/+/+/result", 1)], level=5, p=b"\x0b\x02"))
    + op(2, publish("devices/lamp/level/set", b"7", qos=1, level=5, p=b"\x08\x00\x05reply"))
    + op(2, publish("devices/lamp/set", b'{"power":"ON","level":12}', qos=1, pid=3, level=5))
    + op(3, connect("plug")) + op(3, publish("stat/plug/POWER", b"ON")) + bytes([0x12, 3, 0x00, 9]),
    "v5flow": b"\x00" + op(0, connect("s5", level=5, clean=False, p=b"\x21\x00\x01\x27\x00\x00\x01\x00"))
    + op(0, subscribe([("t/#", 1)], level=5)) + op(1, connect("p5", level=5))
    + b"".join(op(1, publish("t/x", b"m" * 40, qos=1, pid=n, level=5, p=b"\x02\x00\x00\x00\x01")) for n in range(1, 8))
    + bytes([0x00, 12, 0x10, 20, 0x20, 0]),
}



def sn(kind, body=b""):
    """One MQTT-SN message (1-byte length)."""
    return bytes([len(body) + 2, kind]) + body


def dg(src, data):
    """A datagram from source `src` (0..7) in the mqttsn target's format."""
    return bytes([src & 0x3F, len(data)]) + data


def dg_wide(src, data):
    """A datagram of up to 65535 bytes (two length bytes, op bit 0x20)."""
    return bytes([0x20 | (src & 0x1F)]) + len(data).to_bytes(2, "big") + data


def sn_long(kind, body=b""):
    """An MQTT-SN message in the 3-byte length form."""
    return bytes([1]) + (len(body) + 4).to_bytes(2, "big") + bytes([kind]) + body


WAIT = bytes([0x80 | 10, 0])  # time passes (10 x 200 ms)


def mqtt_pub(qos, topic=1):
    """The MQTT client publishes on a/b (topic 1) or x/y (topic 0)."""
    return bytes([0xC0 | (4 if topic == 0 else 0) | qos, 2]) + b"hi"


mqttsn = {
    "session": dg(0, sn(0x04, b"\x04\x01\x00\x3c" + b"s1")) + dg(0, sn(0x0A, b"\x00\x00\x00\x01a/b"))
    + dg(0, sn(0x0C, b"\x20\x00\x01\x00\x02hi")) + dg(0, sn(0x12, b"\x20\x00\x03x/#"))
    + mqtt_pub(1, 0) + dg(0, sn(0x0B, b"\x00\x02\x00\x01\x00")) + WAIT + WAIT + WAIT,
    "will_sleep": dg(2, sn(0x04, b"\x0c\x01\x00\x02" + b"w")) + dg(2, sn(0x07, b"\x20w/t"))
    + dg(2, sn(0x09, b"bye")) + dg(2, sn(0x12, b"\x21\x00\x01\x00\x01")) + dg(2, sn(0x18, b"\x00\x01"))
    + mqtt_pub(1) + mqtt_pub(0) + dg(2, sn(0x16, b"w")) + WAIT + dg(2, sn(0x0D, b"\x00\x01\x00\x01\x00"))
    + WAIT + WAIT,
    "qos_minus1": dg(4, sn(0x0C, b"\x61\x00\x01\x00\x00x")) + dg(4, sn(0x0C, b"\x62ab\x00\x00y"))
    + dg(4, sn(0x01, b"\x00")),
    "long_form": dg(3, sn(0x04, b"\x04\x01\x00\x00" + b"L")) + dg_wide(3, sn_long(0x0A, b"\x00\x00\x00\x01" + b"l/" + b"x" * 300))
    + dg_wide(3, sn_long(0x0C, b"\x61\x00\x01\x00\x00" + b"p" * 400)) + dg(3, sn(0x12, b"\x20\x00\x02a/#"))
    + bytes([0xE1]) + (300).to_bytes(2, "big") + b"q" * 300 + dg(3, sn(0x0B, b"\x00\x01\x00\x01\x01")) + WAIT
    + dg(5, sn(0x04, b"\x0c\x01\x00\x00" + b"W")) + dg(5, sn(0x07, b"\x20w/t")) + dg_wide(5, sn_long(0x09, b"m" * 256)),
    "forwarder": dg(1, b"\x05\xfe\x00\x12\x34" + sn(0x04, b"\x04\x01\x00\x3c" + b"f"))
    + dg(1, b"\x05\xfe\x00\x12\x34" + sn(0x16)),
}

def body(kind, *fields):
    """One record body for the restore target, as its (length byte, body) pair."""
    data = bytes([kind]) + b"".join(fields)
    assert len(data) < 256
    return bytes([len(data)]) + data


def rs(x):
    """A record's string (u16 LE length); `rb`: its byte string (u32 LE length)."""
    x = x.encode() if isinstance(x, str) else x
    return struct.pack("<H", len(x)) + x


def rb(x):
    return struct.pack("<I", len(x)) + x


def removal(id, topic, config):
    return body(14, struct.pack("<Q", id), rs(topic), rb(config))


restore = {
    # Home Assistant discovery removals: kept, the same again, one dropped, one retained
    # config beside them.
    "removals": removal(1, "homeassistant/device/gone/config", b'{"cmps":{"power":{"p":"switch"}}}')
    + removal(2, "homeassistant/device/lamp/config", b'{"cmps":{"label":{"p":"text"}}}')
    + removal(3, "homeassistant/device/gone/config", b'{"cmps":{"power":{"p":"switch"}}}')
    + body(15, struct.pack("<Q", 2))
    + body(1, rs("devices/lamp/power"), b"\x01\x01", struct.pack("<Q", 0), rb(b""), rb(b"ON")),
}

for target, seeds in (("decode", decode), ("broker", broker), ("mqttsn", mqttsn),
                      ("restore", restore)):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (d / name).write_bytes(data)
print("seeds written")
