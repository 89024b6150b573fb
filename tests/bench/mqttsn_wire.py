"""What one sensor reading costs on the wire: MQTT over TCP (connect, publish, disconnect, with
TCP's handshake and teardown) against MQTT-SN over UDP, each captured with tcpdump on the
loopback interface while a real client sends one 4-byte reading to gatemq.

    .venv/bin/python tests/bench/mqttsn_wire.py target/release/gatemq

Prints one tab-separated line per case: name, packets, IP bytes (what a link carries above
its own framing: IP and TCP/UDP headers included), application bytes (MQTT or MQTT-SN).
Needs tcpdump (and the right to capture: root) and mosquitto_pub."""
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from clients import SN, SnClient  # noqa: E402

READING = b"21.5"
TOPIC = "sensors/hall/temp"


def pcap_packets(path):
    """(IP length, transport payload length) of each packet of a pcap file from `lo`."""
    data = Path(path).read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(end + "I", data[20:24])[0]
    link = {1: 14, 113: 16, 276: 20}.get(linktype, 14)  # Ethernet (lo), Linux cooked v1/v2
    out, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack(end + "I", data[at + 8:at + 12])[0]
        pkt = data[at + 16:at + 16 + incl]
        at += 16 + incl
        ip = pkt[link:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        proto = ip[9]
        if proto == 6:
            thl = (ip[ihl + 12] >> 4) * 4
            payload = total - ihl - thl
        else:
            payload = total - ihl - 8
        out.append((total, payload))
    return out


class Capture:
    def __init__(self, port, proto):
        self.file = tempfile.NamedTemporaryFile(suffix=".pcap", delete=False).name
        self.p = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-n", "-w", self.file, f"{proto} port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Ready once it says it listens.
        line = self.p.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"tcpdump: {line}")
        time.sleep(0.2)

    def stop(self):
        time.sleep(0.5)  # the last ACKs and FINs
        self.p.send_signal(signal.SIGINT)
        self.p.wait(10)
        pk = pcap_packets(self.file)
        os.unlink(self.file)
        return len(pk), sum(t for t, _ in pk), sum(p for _, p in pk)


def main():
    binary = sys.argv[1]
    work = Path(tempfile.mkdtemp())
    conf = work / "gatemq.conf"
    conf.write_text("listener 0 127.0.0.1\nallow_anonymous true\nlistener 0 127.0.0.1\n"
                    f"protocol mqttsn\nmqttsn_topic 1 {TOPIC}\n")
    log = open(work / "log", "w+")
    g = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        ports = []
        while len(ports) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            log.seek(0)
            ports = re.findall(r"listening on 127\.0\.0\.1:(\d+)", log.read())
        tcp, udp = int(ports[0]), int(ports[1])
        rows = []

        for qos in (0, 1):
            cap = Capture(tcp, "tcp")
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tcp), "-i", "sensor-tcp",
                            "-t", TOPIC, "-m", READING.decode(), "-q", str(qos)], check=True)
            rows.append((f"MQTT 3.1.1 over TCP, QoS {qos}: connect, publish, disconnect "
                         "(mosquitto_pub)", *cap.stop()))

        c = SnClient(udp)
        cap = Capture(udp, "udp")
        c.publish(1, READING, qos=-1, topic_type=SN.PREDEFINED)
        time.sleep(0.1)
        rows.append(("MQTT-SN QoS -1: one PUBLISH to a predefined topic id, no connection",
                     *cap.stop()))

        # A sensor that stays connected, its topic id registered once before.
        c.connect("sensor-sn", clean=False, duration=3600)
        tid = c.register(TOPIC)
        cap = Capture(udp, "udp")
        c.publish(tid, READING, qos=1)
        c.expect(SN.PUBACK)
        rows.append(("MQTT-SN QoS 1, connected, topic id kept: PUBLISH, PUBACK", *cap.stop()))

        # A sleeping sensor: asleep between readings, its session and topic id kept.
        c.disconnect(duration=3600)
        cap = Capture(udp, "udp")
        c.connect("sensor-sn", clean=False, duration=3600)
        c.publish(tid, READING, qos=1)
        c.expect(SN.PUBACK)
        c.disconnect(duration=3600)
        rows.append(("MQTT-SN QoS 1, sleeping sensor wakes: CONNECT, PUBLISH, DISCONNECT(sleep) "
                     "and their answers, topic id kept", *cap.stop()))
        c.close()
        for r in rows:
            print("\t".join(str(x) for x in r))
    finally:
        g.send_signal(signal.SIGTERM)
        g.wait(10)


if __name__ == "__main__":
    main()
