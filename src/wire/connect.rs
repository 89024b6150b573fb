//! CONNECT and CONNACK.

use super::properties::{Context, PropBuf, Properties};
use super::{kind, put_varint, DecodeError, Reader, LEVEL_31, LEVEL_311, LEVEL_5};

/// A will message as carried in CONNECT (a view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 will properties (empty for 3.1.x).
    pub properties: Properties<'a>,
}

/// A CONNECT packet. `Connect::decode` checks the parts whose failure closes the connection
/// without a CONNACK; the ones that get a CONNACK with a return code (protocol level, client
/// identifier, credentials) are left to the broker, which knows its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    pub protocol_name: &'a str,
    pub level: u8,
    /// The level carried Mosquitto's bridge mark (0x80, a bridge's `try_private`): the
    /// client is another broker's bridge.
    pub bridge: bool,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// MQTT 5 CONNECT properties (empty for 3.1.x).
    pub properties: Properties<'a>,
}

impl<'a> Connect<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let protocol_name = r.utf8()?;
        let marked = r.u8()?;
        let (level, bridge) = match marked {
            0x83 | 0x84 => (marked & 0x7f, true),
            l => (l, false),
        };
        // An unknown protocol name is not MQTT at all: close without answering (spec 3.1.2.1).
        match (protocol_name, level) {
            ("MQTT", _) | ("MQIsdp", _) => {}
            _ => return Err(DecodeError::protocol("unknown protocol name")),
        }
        let flags = r.u8()?;
        let keep_alive = r.u16()?;
        let mut c = Connect {
            protocol_name,
            level,
            bridge,
            clean_session: flags & 0x02 != 0,
            keep_alive,
            client_id: "",
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        // Levels we do not speak get CONNACK 0x01 from the broker; their payload layout is
        // not ours to judge, so stop here.
        if !c.is_supported_level() {
            return Ok(c);
        }
        if flags & 0x01 != 0 {
            return Err(DecodeError::malformed("CONNECT reserved flag is set"));
        }
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if will_qos == 3 {
            return Err(DecodeError::malformed("will QoS 3"));
        }
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::malformed(
                "will QoS or retain set without the will flag",
            ));
        }
        let v5 = level == LEVEL_5;
        // MQTT 5 allows a password without a username (spec 3.1.2.9); 3.1.1 does not.
        if password_flag && !username_flag && !v5 {
            return Err(DecodeError::protocol(
                "password flag set without the username flag",
            ));
        }
        if v5 {
            c.properties = Properties::decode(&mut r, Context::Connect)?;
        }
        c.client_id = r.utf8()?;
        if will_flag {
            let properties = if v5 {
                Properties::decode(&mut r, Context::Will)?
            } else {
                Properties::default()
            };
            let topic = r.utf8()?;
            let payload = r.binary()?;
            c.will = Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            });
        }
        if username_flag {
            c.username = Some(r.utf8()?);
        }
        if password_flag {
            c.password = Some(r.binary()?);
        }
        if !r.is_empty() {
            return Err(DecodeError::malformed("CONNECT has trailing bytes"));
        }
        Ok(c)
    }

    /// "MQTT" level 5 (5.0) or 4 (3.1.1), or "MQIsdp" level 3 (3.1).
    pub fn is_supported_level(&self) -> bool {
        matches!(
            (self.protocol_name, self.level),
            ("MQTT", LEVEL_311) | ("MQTT", LEVEL_5) | ("MQIsdp", LEVEL_31)
        )
    }
}

/// CONNACK return codes (3.1.1 table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnAck {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnAck {
    pub fn encode(self, out: &mut Vec<u8>, session_present: bool) {
        out.push(kind::CONNACK << 4);
        put_varint(out, 2);
        out.push(session_present as u8);
        out.push(self as u8);
    }
}

/// MQTT 5 CONNACK with a reason code and properties.
pub fn encode_connack_v5(out: &mut Vec<u8>, session_present: bool, reason: u8, props: &PropBuf) {
    out.push(kind::CONNACK << 4);
    put_varint(out, 2 + props.encoded_len());
    out.push(session_present as u8);
    out.push(reason);
    props.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_str, Packet};

    fn connect_bytes(level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, if level == 3 { b"MQIsdp" } else { b"MQTT" });
        body.push(level);
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        if level == 5 {
            body.push(0);
        }
        for (i, p) in payload.iter().enumerate() {
            if level == 5 && i == 1 && flags & 0x04 != 0 {
                body.push(0); // will properties
            }
            put_str(&mut body, p);
        }
        let mut v = vec![0x10];
        put_varint(&mut v, body.len());
        v.extend_from_slice(&body);
        v
    }

    fn decode(v: &[u8]) -> Result<Connect<'_>, DecodeError> {
        let f = crate::wire::frame_len(v, usize::MAX).unwrap().unwrap();
        match Packet::decode(v, f.header_len, 0)? {
            Packet::Connect(c) => Ok(c),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn full_connect() {
        for level in [4, 5] {
            let v = connect_bytes(
                level,
                0b1110_1110,
                &[b"cid", b"w/t", b"bye", b"user", b"pw"],
            );
            let c = decode(&v).unwrap();
            assert_eq!(c.client_id, "cid");
            assert!(c.clean_session);
            let w = c.will.unwrap();
            assert_eq!(
                (w.topic, w.payload, w.qos, w.retain),
                ("w/t", &b"bye"[..], 1, true)
            );
            assert_eq!(c.username, Some("user"));
            assert_eq!(c.password, Some(&b"pw"[..]));
        }
    }

    #[test]
    fn bad_flags() {
        assert!(decode(&connect_bytes(4, 0b0000_0011, &[b"c"])).is_err()); // reserved bit
        assert!(decode(&connect_bytes(4, 0b0001_1100, &[b"c", b"t", b"p"])).is_err()); // will qos 3
        assert!(decode(&connect_bytes(4, 0b0010_0000, &[b"c"])).is_err()); // retain w/o will
        assert!(decode(&connect_bytes(4, 0b0100_0000, &[b"c", b"p"])).is_err()); // pw w/o user
        assert!(decode(&connect_bytes(5, 0b0100_0000, &[b"c", b"p"])).is_ok()); // fine in v5
        assert!(decode(&connect_bytes(4, 0b0000_0010, &[b"c", b"extra"])).is_err());
    }

    #[test]
    fn unsupported_level_is_left_to_broker() {
        let v = connect_bytes(9, 0xff, &[]);
        let c = decode(&v).unwrap();
        assert!(!c.is_supported_level());
        assert!(decode(&connect_bytes(3, 2, &[b"old"]))
            .unwrap()
            .is_supported_level());
    }
}
