//! PUBLISH.

use super::{kind, put_u16, put_varint, varint_len, DecodeError, Reader};

/// A PUBLISH packet (a view). The topic is checked to be a valid topic name: UTF-8, no
/// U+0000 (by the reader), not empty and without wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a str,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    pub fn decode(flags: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
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
        if topic.is_empty() {
            return Err(DecodeError::protocol("PUBLISH with an empty topic"));
        }
        if topic.contains(['+', '#']) {
            return Err(DecodeError::protocol("PUBLISH topic contains a wildcard"));
        }
        let packet_id = if qos > 0 { r.u16()? } else { 0 };
        if qos > 0 && packet_id == 0 {
            return Err(DecodeError::protocol("packet identifier 0"));
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            payload: r.rest(),
        })
    }
}

/// Length of a whole PUBLISH packet with this topic, QoS and payload length.
pub fn publish_len(topic_len: usize, qos: u8, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + if qos > 0 { 2 } else { 0 } + payload_len;
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
    out.push(kind::PUBLISH << 4 | (dup as u8) << 3 | qos << 1 | retain as u8);
    put_varint(
        out,
        2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len,
    );
    put_u16(out, topic.len() as u16);
    out.extend_from_slice(topic);
    if qos > 0 {
        put_u16(out, packet_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{frame_len, Packet};

    fn roundtrip(topic: &str, qos: u8, retain: bool, dup: bool, id: u16, payload: &[u8]) {
        let mut v = Vec::new();
        encode_publish_header(
            &mut v,
            topic.as_bytes(),
            qos,
            retain,
            dup,
            id,
            payload.len(),
        );
        v.extend_from_slice(payload);
        assert_eq!(v.len(), publish_len(topic.len(), qos, payload.len()));
        let f = frame_len(&v, usize::MAX).unwrap().unwrap();
        assert_eq!(f.total_len, v.len());
        let Packet::Publish(p) = Packet::decode(&v, f.header_len).unwrap() else {
            panic!()
        };
        assert_eq!(
            p,
            Publish {
                dup,
                qos,
                retain,
                topic,
                packet_id: id,
                payload
            }
        );
    }

    #[test]
    fn encode_decode() {
        roundtrip("a/b", 0, false, false, 0, b"hello");
        roundtrip("a/b", 1, true, true, 7, b"");
        roundtrip("x", 2, false, false, 65535, &[0u8; 300]);
    }

    #[test]
    fn invalid() {
        assert!(Publish::decode(0b0110, &[0, 1, b'a', 0, 1]).is_err()); // qos 3
        assert!(Publish::decode(0b1000, &[0, 1, b'a']).is_err()); // dup with qos 0
        assert!(Publish::decode(0, &[0, 3, b'a', b'/', b'#']).is_err());
        assert!(Publish::decode(0, &[0, 3, b'a', b'+', b'b']).is_err());
        assert!(Publish::decode(0, &[0, 0]).is_err());
        assert!(Publish::decode(0b0010, &[0, 1, b'a', 0, 0]).is_err()); // id 0
        assert!(Publish::decode(0b0010, &[0, 1, b'a', 0]).is_err()); // truncated id
        assert!(Publish::decode(0, &[0, 2, 0xc3, 0x28]).is_err()); // bad utf-8
    }
}
