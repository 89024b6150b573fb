//! MQTT 3.1, 3.1.1 codec: borrowed views for decoding, encoders that append to caller buffers.
//!
//! Panic guarantee: no function in this module panics on any input. Decoding works on a
//! borrowed `&[u8]` through [`Reader`], whose every accessor checks bounds and returns
//! [`DecodeError`] instead; nothing is indexed without a check, and nothing is allocated.
//! Decoded packets are views (`&'a str`, `&'a [u8]`) into the caller's buffer, so they live
//! no longer than it. Encoders append to a `Vec<u8>` that the caller owns and reuses; they
//! only allocate when that buffer grows past its capacity.
//!
//! Framing is two-phase (as in mini-redis): [`frame_len`] answers "is a whole packet
//! buffered, and how long is it?" from the fixed header alone, so an oversized packet is
//! refused before its body is read; then [`Packet::decode`] parses that one packet.

pub mod client;
mod connect;
pub mod properties;
mod publish;
#[cfg(test)]
mod roundtrip;
mod subscribe;

pub use connect::{encode_connack_v5, ConnAck, Connect, Will};
pub use properties::{PropBuf, Properties, Property};
pub use publish::{
    encode_publish_header, encode_publish_header_split, encode_publish_header_v5, publish_len,
    Publish,
};
pub use subscribe::{SubAck, SubOptions, Subscribe, TopicFilters, Unsubscribe};

/// Packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Protocol levels this codec speaks.
pub const LEVEL_31: u8 = 3;
pub const LEVEL_311: u8 = 4;
pub const LEVEL_5: u8 = 5;

/// The largest value the Remaining Length varint can hold (spec 2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why a packet could not be decoded. The code is the MQTT 5 reason code that a v5 peer would
/// be sent (0x81 malformed, 0x82 protocol error, 0x95 packet too large); for 3.1.1 every error
/// closes the connection and the text is what the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    pub code: u8,
    pub reason: &'static str,
}

impl DecodeError {
    pub const fn malformed(reason: &'static str) -> Self {
        DecodeError { code: 0x81, reason }
    }
    pub const fn protocol(reason: &'static str) -> Self {
        DecodeError { code: 0x82, reason }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason)
    }
}

/// A whole packet's position in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Bytes of the fixed header (1 + 1..=4).
    pub header_len: usize,
    /// Bytes of the whole packet.
    pub total_len: usize,
}

/// Phase one of framing: is a whole packet at the start of `buf`?
///
/// `Ok(None)` means more bytes are needed. A Remaining Length over `max_packet` (the whole
/// packet size, as MQTT 5's Maximum Packet Size counts it) is an error as soon as the fixed
/// header is readable, so no memory is spent buffering the body of an oversized packet.
pub fn frame_len(buf: &[u8], max_packet: usize) -> Result<Option<Frame>, DecodeError> {
    let mut value: usize = 0;
    let mut shift = 0;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            // A varint must use the fewest bytes (spec 1.5.5); "0x80 0x00" is malformed.
            if i > 1 && b == 0 {
                return Err(DecodeError::malformed(
                    "remaining length is not minimally encoded",
                ));
            }
            let header_len = i + 1;
            let total_len = header_len + value;
            if total_len > max_packet {
                return Err(DecodeError {
                    code: 0x95,
                    reason: "packet larger than the maximum packet size",
                });
            }
            return Ok(Some(Frame {
                header_len,
                total_len,
            }));
        }
        shift += 7;
    }
    Err(DecodeError::malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// A bounds-checked cursor over a packet body. Every read returns an error past the end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::malformed("packet ends early"))?;
        self.pos += 1;
        Ok(b)
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A Variable Byte Integer (spec 1.5.5): at most 4 bytes, minimally encoded.
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError::malformed(
                        "variable byte integer is not minimally encoded",
                    ));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let hi = self.u8()?;
        let lo = self.u8()?;
        Ok(u16::from_be_bytes([hi, lo]))
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::malformed("packet ends early"))?;
        self.pos = end;
        Ok(s)
    }
    /// A length-prefixed byte string (spec 1.5.6).
    pub fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    /// A length-prefixed UTF-8 string (spec 1.5.4): valid UTF-8 and no U+0000.
    pub fn utf8(&mut self) -> Result<&'a str, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| DecodeError::malformed("string is not valid UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::malformed("string contains U+0000"));
        }
        Ok(s)
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        s
    }
}

/// A decoded packet: a view into the buffer it was decoded from.
#[derive(Debug, Clone)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    Publish(Publish<'a>),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe<'a>),
    Unsubscribe(Unsubscribe<'a>),
    PingReq,
    Disconnect(Disconnect<'a>),
    Auth(Auth<'a>),
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: the packet identifier and (MQTT 5) the reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: u8,
}

/// DISCONNECT: MQTT 5 carries a reason code and properties (Session Expiry Interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Disconnect<'a> {
    pub reason: u8,
    pub properties: Properties<'a>,
}

/// AUTH (MQTT 5 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    pub reason: u8,
    pub properties: Properties<'a>,
}

impl<'a> Packet<'a> {
    /// Phase two of framing: decode the one whole packet in `frame` (fixed header included),
    /// as found by [`frame_len`], for a connection speaking protocol `level` (0 before its
    /// CONNECT). Packets that only a server sends (CONNACK, SUBACK, ...) are protocol errors
    /// when they arrive at the broker.
    pub fn decode(
        frame: &'a [u8],
        header_len: usize,
        level: u8,
    ) -> Result<Packet<'a>, DecodeError> {
        let first = *frame
            .first()
            .ok_or(DecodeError::malformed("empty packet"))?;
        let body = frame
            .get(header_len..)
            .ok_or(DecodeError::malformed("packet ends early"))?;
        let flags = first & 0x0f;
        let packet_type = first >> 4;
        let v5 = level == LEVEL_5;
        // Fixed-header flags are fixed for every packet but PUBLISH (spec 2.2.2).
        let expected_flags = match packet_type {
            kind::PUBLISH => flags,
            kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
            _ => 0,
        };
        if flags != expected_flags {
            return Err(DecodeError::malformed(
                "reserved fixed-header flags are wrong",
            ));
        }
        match packet_type {
            kind::CONNECT => Connect::decode(body).map(Packet::Connect),
            kind::PUBLISH => Publish::decode(flags, body, v5).map(Packet::Publish),
            kind::PUBACK => ack(body, v5).map(Packet::PubAck),
            kind::PUBREC => ack(body, v5).map(Packet::PubRec),
            kind::PUBREL => ack(body, v5).map(Packet::PubRel),
            kind::PUBCOMP => ack(body, v5).map(Packet::PubComp),
            kind::SUBSCRIBE => Subscribe::decode(body, v5).map(Packet::Subscribe),
            kind::UNSUBSCRIBE => Unsubscribe::decode(body, v5).map(Packet::Unsubscribe),
            kind::PINGREQ if body.is_empty() => Ok(Packet::PingReq),
            kind::PINGREQ => Err(DecodeError::malformed("packet has an unexpected body")),
            kind::DISCONNECT => {
                let (reason, properties) =
                    reason_and_properties(body, v5, properties::Context::Disconnect)?;
                Ok(Packet::Disconnect(Disconnect { reason, properties }))
            }
            kind::AUTH if v5 => {
                let (reason, properties) =
                    reason_and_properties(body, v5, properties::Context::Auth)?;
                Ok(Packet::Auth(Auth { reason, properties }))
            }
            0 | 15 => Err(DecodeError::malformed("reserved packet type")),
            _ => Err(DecodeError::protocol("packet type only a server may send")),
        }
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier, and in MQTT 5 an optional reason
/// code and properties (spec 3.4.2.1: both may be omitted when the code is 0).
fn ack(body: &[u8], v5: bool) -> Result<Ack, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.u16()?;
    if packet_id == 0 {
        return Err(DecodeError::protocol("packet identifier 0"));
    }
    let mut reason = 0;
    if v5 && !r.is_empty() {
        reason = r.u8()?;
        if !r.is_empty() {
            Properties::decode(&mut r, properties::Context::Ack)?;
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::malformed("acknowledgement has trailing bytes"));
    }
    Ok(Ack { packet_id, reason })
}

/// DISCONNECT and AUTH bodies: empty in 3.1.x; in MQTT 5 an optional reason code, then
/// optional properties.
fn reason_and_properties(
    body: &[u8],
    v5: bool,
    ctx: properties::Context,
) -> Result<(u8, Properties<'_>), DecodeError> {
    if !v5 {
        return match body.is_empty() {
            true => Ok((0, Properties::default())),
            false => Err(DecodeError::malformed("packet has an unexpected body")),
        };
    }
    let mut r = Reader::new(body);
    let reason = if r.is_empty() { 0 } else { r.u8()? };
    let props = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(&mut r, ctx)?
    };
    if !r.is_empty() {
        return Err(DecodeError::malformed("trailing bytes after properties"));
    }
    Ok((reason, props))
}

/// Append a Remaining Length varint.
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Bytes a Remaining Length varint takes.
pub fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u16(out, s.len() as u16);
    out.extend_from_slice(s);
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP with a packet identifier.
pub fn encode_ack(out: &mut Vec<u8>, packet_type: u8, id: u16) {
    let flags = if packet_type == kind::PUBREL {
        0b0010
    } else {
        0
    };
    out.push(packet_type << 4 | flags);
    out.push(2);
    put_u16(out, id);
}

pub fn encode_pingresp(out: &mut Vec<u8>) {
    out.extend_from_slice(&[kind::PINGRESP << 4, 0]);
}

pub fn encode_unsuback(out: &mut Vec<u8>, id: u16) {
    encode_ack(out, kind::UNSUBACK, id);
}

/// An MQTT 5 PUBACK/PUBREC/PUBREL/PUBCOMP with a reason code and an optional Reason String.
/// With code 0 and no string it is the short form (spec 3.4.2.1).
pub fn encode_ack_v5(
    out: &mut Vec<u8>,
    packet_type: u8,
    id: u16,
    reason: u8,
    reason_string: Option<&str>,
) {
    let flags = if packet_type == kind::PUBREL {
        0b0010
    } else {
        0
    };
    out.push(packet_type << 4 | flags);
    match reason_string {
        None if reason == 0 => {
            out.push(2);
            put_u16(out, id);
        }
        None => {
            out.push(3);
            put_u16(out, id);
            out.push(reason);
        }
        Some(s) => {
            let props = 3 + s.len();
            put_varint(out, 3 + varint_len(props) + props);
            put_u16(out, id);
            out.push(reason);
            put_varint(out, props);
            out.push(properties::id::REASON_STRING);
            put_str(out, s.as_bytes());
        }
    }
}

/// An MQTT 5 DISCONNECT from the server with a reason code and an optional Reason String.
pub fn encode_disconnect_v5(out: &mut Vec<u8>, reason: u8, reason_string: Option<&str>) {
    out.push(kind::DISCONNECT << 4);
    match reason_string {
        None => {
            out.push(1);
            out.push(reason);
        }
        Some(s) => {
            let props = 3 + s.len();
            put_varint(out, 1 + varint_len(props) + props);
            out.push(reason);
            put_varint(out, props);
            out.push(properties::id::REASON_STRING);
            put_str(out, s.as_bytes());
        }
    }
}

/// An MQTT 5 AUTH with a reason code and no properties.
pub fn encode_auth_v5(out: &mut Vec<u8>, reason: u8) {
    out.extend_from_slice(&[kind::AUTH << 4, 2, reason, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_needs_whole_header() {
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x80], 1 << 20), Ok(None));
        assert_eq!(
            frame_len(&[0x30, 0x05], 100),
            Ok(Some(Frame {
                header_len: 2,
                total_len: 7
            }))
        );
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f], usize::MAX),
            Ok(Some(Frame {
                header_len: 5,
                total_len: 5 + MAX_REMAINING_LENGTH
            }))
        );
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX).is_err());
        assert_eq!(frame_len(&[0x30, 0x80, 0x00], 100).unwrap_err().code, 0x81);
        assert_eq!(frame_len(&[0x30, 0x80, 0x01], 100).unwrap_err().code, 0x95);
    }

    #[test]
    fn varint_roundtrip() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut v = vec![0x30];
            put_varint(&mut v, n);
            assert_eq!(v.len() - 1, varint_len(n));
            let f = frame_len(&v, usize::MAX).unwrap().unwrap();
            assert_eq!(f.total_len - f.header_len, n);
        }
    }

    #[test]
    fn reader_never_panics_past_end() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(r.utf8().is_err());
        let mut r = Reader::new(&[]);
        assert!(r.u16().is_err());
        assert!(r.bytes(usize::MAX).is_err());
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn wrong_fixed_flags_rejected() {
        // PINGREQ with a flag bit set.
        assert!(Packet::decode(&[0xc1, 0], 2, 4).is_err());
        // SUBSCRIBE without the 0b0010 flags.
        assert!(Packet::decode(&[0x80, 0], 2, 4).is_err());
        // CONNACK is only sent by servers.
        assert_eq!(
            Packet::decode(&[0x20, 2, 0, 0], 2, 4).unwrap_err().code,
            0x82
        );
        // AUTH and a DISCONNECT body exist only in MQTT 5.
        assert!(Packet::decode(&[0xf0, 0], 2, 4).is_err());
        assert!(matches!(
            Packet::decode(&[0xf0, 0], 2, 5),
            Ok(Packet::Auth(_))
        ));
        assert!(Packet::decode(&[0xe0, 1, 0x04], 2, 4).is_err());
        let Ok(Packet::Disconnect(d)) = Packet::decode(&[0xe0, 1, 0x04], 2, 5) else {
            panic!()
        };
        assert_eq!(d.reason, 4);
    }

    #[test]
    fn v5_acks() {
        let Ok(Packet::PubAck(a)) = Packet::decode(&[0x40, 3, 0, 7, 0x10], 2, 5) else {
            panic!()
        };
        assert_eq!(
            a,
            Ack {
                packet_id: 7,
                reason: 0x10
            }
        );
        assert!(Packet::decode(&[0x40, 3, 0, 7, 0x10], 2, 4).is_err());
        let mut v = Vec::new();
        encode_ack_v5(&mut v, kind::PUBACK, 9, 0x99, Some("bad"));
        let f = frame_len(&v, 100).unwrap().unwrap();
        let Ok(Packet::PubAck(a)) = Packet::decode(&v, f.header_len, 5) else {
            panic!()
        };
        assert_eq!(
            a,
            Ack {
                packet_id: 9,
                reason: 0x99
            }
        );
    }
}
