//! MQTT-SN 1.2 over UDP: the datagram codec ([`wire`]) and the gateway that puts MQTT-SN
//! clients on the same broker core as MQTT ones.

pub mod wire;
