//! MQTT 5 properties (spec 2.2.2): a validated view, and encoders.
//!
//! [`Properties::decode`] reads the length and checks every property once: known id, allowed
//! in this packet, not duplicated (User Property and, from a server, Subscription Identifier
//! may repeat), value in range. Iterating afterwards cannot fail. Each item also carries its
//! raw encoded bytes, so a property can be forwarded by copying them.

use super::{put_u16, put_varint, varint_len, DecodeError, Reader};

pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where a property list appears: decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    Will,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
    /// What an upstream broker sends a bridge: CONNACK, and SUBACK/UNSUBACK.
    ConnAck,
    SubAck,
}

impl Context {
    fn allows(self, pid: u8) -> bool {
        use id::*;
        match self {
            Context::Connect => matches!(
                pid,
                SESSION_EXPIRY_INTERVAL
                    | AUTHENTICATION_METHOD
                    | AUTHENTICATION_DATA
                    | REQUEST_PROBLEM_INFORMATION
                    | REQUEST_RESPONSE_INFORMATION
                    | RECEIVE_MAXIMUM
                    | TOPIC_ALIAS_MAXIMUM
                    | USER_PROPERTY
                    | MAXIMUM_PACKET_SIZE
            ),
            Context::Will => matches!(
                pid,
                PAYLOAD_FORMAT_INDICATOR
                    | MESSAGE_EXPIRY_INTERVAL
                    | CONTENT_TYPE
                    | RESPONSE_TOPIC
                    | CORRELATION_DATA
                    | WILL_DELAY_INTERVAL
                    | USER_PROPERTY
            ),
            // A client never sends a Subscription Identifier in PUBLISH (spec 3.3.4).
            Context::Publish => matches!(
                pid,
                PAYLOAD_FORMAT_INDICATOR
                    | MESSAGE_EXPIRY_INTERVAL
                    | CONTENT_TYPE
                    | RESPONSE_TOPIC
                    | CORRELATION_DATA
                    | TOPIC_ALIAS
                    | USER_PROPERTY
            ),
            Context::Ack | Context::Unsubscribe => matches!(pid, REASON_STRING | USER_PROPERTY),
            Context::Subscribe => matches!(pid, SUBSCRIPTION_IDENTIFIER | USER_PROPERTY),
            Context::Disconnect => matches!(
                pid,
                SESSION_EXPIRY_INTERVAL | REASON_STRING | USER_PROPERTY | SERVER_REFERENCE
            ),
            Context::Auth => matches!(
                pid,
                AUTHENTICATION_METHOD | AUTHENTICATION_DATA | REASON_STRING | USER_PROPERTY
            ),
            Context::ConnAck => matches!(
                pid,
                SESSION_EXPIRY_INTERVAL
                    | RECEIVE_MAXIMUM
                    | MAXIMUM_QOS
                    | RETAIN_AVAILABLE
                    | MAXIMUM_PACKET_SIZE
                    | ASSIGNED_CLIENT_IDENTIFIER
                    | TOPIC_ALIAS_MAXIMUM
                    | REASON_STRING
                    | USER_PROPERTY
                    | WILDCARD_SUBSCRIPTION_AVAILABLE
                    | SUBSCRIPTION_IDENTIFIER_AVAILABLE
                    | SHARED_SUBSCRIPTION_AVAILABLE
                    | SERVER_KEEP_ALIVE
                    | RESPONSE_INFORMATION
                    | SERVER_REFERENCE
                    | AUTHENTICATION_METHOD
                    | AUTHENTICATION_DATA
            ),
            Context::SubAck => matches!(pid, REASON_STRING | USER_PROPERTY),
        }
    }
}

/// One property with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property<'a> {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    VarInt(u8, u32),
    Str(u8, &'a str),
    Binary(u8, &'a [u8]),
    UserProperty(&'a str, &'a str),
}

impl Property<'_> {
    pub fn id(&self) -> u8 {
        match *self {
            Property::Byte(i, _)
            | Property::U16(i, _)
            | Property::U32(i, _)
            | Property::VarInt(i, _)
            | Property::Str(i, _)
            | Property::Binary(i, _) => i,
            Property::UserProperty(..) => id::USER_PROPERTY,
        }
    }
}

/// A validated property list (a view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Properties<'a> {
    raw: &'a [u8],
}

fn read_one<'a>(r: &mut Reader<'a>) -> Result<Property<'a>, DecodeError> {
    use id::*;
    let pid = r.varint()?;
    let pid = u8::try_from(pid).map_err(|_| DecodeError::malformed("unknown property"))?;
    Ok(match pid {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Property::Byte(pid, r.u8()?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Property::U16(pid, r.u16()?)
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Property::U32(pid, r.u32()?),
        SUBSCRIPTION_IDENTIFIER => Property::VarInt(pid, r.varint()?),
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Property::Str(pid, r.utf8()?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Property::Binary(pid, r.binary()?),
        USER_PROPERTY => Property::UserProperty(r.utf8()?, r.utf8()?),
        _ => return Err(DecodeError::malformed("unknown property")),
    })
}

impl<'a> Properties<'a> {
    /// Read and validate the property list at the reader's position.
    pub fn decode(r: &mut Reader<'a>, ctx: Context) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        let raw = r
            .bytes(len)
            .map_err(|_| DecodeError::malformed("property length beyond the packet"))?;
        let mut seen: u64 = 0;
        let mut pr = Reader::new(raw);
        while !pr.is_empty() {
            let p = read_one(&mut pr)?;
            let pid = p.id();
            if !ctx.allows(pid) {
                return Err(DecodeError::protocol("property not allowed in this packet"));
            }
            let bit = 1u64 << pid;
            if pid != id::USER_PROPERTY && seen & bit != 0 {
                return Err(DecodeError::protocol("duplicate property"));
            }
            seen |= bit;
            let bad = match p {
                Property::Byte(id::PAYLOAD_FORMAT_INDICATOR, v)
                | Property::Byte(id::REQUEST_PROBLEM_INFORMATION, v)
                | Property::Byte(id::REQUEST_RESPONSE_INFORMATION, v) => v > 1,
                Property::U16(id::RECEIVE_MAXIMUM, 0) | Property::U16(id::TOPIC_ALIAS, 0) => true,
                Property::U32(id::MAXIMUM_PACKET_SIZE, 0) => true,
                Property::VarInt(id::SUBSCRIPTION_IDENTIFIER, 0) => true,
                Property::Str(id::RESPONSE_TOPIC, t) => t.is_empty() || t.contains(['+', '#']),
                _ => false,
            };
            if let Property::U16(id::TOPIC_ALIAS, 0) = p {
                // Spec 3.3.2.3.4: Topic Alias invalid.
                return Err(DecodeError {
                    code: 0x94,
                    reason: "topic alias 0",
                });
            }
            if bad {
                return Err(DecodeError::protocol("invalid property value"));
            }
        }
        Ok(Properties { raw })
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Each property with its raw encoded bytes.
    pub fn iter(&self) -> PropertyIter<'a> {
        PropertyIter {
            r: Reader::new(self.raw),
        }
    }

    pub fn u32(&self, pid: u8) -> Option<u32> {
        self.iter().find_map(|(p, _)| match p {
            Property::U32(i, v) if i == pid => Some(v),
            _ => None,
        })
    }

    pub fn u16(&self, pid: u8) -> Option<u16> {
        self.iter().find_map(|(p, _)| match p {
            Property::U16(i, v) if i == pid => Some(v),
            _ => None,
        })
    }

    pub fn byte(&self, pid: u8) -> Option<u8> {
        self.iter().find_map(|(p, _)| match p {
            Property::Byte(i, v) if i == pid => Some(v),
            _ => None,
        })
    }

    pub fn str(&self, pid: u8) -> Option<&'a str> {
        self.iter().find_map(|(p, _)| match p {
            Property::Str(i, v) if i == pid => Some(v),
            _ => None,
        })
    }

    pub fn binary(&self, pid: u8) -> Option<&'a [u8]> {
        self.iter().find_map(|(p, _)| match p {
            Property::Binary(i, v) if i == pid => Some(v),
            _ => None,
        })
    }

    pub fn varint(&self, pid: u8) -> Option<u32> {
        self.iter().find_map(|(p, _)| match p {
            Property::VarInt(i, v) if i == pid => Some(v),
            _ => None,
        })
    }
}

#[derive(Clone)]
pub struct PropertyIter<'a> {
    r: Reader<'a>,
}

impl<'a> Iterator for PropertyIter<'a> {
    type Item = (Property<'a>, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let before = self.r.clone();
        let p = read_one(&mut self.r).ok()?;
        let used = before.remaining() - self.r.remaining();
        let mut b = before;
        let raw = b.bytes(used).ok()?;
        Some((p, raw))
    }
}

/// Appends properties to a buffer; [`PropBuf::finish`] writes the length then the list.
#[derive(Default)]
pub struct PropBuf {
    pub buf: Vec<u8>,
}

impl PropBuf {
    pub fn clear(&mut self) {
        self.buf.clear();
    }
    pub fn byte(&mut self, pid: u8, v: u8) -> &mut Self {
        self.buf.extend_from_slice(&[pid, v]);
        self
    }
    pub fn u16(&mut self, pid: u8, v: u16) -> &mut Self {
        self.buf.push(pid);
        put_u16(&mut self.buf, v);
        self
    }
    pub fn u32(&mut self, pid: u8, v: u32) -> &mut Self {
        self.buf.push(pid);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn varint(&mut self, pid: u8, v: u32) -> &mut Self {
        self.buf.push(pid);
        put_varint(&mut self.buf, v as usize);
        self
    }
    pub fn str(&mut self, pid: u8, v: &str) -> &mut Self {
        self.buf.push(pid);
        super::put_str(&mut self.buf, v.as_bytes());
        self
    }
    /// Bytes the length and list take in a packet.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.buf.len()) + self.buf.len()
    }
    pub fn finish(&self, out: &mut Vec<u8>) {
        put_varint(out, self.buf.len());
        out.extend_from_slice(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], ctx: Context) -> Result<Vec<Property<'_>>, DecodeError> {
        let mut r = Reader::new(bytes);
        let p = Properties::decode(&mut r, ctx)?;
        Ok(p.iter().map(|(p, _)| p).collect())
    }

    #[test]
    fn valid_list_and_raw_bytes() {
        let mut b = PropBuf::default();
        b.u32(id::MESSAGE_EXPIRY_INTERVAL, 10)
            .str(id::CONTENT_TYPE, "text/plain");
        b.buf
            .extend_from_slice(&[0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1, b'w']);
        let mut v = Vec::new();
        b.finish(&mut v);
        let got = decode(&v, Context::Publish).unwrap();
        assert_eq!(
            got,
            vec![
                Property::U32(id::MESSAGE_EXPIRY_INTERVAL, 10),
                Property::Str(id::CONTENT_TYPE, "text/plain"),
                Property::UserProperty("k", "v"),
                Property::UserProperty("k", "w"),
            ]
        );
        let mut r = Reader::new(&v);
        let p = Properties::decode(&mut r, Context::Publish).unwrap();
        let raws: Vec<&[u8]> = p.iter().map(|(_, raw)| raw).collect();
        assert_eq!(raws[0], &[0x02, 0, 0, 0, 10]);
        assert_eq!(p.u32(id::MESSAGE_EXPIRY_INTERVAL), Some(10));
    }

    #[test]
    fn invalid_lists() {
        // Duplicate, not allowed here, bad values, unknown id, length past the end.
        assert_eq!(
            decode(&[10, 2, 0, 0, 0, 1, 2, 0, 0, 0, 2], Context::Publish)
                .unwrap_err()
                .code,
            0x82
        );
        assert_eq!(
            decode(&[5, 0x11, 0, 0, 0, 1], Context::Publish)
                .unwrap_err()
                .code,
            0x82
        );
        assert_eq!(
            decode(&[2, 0x0B, 1], Context::Publish).unwrap_err().code,
            0x82
        );
        assert_eq!(
            decode(&[3, 0x21, 0, 0], Context::Connect).unwrap_err().code,
            0x82
        );
        assert_eq!(
            decode(&[3, 0x23, 0, 0], Context::Publish).unwrap_err().code,
            0x94
        );
        assert_eq!(
            decode(&[2, 0x01, 2], Context::Publish).unwrap_err().code,
            0x82
        );
        assert_eq!(
            decode(&[2, 0x0B, 0], Context::Subscribe).unwrap_err().code,
            0x82
        );
        assert_eq!(
            decode(&[2, 0x7f, 0], Context::Publish).unwrap_err().code,
            0x81
        );
        assert_eq!(
            decode(&[9, 0x01, 0], Context::Publish).unwrap_err().code,
            0x81
        );
        assert_eq!(
            decode(&[3, 0x02, 0, 0], Context::Publish).unwrap_err().code,
            0x81
        );
        assert!(decode(&[0], Context::Ack).unwrap().is_empty());
    }
}
