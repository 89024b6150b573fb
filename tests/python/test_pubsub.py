"""Publish/subscribe with paho-mqtt at QoS 0, 1 and 2, over MQTT 3.1.1 and 3.1."""
import pytest

from clients import MQTTv31, MQTTv311, connected


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_roundtrip_at_each_qos(broker, qos):
    """A message published at QoS n to a QoS n subscription arrives once, intact, at QoS n."""
    sub = connected(broker.port)
    assert sub.subscribe([("pubsub/t", qos), ("pubsub/end", qos)]) == [qos, qos]
    pub = connected(broker.port)
    pub.publish("pubsub/t", b"hello \x00\xff", qos=qos)
    pub.publish("pubsub/end", qos=qos)
    got = sub.collect_until("pubsub/end")  # exactly one copy before the end marker
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        ("pubsub/t", b"hello \x00\xff", qos, False)]


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_publish_and_granted(broker, pub_qos, sub_qos):
    """MQTT 3.1.1 section 3.8.4: delivered QoS = min(QoS of the PUBLISH, granted QoS)."""
    sub = connected(broker.port)
    assert sub.subscribe("qos/t", sub_qos) == [sub_qos]
    pub = connected(broker.port)
    pub.publish("qos/t", b"x", qos=pub_qos)
    m = sub.get()
    assert m.payload == b"x"
    assert m.qos == min(pub_qos, sub_qos)


def test_qos1_order_preserved_for_200_messages(broker):
    """Section 4.6: messages on one topic reach the subscriber in the order they were published."""
    sub = connected(broker.port)
    sub.subscribe("order/t", 1)
    pub = connected(broker.port)
    infos = [pub.publish("order/t", str(i).encode(), qos=1, wait=False) for i in range(200)]
    got = [m.payload for m in sub.get_n(200, timeout=20)]
    assert got == [str(i).encode() for i in range(200)]
    for i in infos:
        i.wait_for_publish(5)
    assert all(i.is_published() for i in infos)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqtt31_client_roundtrip(broker, qos):
    """MQTT 3.1 (protocol name MQIsdp, level 3) clients publish and subscribe like 3.1.1 ones."""
    sub = connected(broker.port, protocol=MQTTv31)
    assert sub.subscribe("v31/t", qos) == [qos]
    pub = connected(broker.port, protocol=MQTTv31)
    pub.publish("v31/t", b"old protocol", qos=qos)
    m = sub.get()
    assert (m.topic, m.payload, m.qos) == ("v31/t", b"old protocol", qos)


def test_mqtt31_and_mqtt311_clients_interoperate(broker):
    """A 3.1 publisher reaches a 3.1.1 subscriber and the other way round."""
    old = connected(broker.port, protocol=MQTTv31)
    new = connected(broker.port, protocol=MQTTv311)
    old.subscribe("mix/old", 2)
    new.subscribe("mix/new", 2)
    old.publish("mix/new", b"from 3.1", qos=2)
    new.publish("mix/old", b"from 3.1.1", qos=2)
    assert new.get().payload == b"from 3.1"
    assert old.get().payload == b"from 3.1.1"
