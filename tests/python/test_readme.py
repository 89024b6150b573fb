"""The README's Quick start device demo, run as written: the same mosquitto_sub and
mosquitto_pub commands against the shipped example config, and the subscriber's output must be
the README's `#   ...` lines, line for line and in order."""
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time

from conftest import BIN, ROOT, free_port

DEMO_START = "mosquitto_sub -h 127.0.0.1 -t 'devices/lamp/#' -v &"
TIMEOUT = 5.0


def demo_steps():
    """[(command argv, [expected output lines])] from the README's ```sh block holding the demo.
    A `#   text   (note)` line is output (the note is dropped); `#   (note)` is only a note."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    block = next(b for b in blocks if DEMO_START in b)
    steps = []
    for line in block.splitlines():
        if not line.startswith("#"):
            steps.append((shlex.split(line.rstrip(" &")), []))
            continue
        out = line[1:].strip()
        if out.startswith("("):
            continue
        steps[-1][1].append(re.sub(r"\s{2,}\(.*\)$", "", out))
    return steps


class Lines:
    """A process's stdout, line by line, with a bounded wait for each."""

    def __init__(self, proc):
        self.q = queue.Queue()
        threading.Thread(target=lambda: [self.q.put(l.rstrip("\n")) for l in proc.stdout],
                         daemon=True).start()

    def take(self, n, what):
        got = []
        try:
            while len(got) < n:
                got.append(self.q.get(timeout=TIMEOUT))
        except queue.Empty:
            raise AssertionError(f"{what}: {len(got)} of {n} lines: {got}") from None
        return got


def test_quick_start_device_demo_prints_what_the_readme_shows(tmp_path):
    steps = demo_steps()
    assert [s[0][0] for s in steps] == ["mosquitto_sub", "mosquitto_pub", "mosquitto_pub"]
    port = free_port()
    log = tmp_path / "example.log"
    # A copy of examples/, so the devices' kept values (gatemq-devices.db beside the config)
    # start fresh, as on a first start.
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("gatemq-devices.db*"))
    broker = subprocess.Popen([BIN, "-c", str(tmp_path / "examples" / "gatemq.conf"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    sub = None
    try:
        deadline = time.monotonic() + 10
        while f"listening on 127.0.0.1:{port}" not in log.read_text():
            assert broker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        (argv, want), *pubs = steps
        sub = subprocess.Popen(["stdbuf", "-oL", *argv, "-p", str(port)],
                               stdout=subprocess.PIPE, text=True)
        lines = Lines(sub)
        assert lines.take(len(want), argv) == want
        for argv, want in pubs:
            subprocess.run([*argv, "-p", str(port)], check=True, timeout=TIMEOUT)
            assert lines.take(len(want), argv) == want
        # Nothing else came: the next line is the one the broker sends as it stops.
        broker.send_signal(signal.SIGTERM)
        assert lines.take(1, "after SIGTERM") == ["devices/lamp/availability offline"]
    finally:
        for p in (sub, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(TIMEOUT)
