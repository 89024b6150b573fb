//! MQTT-SN: arbitrary datagrams (up to 255 bytes, or with op bit 0x20 up to 65535: the 3-byte
//! length form too), decoded (and, when they decode, encoded again and decoded to
//! the same message), then handed to a gateway on a broker core from a few source addresses,
//! interleaved with time jumps (retransmissions, sleep, keep-alive), with the broker's output
//! translated and its ended connections closed as the event loop does. An MQTT subscriber
//! makes deliveries flow back to the MQTT-SN clients. Must never panic.
#![no_main]
use gatemq::broker::{Broker, BrokerConfig, ConnId};
use gatemq::mqttsn::wire::decode;
use gatemq::mqttsn::{Gateway, Host, Options};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct NullHost {
    next: ConnId,
    open: usize,
}

impl Host for NullHost {
    fn send(&mut self, _: SocketAddr, d: &[u8]) -> bool {
        // What the gateway sends decodes too.
        assert!(decode(d).is_ok(), "the gateway sent an undecodable datagram: {d:?}");
        true
    }
    fn open_slot(&mut self) -> Option<ConnId> {
        if self.open >= 16 {
            return None;
        }
        self.open += 1;
        self.next += 1;
        Some(self.next)
    }
}

/// The MQTT subscriber's slot.
const MQTT: ConnId = 0;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let cfg = BrokerConfig {
        max_queued_messages: 5,
        max_packet_size: 4096,
        output_buffer_soft: 512,
        sys_interval: 0,
        ..BrokerConfig::default()
    };
    let mut b = Broker::new(cfg, now);
    let opts = Options {
        topics: vec![(1, "a/b".into()), (2, "c".into())],
        retry_interval: Duration::from_secs(1),
        retry_count: 2,
        max_clients: 6,
        max_clients_per_source: 3,
        // Small enough for the fuzzer to reach: evictions, full topic tables, wills refused.
        idle_evict: Duration::from_secs(1),
        max_topic_bytes: 64,
        max_will_size: 16,
        ..Options::default()
    };
    let mut gw = Gateway::new(opts, 0, now);
    let mut host = NullHost { next: 10, open: 0 };
    // An MQTT client subscribed to everything, publishing now and then.
    b.open(MQTT, None, 0, now);
    for frame in [
        &b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x00\x00\x02mq"[..],
        b"\x82\x06\x00\x01\x00\x01#\x01",
    ] {
        b.handle_packet(MQTT, frame, 2, now);
    }
    let mut work = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        // The body's length: one byte, or two (big-endian) with bit 0x20 of a datagram or an
        // MQTT publish, so datagrams past 255 bytes (MQTT-SN's 3-byte length form) come too.
        let wide = op >> 6 != 2 && op & 0x20 != 0;
        let (len, skip) = match (wide, tail) {
            (true, [hi, lo, ..]) => (u16::from_be_bytes([*hi, *lo]) as usize, 2),
            (true, _) => (0, tail.len()),
            (false, [l, ..]) => (*l as usize, 1),
            (false, []) => (0, 0),
        };
        let len = len.min(tail.len().saturating_sub(skip));
        let body = tail.get(skip..skip + len).unwrap_or(&[]);
        rest = tail.get(skip + len..).unwrap_or(&[]);
        match op >> 6 {
            0 | 1 => {
                if let Ok(d) = decode(body) {
                    let mut again = Vec::new();
                    if let Some(e) = &d.encapsulation {
                        gatemq::mqttsn::wire::encode_encapsulation(&mut again, e);
                    }
                    d.message.encode(&mut again);
                    let d2 = decode(&again).expect("what was decoded encodes to a decodable datagram");
                    assert_eq!(d2.message, d.message);
                }
                let from = SocketAddr::from(([127, 0, 0, 1 + (op & 1)], 5000 + (op as u16 & 6)));
                gw.datagram(&mut b, &mut host, from, body, now);
            }
            2 => {
                now += Duration::from_millis(u64::from(op & 0x3f) * 200);
                b.handle_timeout(now);
                gw.handle_timeout(&mut b, &mut host, now);
            }
            _ => {
                // The MQTT client publishes at QoS op&3 on a topic the clients may subscribe to.
                let topic: &[u8] = match op & 4 {
                    0 => b"a/b",
                    _ => b"x/y",
                };
                let mut f = Vec::new();
                let qos = (op & 3).min(2);
                gatemq::wire::encode_publish_header(&mut f, topic, qos, op & 8 != 0, false, 7, body.len());
                f.extend_from_slice(body);
                if let Ok(Some(fr)) = gatemq::wire::frame_len(&f, usize::MAX) {
                    b.handle_packet(MQTT, &f, fr.header_len, now);
                }
            }
        }
        // The end of the loop turn: output translated, ended connections closed.
        loop {
            b.take_dirty(&mut work);
            let dirty = work.clone();
            for &id in &dirty {
                if id == MQTT {
                    let n = b.output(MQTT).len();
                    b.consume_output(MQTT, n);
                } else {
                    gw.flush(&mut b, &mut host, id, now);
                }
            }
            b.take_closing(&mut work);
            let closing = work.clone();
            for &id in &closing {
                if id == MQTT {
                    continue;
                }
                gw.flush(&mut b, &mut host, id, now);
                gw.closed(&mut b, &mut host, id);
                b.release(id, now);
                host.open -= 1;
            }
            if dirty.is_empty() && closing.is_empty() {
                break;
            }
        }
        assert!(gw.client_count() <= 6);
    }
});
