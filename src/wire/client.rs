//! The client's side of the protocol, for a bridge to an upstream broker: CONNECT, SUBSCRIBE
//! and PINGREQ encoded, and the packets only a server sends (CONNACK, SUBACK, UNSUBACK,
//! PINGRESP) decoded. PUBLISH and the acknowledgements are the same both ways and use the
//! broker's own codec.
//!
//! Decoding follows the rest of `wire`: it never panics, and every malformed input is an
//! error with its reason.

use super::properties::{id, Context, PropBuf, Properties};
use super::{kind, put_str, put_u16, put_varint, DecodeError, Reader, LEVEL_5};

/// A CONNECT to send. `level` may carry Mosquitto's bridge bit (0x80, `try_private`).
pub struct ConnectOut<'a> {
    pub level: u8,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    /// Will: topic, payload, QoS, retain.
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// MQTT 5: Session Expiry Interval, Receive Maximum and Maximum Packet Size sent.
    pub session_expiry: u32,
    pub receive_max: u16,
    pub max_packet: u32,
}

pub fn encode_connect(out: &mut Vec<u8>, c: &ConnectOut<'_>) {
    let v5 = c.level & 0x7f == LEVEL_5;
    let mut props = PropBuf::default();
    if v5 {
        if c.session_expiry > 0 {
            props.u32(id::SESSION_EXPIRY_INTERVAL, c.session_expiry);
        }
        if c.receive_max < u16::MAX {
            props.u16(id::RECEIVE_MAXIMUM, c.receive_max);
        }
        if c.max_packet > 0 {
            props.u32(id::MAXIMUM_PACKET_SIZE, c.max_packet);
        }
    }
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, b"MQTT");
    body.push(c.level);
    let mut flags = (c.clean_start as u8) << 1;
    if let Some((_, _, qos, retain)) = c.will {
        flags |= 0x04 | qos << 3 | (retain as u8) << 5;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    put_u16(&mut body, c.keep_alive);
    if v5 {
        props.finish(&mut body);
    }
    put_str(&mut body, c.client_id.as_bytes());
    if let Some((topic, payload, _, _)) = c.will {
        if v5 {
            body.push(0); // no will properties
        }
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, payload);
    }
    if let Some(u) = c.username {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = c.password {
        put_str(&mut body, p);
    }
    out.push(kind::CONNECT << 4);
    put_varint(out, body.len());
    out.extend_from_slice(&body);
}

/// SUBSCRIBE with one filter and its options byte (QoS, No Local, Retain As Published).
pub fn encode_subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, options: u8, v5: bool) {
    out.push(kind::SUBSCRIBE << 4 | 0b0010);
    put_varint(out, 2 + v5 as usize + 2 + filter.len() + 1);
    put_u16(out, packet_id);
    if v5 {
        out.push(0); // no properties
    }
    put_str(out, filter.as_bytes());
    out.push(options);
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[kind::PINGREQ << 4, 0]);
}

/// DISCONNECT, normal: two bytes in every version (MQTT 5 lets reason 0 be left out).
pub fn encode_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[kind::DISCONNECT << 4, 0]);
}

/// A packet only a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket<'a> {
    /// CONNACK: session present, return code (3.1.1) or reason code (MQTT 5), properties.
    ConnAck {
        session_present: bool,
        code: u8,
        properties: Properties<'a>,
    },
    /// SUBACK: packet id and one return/reason code per filter.
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    UnsubAck {
        packet_id: u16,
    },
    PingResp,
}

/// Decode `frame` (fixed header included) if it is a packet only a server sends; `Ok(None)`
/// for every other type (decoded by [`super::Packet::decode`]).
pub fn decode_server(
    frame: &[u8],
    header_len: usize,
    v5: bool,
) -> Result<Option<ServerPacket<'_>>, DecodeError> {
    let Some(&first) = frame.first() else {
        return Err(DecodeError::malformed("empty packet"));
    };
    let body = frame
        .get(header_len..)
        .ok_or(DecodeError::malformed("packet ends early"))?;
    let packet_type = first >> 4;
    if !matches!(
        packet_type,
        kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP
    ) {
        return Ok(None);
    }
    if first & 0x0f != 0 {
        return Err(DecodeError::malformed(
            "reserved fixed-header flags are wrong",
        ));
    }
    let mut r = Reader::new(body);
    let p = match packet_type {
        kind::CONNACK => {
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::malformed("reserved CONNACK flags set"));
            }
            let code = r.u8()?;
            let properties = if v5 && !r.is_empty() {
                Properties::decode(&mut r, Context::ConnAck)?
            } else {
                Properties::default()
            };
            ServerPacket::ConnAck {
                session_present: ack_flags & 1 != 0,
                code,
                properties,
            }
        }
        kind::SUBACK => {
            let packet_id = r.u16()?;
            if v5 {
                Properties::decode(&mut r, Context::SubAck)?;
            }
            let codes = r.rest();
            if codes.is_empty() {
                return Err(DecodeError::protocol("SUBACK without return codes"));
            }
            ServerPacket::SubAck { packet_id, codes }
        }
        kind::UNSUBACK => {
            let packet_id = r.u16()?;
            r.rest();
            ServerPacket::UnsubAck { packet_id }
        }
        _ => ServerPacket::PingResp,
    };
    if !r.is_empty() {
        return Err(DecodeError::malformed("packet has trailing bytes"));
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{frame_len, Packet};

    fn frame(v: &[u8]) -> usize {
        frame_len(v, usize::MAX).unwrap().unwrap().header_len
    }

    #[test]
    fn connect_decodes_as_sent() {
        for level in [4, 5, 0x84] {
            let mut v = Vec::new();
            encode_connect(
                &mut v,
                &ConnectOut {
                    level,
                    clean_start: false,
                    keep_alive: 60,
                    client_id: "gw.site1",
                    will: Some(("$SYS/broker/connection/gw/state", b"0", 1, true)),
                    username: Some("u"),
                    password: Some(b"p"),
                    session_expiry: 300,
                    receive_max: 20,
                    max_packet: 1024,
                },
            );
            if level & 0x80 != 0 {
                // The bridge bit is Mosquitto's; the plain level decodes as usual.
                v[8] &= 0x7f;
            }
            let Packet::Connect(c) = Packet::decode(&v, frame(&v), 0).unwrap() else {
                panic!()
            };
            assert_eq!(
                (c.client_id, c.keep_alive, c.clean_session),
                ("gw.site1", 60, false)
            );
            let w = c.will.unwrap();
            assert_eq!(
                (w.topic, w.payload, w.qos, w.retain),
                ("$SYS/broker/connection/gw/state", &b"0"[..], 1, true)
            );
            assert_eq!((c.username, c.password), (Some("u"), Some(&b"p"[..])));
            if level == 5 {
                assert_eq!(c.properties.u32(id::SESSION_EXPIRY_INTERVAL), Some(300));
                assert_eq!(c.properties.u16(id::RECEIVE_MAXIMUM), Some(20));
            }
        }
    }

    #[test]
    fn subscribe_decodes_as_sent() {
        for v5 in [false, true] {
            let mut v = Vec::new();
            let options = if v5 { 0x0d } else { 0x01 };
            encode_subscribe(&mut v, 7, "site/#", options, v5);
            let Packet::Subscribe(s) =
                Packet::decode(&v, frame(&v), if v5 { 5 } else { 4 }).unwrap()
            else {
                panic!()
            };
            let f: Vec<_> = s.filters.collect();
            assert_eq!(s.packet_id, 7);
            assert_eq!(f[0].0, "site/#");
            assert_eq!(f[0].1 .0, options);
        }
    }

    #[test]
    fn server_packets() {
        let connack = [0x20, 3, 1, 0, 0];
        assert_eq!(
            decode_server(&connack, 2, true).unwrap(),
            Some(ServerPacket::ConnAck {
                session_present: true,
                code: 0,
                properties: Properties::default()
            })
        );
        let suback = [0x90, 3, 0, 9, 1];
        assert_eq!(
            decode_server(&suback, 2, false).unwrap(),
            Some(ServerPacket::SubAck {
                packet_id: 9,
                codes: &[1]
            })
        );
        assert_eq!(
            decode_server(&[0xd0, 0], 2, false).unwrap(),
            Some(ServerPacket::PingResp)
        );
        assert_eq!(decode_server(&[0x30, 0], 2, false).unwrap(), None);
        // Truncated or flagged wrong: errors, never a panic.
        assert!(decode_server(&[0x20, 1, 1], 2, false).is_err());
        assert!(decode_server(&[0x21, 2, 0, 0], 2, false).is_err());
        assert!(decode_server(&[0x90, 2, 0, 9], 2, false).is_err());
        assert!(decode_server(&[0x20, 2, 2, 0], 2, false).is_err());
        assert!(decode_server(&[0xd0, 1, 0], 2, false).is_err());
    }
}
