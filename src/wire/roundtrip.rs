//! Property tests: every packet the codec encodes decodes back to itself. Packets come from a
//! small deterministic generator (xorshift), 20 000 of each kind per run, so a failure prints a
//! seed that reproduces it.

use super::properties::{id, PropBuf, Property};
use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }
    /// A valid topic name: 1-5 levels of letters, digits, spaces and non-ASCII.
    fn topic(&mut self) -> String {
        const CHARS: [char; 8] = ['a', 'Z', '0', ' ', '-', 'é', '水', '$'];
        let levels = 1 + self.below(5);
        let mut t = String::new();
        for l in 0..levels {
            if l > 0 {
                t.push('/');
            }
            for _ in 0..self.below(6) {
                t.push(CHARS[self.below(8) as usize]);
            }
        }
        if t.is_empty() {
            t.push('x');
        }
        t
    }
}

fn frame(v: &[u8]) -> Frame {
    frame_len(v, usize::MAX).expect("frame").expect("whole")
}

#[test]
fn publish_encodes_and_decodes_back() {
    for seed in 1..=20_000u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let v5 = r.below(2) == 1;
        let qos = r.below(3) as u8;
        let retain = r.below(2) == 1;
        let dup = qos > 0 && r.below(2) == 1;
        let packet_id = if qos > 0 {
            1 + r.below(65535) as u16
        } else {
            0
        };
        let topic = r.topic();
        let payload = r.bytes(300);
        let mut props = PropBuf::default();
        let mut want: Vec<Property<'_>> = Vec::new();
        let (ct, rt, corr, k, val) = (r.topic(), r.topic(), r.bytes(20), r.topic(), r.topic());
        if v5 {
            if r.below(2) == 1 {
                props.u32(id::MESSAGE_EXPIRY_INTERVAL, r.next() as u32);
            }
            if r.below(2) == 1 {
                props.byte(id::PAYLOAD_FORMAT_INDICATOR, r.below(2) as u8);
            }
            if r.below(2) == 1 {
                props.str(id::CONTENT_TYPE, &ct);
            }
            if r.below(2) == 1 {
                props.str(id::RESPONSE_TOPIC, &rt);
            }
            if r.below(2) == 1 {
                props.buf.push(id::CORRELATION_DATA);
                put_str(&mut props.buf, &corr);
            }
            for _ in 0..r.below(3) {
                props.buf.push(id::USER_PROPERTY);
                put_str(&mut props.buf, k.as_bytes());
                put_str(&mut props.buf, val.as_bytes());
            }
            if r.below(2) == 1 {
                props.u16(id::TOPIC_ALIAS, 1 + r.below(100) as u16);
            }
            let mut rd = Reader::new(&props.buf);
            while !rd.is_empty() {
                want.push(read_prop_for_test(&mut rd));
            }
        }
        let mut v = Vec::new();
        let props_len = v5.then_some(props.buf.len());
        encode_publish_header_v5(
            &mut v,
            topic.as_bytes(),
            qos,
            retain,
            dup,
            packet_id,
            props_len,
            payload.len(),
        );
        v.extend_from_slice(&props.buf);
        v.extend_from_slice(&payload);
        assert_eq!(
            v.len(),
            publish_len(topic.len(), qos, props_len, payload.len()),
            "seed {seed}"
        );
        let f = frame(&v);
        assert_eq!(f.total_len, v.len(), "seed {seed}");
        let Ok(Packet::Publish(p)) =
            Packet::decode(&v, f.header_len, if v5 { LEVEL_5 } else { LEVEL_311 })
        else {
            panic!("seed {seed}: did not decode as PUBLISH");
        };
        assert_eq!(
            (p.qos, p.retain, p.dup, p.topic, p.packet_id),
            (qos, retain, dup, topic.as_str(), packet_id),
            "seed {seed}"
        );
        assert_eq!(p.payload, &payload[..], "seed {seed}");
        let got: Vec<Property<'_>> = p.properties.iter().map(|(p, _)| p).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}

fn read_prop_for_test<'a>(r: &mut Reader<'a>) -> Property<'a> {
    let pid = r.u8().unwrap();
    match pid {
        id::MESSAGE_EXPIRY_INTERVAL => Property::U32(pid, r.u32().unwrap()),
        id::PAYLOAD_FORMAT_INDICATOR => Property::Byte(pid, r.u8().unwrap()),
        id::TOPIC_ALIAS => Property::U16(pid, r.u16().unwrap()),
        id::CORRELATION_DATA => Property::Binary(pid, r.binary().unwrap()),
        id::USER_PROPERTY => Property::UserProperty(r.utf8().unwrap(), r.utf8().unwrap()),
        _ => Property::Str(pid, r.utf8().unwrap()),
    }
}

#[test]
fn acks_encode_and_decode_back() {
    let kinds = [kind::PUBACK, kind::PUBREC, kind::PUBREL, kind::PUBCOMP];
    for seed in 1..=20_000u64 {
        let mut r = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let packet_type = kinds[r.below(4) as usize];
        let id = 1 + r.below(65535) as u16;
        let v5 = r.below(2) == 1;
        let reason = if v5 && r.below(2) == 1 {
            r.next() as u8
        } else {
            0
        };
        let text = r.topic();
        let reason_string = (v5 && r.below(2) == 1).then_some(text.as_str());
        let mut v = Vec::new();
        if v5 {
            encode_ack_v5(&mut v, packet_type, id, reason, reason_string);
        } else {
            encode_ack(&mut v, packet_type, id);
        }
        let f = frame(&v);
        let a = match Packet::decode(&v, f.header_len, if v5 { LEVEL_5 } else { LEVEL_311 }) {
            Ok(Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) => a,
            other => panic!("seed {seed}: {other:?}"),
        };
        assert_eq!(
            a,
            Ack {
                packet_id: id,
                reason
            },
            "seed {seed}"
        );
        assert_eq!(v[0] >> 4, packet_type, "seed {seed}");
    }
}

#[test]
fn disconnect_encodes_and_decodes_back() {
    for seed in 1..=5_000u64 {
        let mut r = Rng(seed | 1);
        let reason = r.next() as u8;
        let text = r.topic();
        let mut v = Vec::new();
        encode_disconnect_v5(&mut v, reason, (r.below(2) == 1).then_some(text.as_str()));
        let f = frame(&v);
        let Ok(Packet::Disconnect(d)) = Packet::decode(&v, f.header_len, LEVEL_5) else {
            panic!("seed {seed}");
        };
        assert_eq!(d.reason, reason, "seed {seed}");
    }
}
