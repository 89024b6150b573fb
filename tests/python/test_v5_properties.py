"""MQTT 5.0 properties passed through unchanged from publisher to subscriber ([MQTT-3.3.2-4],
[MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-20]), and v3.1.1 / v5 clients
mixed, with paho and with Debian's mosquitto_pub / mosquitto_sub."""
import queue
import subprocess
import threading
import time

from clients import HOST, TIMEOUT, RawClient, mosquitto_pub, subscribe_packet
from test_v5_support import MQTTv311, V5Client, uid, v5

REQUEST = dict(ResponseTopic="rr/reply/42", CorrelationData=b"\x00\xffcorr-42",
               UserProperty=[("b", "2"), ("a", "1"), ("b", "3"), ("ünï", "cödé")],
               ContentType="application/json; charset=utf-8", PayloadFormatIndicator=1)


def test_request_response_properties_arrive_unchanged(broker):
    """Response Topic, Correlation Data (binary), User Properties (order kept, duplicate keys
    allowed, [MQTT-3.3.2-18]), Content Type and Payload Format Indicator reach a v5
    subscriber unchanged, at QoS 0, 1 and 2; the responder can answer on the Response Topic."""
    requester, responder = v5(broker.port), v5(broker.port)
    requester.subscribe("rr/reply/#", 1)
    responder.subscribe("rr/req/#", 2)
    for qos in (0, 1, 2):
        requester.publish("rr/req/x", b"{\"q\": %d}" % qos, qos=qos, **REQUEST)
        m = responder.get()
        assert (m.topic, m.payload, m.qos) == ("rr/req/x", b"{\"q\": %d}" % qos, qos)
        for name, value in REQUEST.items():
            assert m.props.get(name) == value, (name, m.props)
    responder.publish(m.props["ResponseTopic"], b"ok", qos=1,
                      CorrelationData=m.props["CorrelationData"])
    r = requester.get()
    assert (r.topic, r.payload, r.props.get("CorrelationData")) == ("rr/reply/42", b"ok", b"\x00\xffcorr-42")


def test_v311_subscriber_gets_v5_message_without_properties(broker):
    """A 3.1.1 subscriber receives a v5 publisher's message as a 3.1.1 PUBLISH: the body is
    exactly topic, packet id and payload (no property bytes)."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("v3raw"))
    raw.send(subscribe_packet(1, "mix/#", 1))
    assert raw.read_packet() == b"\x90\x03\x00\x01\x01"
    paho3 = V5Client(broker.port, protocol=MQTTv311)
    paho3.connect()
    paho3.subscribe("mix/#", 1)
    pub = v5(broker.port)
    pub.publish("mix/a", b"payload", qos=1, MessageExpiryInterval=60, **REQUEST)
    pkt = raw.read_packet()
    assert pkt[0] == 0x32
    body = pkt[2:]
    assert body[:7] == b"\x00\x05mix/a" and body[9:] == b"payload", pkt
    m = paho3.get()
    assert (m.topic, m.payload, m.qos, m.props) == ("mix/a", b"payload", 1, {})


def test_v311_publisher_reaches_v5_subscriber(broker):
    """A 3.1.1 publisher's message reaches a v5 subscriber with no pass-through properties."""
    sub = v5(broker.port)
    sub.subscribe("mix/#", 1)
    p3 = V5Client(broker.port, protocol=MQTTv311)
    p3.connect()
    p3.publish("mix/b", b"from v3", qos=1)
    m = sub.get()
    assert (m.topic, m.payload, m.qos) == ("mix/b", b"from v3", 1)
    assert not {"UserProperty", "ResponseTopic", "CorrelationData", "ContentType",
                "PayloadFormatIndicator", "MessageExpiryInterval"} & set(m.props)


class MosqSub5:
    """mosquitto_sub -V <version> printing one line per message with its v5 properties."""
    FMT = "MSG|%t|%p|%P|%C|%R|%D|%F"

    def __init__(self, port, topic, version="5"):
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", HOST, "-p", str(port), "-d", "-V", version,
             "-q", "1", "-t", topic, "-F", self.FMT],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output = []
        threading.Thread(target=self._read, daemon=True).start()
        self._wait(lambda line: "received SUBACK" in line)

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line.rstrip("\n"))

    def _wait(self, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: timed out:\n{''.join(self.output)}") from None
            if pred(line):
                return line

    def get(self):
        """(topic, payload, user properties, content type, response topic, correlation, pfi)."""
        line = self._wait(lambda line: line.startswith("MSG|"))
        return tuple(line.split("|")[1:])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(TIMEOUT)


def test_mosquitto_pub_v5_properties_reach_paho_v5_and_v3(broker):
    """mosquitto_pub -V 5 with -D publish properties: a paho v5 subscriber sees them, a paho
    3.1.1 subscriber gets the plain message."""
    sub5 = v5(broker.port)
    sub5.subscribe("mp/#", 1)
    sub3 = V5Client(broker.port, protocol=MQTTv311)
    sub3.connect()
    sub3.subscribe("mp/#", 1)
    mosquitto_pub(broker.port, "-V", "5", "-q", "1", "-t", "mp/a", "-m", "hello",
                  "-D", "publish", "user-property", "k", "v1", "-D", "publish", "user-property", "k", "v2",
                  "-D", "publish", "content-type", "text/plain", "-D", "publish", "response-topic", "mp/r",
                  "-D", "publish", "correlation-data", "c-1", "-D", "publish", "payload-format-indicator", "1")
    m = sub5.get()
    assert (m.topic, m.payload, m.qos) == ("mp/a", b"hello", 1)
    assert m.props.get("UserProperty") == [("k", "v1"), ("k", "v2")]
    assert (m.props.get("ContentType"), m.props.get("ResponseTopic"), m.props.get("CorrelationData"),
            m.props.get("PayloadFormatIndicator")) == ("text/plain", "mp/r", b"c-1", 1)
    m3 = sub3.get()
    assert (m3.topic, m3.payload, m3.props) == ("mp/a", b"hello", {})


def test_paho_v5_properties_reach_mosquitto_sub_v5(broker):
    """A paho v5 message's properties as mosquitto_sub -V 5 prints them; mosquitto_sub -V 311
    gets the same message without them."""
    s5 = MosqSub5(broker.port, "ms/#", "5")
    s3 = MosqSub5(broker.port, "ms/#", "311")
    try:
        pub = v5(broker.port)
        pub.publish("ms/a", b"hi", qos=1, UserProperty=[("x", "1"), ("y", "2")], ContentType="text/x",
                    ResponseTopic="ms/r", CorrelationData=b"cd", PayloadFormatIndicator=1)
        assert s5.get() == ("ms/a", "hi", "x:1 y:2", "text/x", "ms/r", "cd", "1")
        assert s3.get() == ("ms/a", "hi", "", "", "", "", "")
    finally:
        s5.stop()
        s3.stop()


def test_mosquitto_pub_v5_to_mosquitto_sub_v5_and_paho_v3_to_mosquitto_sub_v5(broker):
    """mosquitto_pub -V 5 -> mosquitto_sub -V 5 with a user property; a paho 3.1.1 message ->
    mosquitto_sub -V 5 without one."""
    s5 = MosqSub5(broker.port, "mm/#", "5")
    try:
        mosquitto_pub(broker.port, "-V", "5", "-q", "1", "-t", "mm/a", "-m", "one",
                      "-D", "publish", "user-property", "who", "mosq")
        assert s5.get()[:3] == ("mm/a", "one", "who:mosq")
        p3 = V5Client(broker.port, protocol=MQTTv311)
        p3.connect()
        p3.publish("mm/b", b"two", qos=1)
        assert s5.get()[:3] == ("mm/b", "two", "")
    finally:
        s5.stop()
