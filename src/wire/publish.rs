//! PUBLISH.

use super::properties::{Context, Properties};
use super::{kind, put_u16, put_varint, varint_len, DecodeError, Reader};

/// A PUBLISH packet (a view). The topic is checked to be a valid topic name: UTF-8, no
/// U+0000 (by the reader), no wildcards, and not empty unless MQTT 5 (where a Topic Alias may
/// stand for it; the broker checks that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a str,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub payload: &'a [u8],
    /// MQTT 5 properties (empty for 3.1.x).
    pub properties: Properties<'a>,
}

impl<'a> Publish<'a> {
    pub fn decode(flags: u8, body: &'a [u8], v5: bool) -> Result<Self, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = (flags >> 1) & 0x03;
        let retain = flags & 0x01 != 0;
        if qos == 3 {
            return Err(DecodeError::malformed("PUBLISH with QoS 3"));
        }
        if qos == 0 && dup {
            return Err(DecodeError::malformed("PUBLISH QoS 0 with DUP set"));
        }
        let mut r = Reader::new(body);
        let topic = r.utf8()?;
        if topic.is_empty() && !v5 {
            return Err(DecodeError::protocol("PUBLISH with an empty topic"));
        }
        if topic.contains(['+', '#']) {
            return Err(DecodeError::protocol("PUBLISH topic contains a wildcard"));
        }
        let packet_id = if qos > 0 { r.u16()? } else { 0 };
        if qos > 0 && packet_id == 0 {
            return Err(DecodeError::protocol("packet identifier 0"));
        }
        let properties = if v5 {
            Properties::decode(&mut r, Context::Publish)?
        } else {
            Properties::default()
        };
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            payload: r.rest(),
            properties,
        })
    }
}

/// Length of a whole PUBLISH packet with this topic, QoS, MQTT 5 property-list length (None for
/// 3.1.x) and payload length.
pub fn publish_len(
    topic_len: usize,
    qos: u8,
    props_len: Option<usize>,
    payload_len: usize,
) -> usize {
    let props = props_len.map_or(0, |n| varint_len(n) + n);
    let remaining = 2 + topic_len + if qos > 0 { 2 } else { 0 } + props + payload_len;
    1 + varint_len(remaining) + remaining
}

/// Append a PUBLISH up to the payload; the caller appends the payload bytes. Split this way so
/// a message stored once can be written to each subscriber with only its QoS, flags and
/// packet identifier changed.
pub fn encode_publish_header(
    out: &mut Vec<u8>,
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    payload_len: usize,
) {
    encode_publish_header_v5(out, topic, qos, retain, dup, packet_id, None, payload_len);
}

/// As [`encode_publish_header`], with an MQTT 5 property list of `props_len` bytes whose length
/// is written here; the caller appends the properties, then the payload.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_header_v5(
    out: &mut Vec<u8>,
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    props_len: Option<usize>,
    payload_len: usize,
) {
    encode_publish_header_split(
        out,
        (&[], topic),
        qos,
        retain,
        dup,
        packet_id,
        props_len,
        payload_len,
    );
}

/// As [`encode_publish_header_v5`], with the topic in two parts written one after the other
/// (a bridge's remote prefix and the rest of the local topic), so a mapped topic is never
/// built in a buffer of its own.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_header_split(
    out: &mut Vec<u8>,
    topic: (&[u8], &[u8]),
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    props_len: Option<usize>,
    payload_len: usize,
) {
    out.push(kind::PUBLISH << 4 | (dup as u8) << 3 | qos << 1 | retain as u8);
    let props = props_len.map_or(0, |n| varint_len(n) + n);
    let topic_len = topic.0.len() + topic.1.len();
    put_varint(
        out,
        2 + topic_len + if qos > 0 { 2 } else { 0 } + props + payload_len,
    );
    put_u16(out, topic_len as u16);
    out.extend_from_slice(topic.0);
    out.extend_from_slice(topic.1);
    if qos > 0 {
        put_u16(out, packet_id);
    }
    if let Some(n) = props_len {
        put_varint(out, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{frame_len, Packet};

    fn roundtrip(topic: &str, qos: u8, retain: bool, dup: bool, id: u16, payload: &[u8]) {
        for v5 in [false, true] {
            let mut v = Vec::new();
            let props = v5.then_some(0);
            encode_publish_header_v5(
                &mut v,
                topic.as_bytes(),
                qos,
                retain,
                dup,
                id,
                props,
                payload.len(),
            );
            v.extend_from_slice(payload);
            assert_eq!(v.len(), publish_len(topic.len(), qos, props, payload.len()));
            let f = frame_len(&v, usize::MAX).unwrap().unwrap();
            assert_eq!(f.total_len, v.len());
            let Packet::Publish(p) =
                Packet::decode(&v, f.header_len, if v5 { 5 } else { 4 }).unwrap()
            else {
                panic!()
            };
            let properties = Properties::default();
            assert_eq!(
                p,
                Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    packet_id: id,
                    payload,
                    properties
                }
            );
        }
    }

    #[test]
    fn encode_decode() {
        roundtrip("a/b", 0, false, false, 0, b"hello");
        roundtrip("a/b", 1, true, true, 7, b"");
        roundtrip("x", 2, false, false, 65535, &[0u8; 300]);
    }

    #[test]
    fn invalid() {
        assert!(Publish::decode(0b0110, &[0, 1, b'a', 0, 1], false).is_err()); // qos 3
        assert!(Publish::decode(0b1000, &[0, 1, b'a'], false).is_err()); // dup with qos 0
        assert!(Publish::decode(0, &[0, 3, b'a', b'/', b'#'], false).is_err());
        assert!(Publish::decode(0, &[0, 3, b'a', b'+', b'b'], false).is_err());
        assert!(Publish::decode(0, &[0, 0], false).is_err());
        assert!(Publish::decode(0, &[0, 0, 0], true).is_ok()); // v5: alias may stand for it
        assert!(Publish::decode(0b0010, &[0, 1, b'a', 0, 0], false).is_err()); // id 0
        assert!(Publish::decode(0b0010, &[0, 1, b'a', 0], false).is_err()); // truncated id
        assert!(Publish::decode(0, &[0, 2, 0xc3, 0x28], false).is_err()); // bad utf-8
        assert!(Publish::decode(0, &[0, 1, b'a', 5, 0], true).is_err()); // props past the end
    }
}
