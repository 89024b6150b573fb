"""Store-and-forward through an uplink outage, for any broker as the gateway (gatemq or
Mosquitto), bridged to a Debian Mosquitto upstream started here.

Per run: the gateway's bridge is up; the upstream stops; a client publishes N QoS 1 messages
to the gateway (the bridge must hold them all); the upstream starts again. Measured: the
gateway's RSS growth while it holds the queue (per message), and the time from the bridge's
"1" notification upstream (the link is back) to the last message at an upstream subscriber
(mosquitto_sub); every message must arrive, in order.

    .venv/bin/python tests/bench/bridge.py GATEMQ_BIN N [REPS]   (prints TSV rows)
"""
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}")
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sub:
    """mosquitto_sub upstream (C, so the subscriber is not what limits the drain rate), with a
    session that outlives it (-c), read line by line with arrival times."""

    def __init__(self, port, client_id, topics):
        args = ["mosquitto_sub", "-h", HOST, "-p", str(port), "-c", "-i", client_id, "-q", "1",
                "-F", "%r %t %p"]
        for t in topics:
            args += ["-t", t]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def get(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("mosquitto_sub ended")
        retain, topic, payload = line.rstrip(b"\n").split(b" ", 2)
        return time.monotonic(), topic.decode(), payload, retain == b"1"

    def stop(self):
        self.p.terminate()
        self.p.wait(10)


class Client:
    def __init__(self, port, client_id="", clean=True):
        self.q = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        self.c.on_message = lambda c, u, m: self.q.put((time.monotonic(), m.topic, m.payload, m.retain))
        self.c.connect(HOST, port, keepalive=60)
        self.c.loop_start()

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def run(kind, gatemq_bin, n, work):
    up_port, gw_port = free_port(), free_port()
    up_dir = os.path.join(work, f"up-{up_port}")
    os.mkdir(up_dir)
    up_conf = os.path.join(up_dir, "up.conf")
    with open(up_conf, "w") as f:
        f.write(f"user root\nlistener {up_port} {HOST}\nallow_anonymous true\npersistence true\n"
                f"persistence_location {up_dir}/\nmax_queued_messages 0\n")
    bridge = (f"connection up\naddress {HOST}:{up_port}\nremote_clientid site1\n"
              f"restart_timeout 1\ntopic data/# out 1 \"\" site1/\n")
    gw_conf = os.path.join(work, f"gw-{gw_port}.conf")
    with open(gw_conf, "w") as f:
        if kind == "gatemq":
            f.write(f"listener {gw_port} {HOST}\nallow_anonymous true\nmax_queued_messages 0\n"
                    f"sys_interval 0\n{bridge}")
        else:
            f.write(f"user root\nlistener {gw_port} {HOST}\nallow_anonymous true\n"
                    f"max_queued_messages 0\n{bridge}")
    start_up = lambda: subprocess.Popen(["mosquitto", "-c", up_conf], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
    up = start_up()
    wait_port(up_port, up)
    cmd = [gatemq_bin, "-c", gw_conf] if kind == "gatemq" else ["mosquitto", "-c", gw_conf]
    gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(gw_port, gw)
        sub_id = f"cloud-{up_port}"
        state = "$SYS/broker/connection/site1/state"
        sub = Sub(up_port, sub_id, ["site1/data/#", state])
        while True:  # the link is up: a live (not retained) "1"
            _, topic, payload, retain = sub.get()
            if topic == state and payload == b"1":
                break
        sub.stop()
        up.terminate()
        up.wait(10)
        time.sleep(1.5)
        rss_before = rss_kb(gw.pid)
        pub = Client(gw_port)
        infos = [pub.c.publish("data/seq", str(i).encode().rjust(32, b"0"), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(60)
        pub.stop()
        time.sleep(0.5)
        rss_held = rss_kb(gw.pid)

        up = start_up()
        wait_port(up_port, up)
        sub = Sub(up_port, sub_id, ["site1/data/#", state])
        link_up, seqs, last = None, [], None
        while len(set(seqs)) < n:
            t, topic, payload, retain = sub.get()
            if topic == state and payload == b"1" and not retain:
                link_up = t
            elif topic == "site1/data/seq":
                seqs.append(int(payload))
                last = t
        sub.stop()
        unique = list(dict.fromkeys(seqs))
        assert unique == list(range(n)), f"{kind}: out of order or missing"
        assert link_up is not None and link_up <= last, f"{kind}: no link-up notification first"
        return {
            "drain_s": last - link_up,
            "rss_held_kb": rss_held - rss_before,
            "bytes_per_msg": (rss_held - rss_before) * 1024 / n,
            "duplicates": len(seqs) - n,
        }
    finally:
        for p in (gw, up):
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def main():
    gatemq_bin, n = sys.argv[1], int(sys.argv[2])
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with tempfile.TemporaryDirectory(prefix="gatemq-bridge-") as work:
        for _ in range(reps):
            for kind in ("gatemq", "mosquitto"):
                r = run(kind, gatemq_bin, n, work)
                for k, v in r.items():
                    print(f"{kind}\t{n}\t{k}\t{v:.3f}", flush=True)


if __name__ == "__main__":
    main()
