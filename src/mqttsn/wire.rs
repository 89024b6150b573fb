//! The MQTT-SN 1.2 datagram codec: every message of the specification, Forwarder
//! Encapsulation (spec 5.5) included.
//!
//! Panic guarantee: no function in this module panics on any input. [`decode`] reads a
//! borrowed datagram through bounds-checked accessors and returns [`DecodeError`] for anything
//! short, long, of an unknown type or with a length field that disagrees with the datagram;
//! decoded messages are views (`&'a [u8]`) into the datagram, so nothing is allocated.
//! Encoders append one whole message to a caller's `Vec<u8>` (cleared by the caller and reused,
//! so they allocate only while it grows), choosing the 1-byte length form below 256 bytes and
//! the 3-byte form (`0x01` and a 2-byte length) from there on.

/// Message types (spec 5.2.2).
pub mod kind {
    pub const ADVERTISE: u8 = 0x00;
    pub const SEARCHGW: u8 = 0x01;
    pub const GWINFO: u8 = 0x02;
    pub const CONNECT: u8 = 0x04;
    pub const CONNACK: u8 = 0x05;
    pub const WILLTOPICREQ: u8 = 0x06;
    pub const WILLTOPIC: u8 = 0x07;
    pub const WILLMSGREQ: u8 = 0x08;
    pub const WILLMSG: u8 = 0x09;
    pub const REGISTER: u8 = 0x0A;
    pub const REGACK: u8 = 0x0B;
    pub const PUBLISH: u8 = 0x0C;
    pub const PUBACK: u8 = 0x0D;
    pub const PUBCOMP: u8 = 0x0E;
    pub const PUBREC: u8 = 0x0F;
    pub const PUBREL: u8 = 0x10;
    pub const SUBSCRIBE: u8 = 0x12;
    pub const SUBACK: u8 = 0x13;
    pub const UNSUBSCRIBE: u8 = 0x14;
    pub const UNSUBACK: u8 = 0x15;
    pub const PINGREQ: u8 = 0x16;
    pub const PINGRESP: u8 = 0x17;
    pub const DISCONNECT: u8 = 0x18;
    pub const WILLTOPICUPD: u8 = 0x1A;
    pub const WILLTOPICRESP: u8 = 0x1B;
    pub const WILLMSGUPD: u8 = 0x1C;
    pub const WILLMSGRESP: u8 = 0x1D;
    pub const ENCAPSULATED: u8 = 0xFE;
}

/// Return codes (spec 5.3.10).
pub mod rc {
    pub const ACCEPTED: u8 = 0x00;
    pub const CONGESTION: u8 = 0x01;
    pub const INVALID_TOPIC_ID: u8 = 0x02;
    pub const NOT_SUPPORTED: u8 = 0x03;
}

/// The protocol id of CONNECT (spec 5.3.8).
pub const PROTOCOL_ID: u8 = 0x01;

/// The largest MQTT-SN message: the 3-byte length form's 16-bit length.
pub const MAX_MESSAGE: usize = 65535;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The Flags byte (spec 5.3.4): DUP, QoS, Retain, Will, CleanSession, TopicIdType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

/// TopicIdType values (the two low bits of Flags).
pub mod topic_type {
    pub const NORMAL: u8 = 0b00;
    pub const PREDEFINED: u8 = 0b01;
    pub const SHORT: u8 = 0b10;
}

impl Flags {
    pub fn dup(self) -> bool {
        self.0 & 0x80 != 0
    }
    /// QoS 0, 1, 2, or -1 (the bits `11`: publish without a connection).
    pub fn qos(self) -> i8 {
        match (self.0 >> 5) & 0b11 {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => -1,
        }
    }
    pub fn retain(self) -> bool {
        self.0 & 0x10 != 0
    }
    pub fn will(self) -> bool {
        self.0 & 0x08 != 0
    }
    pub fn clean_session(self) -> bool {
        self.0 & 0x04 != 0
    }
    pub fn topic_type(self) -> u8 {
        self.0 & 0b11
    }
    /// Flags for a message the gateway sends: QoS 0..=2 (or -1), retain, DUP, topic id type.
    pub fn new(qos: i8, retain: bool, dup: bool, topic_type: u8) -> Flags {
        let q = match qos {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 3,
        };
        Flags((dup as u8) << 7 | q << 5 | (retain as u8) << 4 | (topic_type & 0b11))
    }
}

/// The topic a SUBSCRIBE or UNSUBSCRIBE names, by its TopicIdType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef<'a> {
    /// A topic name or filter (wildcards allowed).
    Name(&'a [u8]),
    /// A predefined topic id.
    Predefined(u16),
    /// A two-character short topic name.
    Short([u8; 2]),
}

/// One decoded MQTT-SN message: a view into its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    GwInfo {
        gw_id: u8,
        /// Present when a client answers for a gateway it knows.
        address: &'a [u8],
    },
    Connect {
        flags: Flags,
        protocol_id: u8,
        duration: u16,
        client_id: &'a [u8],
    },
    ConnAck {
        rc: u8,
    },
    WillTopicReq,
    /// An empty WILLTOPIC (no flags, no topic) deletes the will.
    WillTopic {
        flags: Flags,
        topic: &'a [u8],
    },
    WillMsgReq,
    WillMsg {
        msg: &'a [u8],
    },
    Register {
        topic_id: u16,
        msg_id: u16,
        topic: &'a [u8],
    },
    RegAck {
        topic_id: u16,
        msg_id: u16,
        rc: u8,
    },
    Publish {
        flags: Flags,
        /// A topic id, a predefined id, or a short name's two bytes (by `flags.topic_type()`).
        topic_id: u16,
        msg_id: u16,
        data: &'a [u8],
    },
    PubAck {
        topic_id: u16,
        msg_id: u16,
        rc: u8,
    },
    PubComp {
        msg_id: u16,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    Subscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef<'a>,
    },
    SubAck {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        rc: u8,
    },
    Unsubscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef<'a>,
    },
    UnsubAck {
        msg_id: u16,
    },
    /// A client id is present when a sleeping client wakes to fetch its messages.
    PingReq {
        client_id: &'a [u8],
    },
    PingResp,
    /// A duration sends the client to sleep (spec 6.14).
    Disconnect {
        duration: Option<u16>,
    },
    WillTopicUpd {
        flags: Flags,
        topic: &'a [u8],
    },
    WillTopicResp {
        rc: u8,
    },
    WillMsgUpd {
        msg: &'a [u8],
    },
    WillMsgResp {
        rc: u8,
    },
}

/// Forwarder Encapsulation (spec 5.5): a radio forwarder's header in front of a client's
/// message. The client is the pair (forwarder's address, `node_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulation<'a> {
    /// Ctrl: the broadcast radius in its two low bits.
    pub ctrl: u8,
    pub node_id: &'a [u8],
}

/// A datagram: an optional forwarder header and the one message it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub encapsulation: Option<Encapsulation<'a>>,
    pub message: Message<'a>,
}

/// Bounds-checked reading of a message body.
struct Body<'a> {
    buf: &'a [u8],
}

impl<'a> Body<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(DecodeError("message ends early"))?;
        self.buf = rest;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn end(&self) -> Result<(), DecodeError> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => Err(DecodeError("message longer than its type allows")),
        }
    }
}

/// Split one message's header: (its type, its body, the bytes after it).
fn header(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), DecodeError> {
    let (len, hdr) = match buf {
        [0x01, hi, lo, ..] => ((usize::from(*hi) << 8) | usize::from(*lo), 3),
        [0x01, ..] => return Err(DecodeError("length cut short")),
        [0x00, ..] => return Err(DecodeError("length 0")),
        [n, ..] => (usize::from(*n), 1),
        [] => return Err(DecodeError("empty datagram")),
    };
    if len < hdr + 1 {
        return Err(DecodeError("length shorter than its header"));
    }
    if len > buf.len() {
        return Err(DecodeError("length beyond the datagram"));
    }
    let kind = buf[hdr];
    Ok((kind, &buf[hdr + 1..len], &buf[len..]))
}

/// Decode a whole datagram: one message, possibly behind a forwarder's encapsulation. The
/// message's length must be the datagram's (what is left after the encapsulation).
pub fn decode(datagram: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let (kind, body, rest) = header(datagram)?;
    if kind != kind::ENCAPSULATED {
        if !rest.is_empty() {
            return Err(DecodeError("bytes after the message"));
        }
        return Ok(Datagram {
            encapsulation: None,
            message: decode_message(kind, body)?,
        });
    }
    // The encapsulation's Length covers its own header only; the message follows.
    let (&ctrl, node_id) = body
        .split_first()
        .ok_or(DecodeError("encapsulation without Ctrl"))?;
    let (inner_kind, inner_body, after) = header(rest)?;
    if inner_kind == kind::ENCAPSULATED {
        return Err(DecodeError("encapsulation inside an encapsulation"));
    }
    if !after.is_empty() {
        return Err(DecodeError("bytes after the message"));
    }
    Ok(Datagram {
        encapsulation: Some(Encapsulation { ctrl, node_id }),
        message: decode_message(inner_kind, inner_body)?,
    })
}

fn topic_ref<'a>(flags: Flags, b: &mut Body<'a>) -> Result<TopicRef<'a>, DecodeError> {
    match flags.topic_type() {
        topic_type::NORMAL => {
            let name = b.rest();
            if name.is_empty() {
                return Err(DecodeError("empty topic name"));
            }
            Ok(TopicRef::Name(name))
        }
        topic_type::PREDEFINED => {
            let id = b.u16()?;
            b.end()?;
            Ok(TopicRef::Predefined(id))
        }
        topic_type::SHORT => {
            let name = [b.u8()?, b.u8()?];
            b.end()?;
            Ok(TopicRef::Short(name))
        }
        _ => Err(DecodeError("reserved topic id type")),
    }
}

fn decode_message(kind: u8, body: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut b = Body { buf: body };
    let m = match kind {
        kind::ADVERTISE => Message::Advertise {
            gw_id: b.u8()?,
            duration: b.u16()?,
        },
        kind::SEARCHGW => Message::SearchGw { radius: b.u8()? },
        kind::GWINFO => Message::GwInfo {
            gw_id: b.u8()?,
            address: b.rest(),
        },
        kind::CONNECT => Message::Connect {
            flags: Flags(b.u8()?),
            protocol_id: b.u8()?,
            duration: b.u16()?,
            client_id: b.rest(),
        },
        kind::CONNACK => Message::ConnAck { rc: b.u8()? },
        kind::WILLTOPICREQ => Message::WillTopicReq,
        kind::WILLTOPIC | kind::WILLTOPICUPD => {
            // Empty: the will is deleted (spec 5.4.7, 5.4.22).
            let (flags, topic) = match b.buf.is_empty() {
                true => (Flags(0), &[][..]),
                false => (Flags(b.u8()?), b.rest()),
            };
            match kind {
                kind::WILLTOPIC => Message::WillTopic { flags, topic },
                _ => Message::WillTopicUpd { flags, topic },
            }
        }
        kind::WILLMSGREQ => Message::WillMsgReq,
        kind::WILLMSG => Message::WillMsg { msg: b.rest() },
        kind::WILLMSGUPD => Message::WillMsgUpd { msg: b.rest() },
        kind::REGISTER => Message::Register {
            topic_id: b.u16()?,
            msg_id: b.u16()?,
            topic: b.rest(),
        },
        kind::REGACK => Message::RegAck {
            topic_id: b.u16()?,
            msg_id: b.u16()?,
            rc: b.u8()?,
        },
        kind::PUBLISH => Message::Publish {
            flags: Flags(b.u8()?),
            topic_id: b.u16()?,
            msg_id: b.u16()?,
            data: b.rest(),
        },
        kind::PUBACK => Message::PubAck {
            topic_id: b.u16()?,
            msg_id: b.u16()?,
            rc: b.u8()?,
        },
        kind::PUBCOMP => Message::PubComp { msg_id: b.u16()? },
        kind::PUBREC => Message::PubRec { msg_id: b.u16()? },
        kind::PUBREL => Message::PubRel { msg_id: b.u16()? },
        kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
            let flags = Flags(b.u8()?);
            let msg_id = b.u16()?;
            let topic = topic_ref(flags, &mut b)?;
            match kind {
                kind::SUBSCRIBE => Message::Subscribe {
                    flags,
                    msg_id,
                    topic,
                },
                _ => Message::Unsubscribe {
                    flags,
                    msg_id,
                    topic,
                },
            }
        }
        kind::SUBACK => Message::SubAck {
            flags: Flags(b.u8()?),
            topic_id: b.u16()?,
            msg_id: b.u16()?,
            rc: b.u8()?,
        },
        kind::UNSUBACK => Message::UnsubAck { msg_id: b.u16()? },
        kind::PINGREQ => Message::PingReq {
            client_id: b.rest(),
        },
        kind::PINGRESP => Message::PingResp,
        kind::DISCONNECT => Message::Disconnect {
            duration: match b.buf.is_empty() {
                true => None,
                false => Some(b.u16()?),
            },
        },
        kind::WILLTOPICRESP => Message::WillTopicResp { rc: b.u8()? },
        kind::WILLMSGRESP => Message::WillMsgResp { rc: b.u8()? },
        _ => return Err(DecodeError("unknown message type")),
    };
    b.end()?;
    Ok(m)
}

/// Append one message with its length header: `body` writes the bytes after the type.
fn emit(out: &mut Vec<u8>, kind: u8, body_len: usize, body: impl FnOnce(&mut Vec<u8>)) {
    let short = body_len + 2;
    if short < 256 {
        out.push(short as u8);
    } else {
        let long = (body_len + 4).min(MAX_MESSAGE);
        out.push(0x01);
        out.extend_from_slice(&(long as u16).to_be_bytes());
    }
    out.push(kind);
    body(out);
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

impl Message<'_> {
    /// Bytes this message takes on the wire (its length field's value).
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        if body + 2 < 256 {
            body + 2
        } else {
            body + 4
        }
    }

    fn body_len(&self) -> usize {
        let topic_len = |t: &TopicRef<'_>| match t {
            TopicRef::Name(n) => n.len(),
            _ => 2,
        };
        match self {
            Message::Advertise { .. } => 3,
            Message::SearchGw { .. } => 1,
            Message::GwInfo { address, .. } => 1 + address.len(),
            Message::Connect { client_id, .. } => 4 + client_id.len(),
            Message::ConnAck { .. } => 1,
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => 0,
            Message::WillTopic { flags, topic } | Message::WillTopicUpd { flags, topic } => {
                match (flags.0, topic.len()) {
                    (0, 0) => 0,
                    (_, n) => 1 + n,
                }
            }
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => msg.len(),
            Message::Register { topic, .. } => 4 + topic.len(),
            Message::RegAck { .. } | Message::PubAck { .. } => 5,
            Message::Publish { data, .. } => 5 + data.len(),
            Message::PubComp { .. }
            | Message::PubRec { .. }
            | Message::PubRel { .. }
            | Message::UnsubAck { .. } => 2,
            Message::Subscribe { topic, .. } | Message::Unsubscribe { topic, .. } => {
                3 + topic_len(topic)
            }
            Message::SubAck { .. } => 6,
            Message::PingReq { client_id } => client_id.len(),
            Message::Disconnect { duration } => duration.map_or(0, |_| 2),
            Message::WillTopicResp { .. } | Message::WillMsgResp { .. } => 1,
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Message::Advertise { .. } => kind::ADVERTISE,
            Message::SearchGw { .. } => kind::SEARCHGW,
            Message::GwInfo { .. } => kind::GWINFO,
            Message::Connect { .. } => kind::CONNECT,
            Message::ConnAck { .. } => kind::CONNACK,
            Message::WillTopicReq => kind::WILLTOPICREQ,
            Message::WillTopic { .. } => kind::WILLTOPIC,
            Message::WillMsgReq => kind::WILLMSGREQ,
            Message::WillMsg { .. } => kind::WILLMSG,
            Message::Register { .. } => kind::REGISTER,
            Message::RegAck { .. } => kind::REGACK,
            Message::Publish { .. } => kind::PUBLISH,
            Message::PubAck { .. } => kind::PUBACK,
            Message::PubComp { .. } => kind::PUBCOMP,
            Message::PubRec { .. } => kind::PUBREC,
            Message::PubRel { .. } => kind::PUBREL,
            Message::Subscribe { .. } => kind::SUBSCRIBE,
            Message::SubAck { .. } => kind::SUBACK,
            Message::Unsubscribe { .. } => kind::UNSUBSCRIBE,
            Message::UnsubAck { .. } => kind::UNSUBACK,
            Message::PingReq { .. } => kind::PINGREQ,
            Message::PingResp => kind::PINGRESP,
            Message::Disconnect { .. } => kind::DISCONNECT,
            Message::WillTopicUpd { .. } => kind::WILLTOPICUPD,
            Message::WillTopicResp { .. } => kind::WILLTOPICRESP,
            Message::WillMsgUpd { .. } => kind::WILLMSGUPD,
            Message::WillMsgResp { .. } => kind::WILLMSGRESP,
        }
    }

    /// Append this message to `out`. A message whose body does not fit the 16-bit length
    /// (over 65531 bytes) is the caller's to refuse first: its length field would lie.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let topic = |out: &mut Vec<u8>, t: &TopicRef<'_>| match t {
            TopicRef::Name(n) => out.extend_from_slice(n),
            TopicRef::Predefined(id) => put16(out, *id),
            TopicRef::Short(s) => out.extend_from_slice(s),
        };
        emit(out, self.kind(), self.body_len(), |out| match *self {
            Message::Advertise { gw_id, duration } => {
                out.push(gw_id);
                put16(out, duration);
            }
            Message::SearchGw { radius } => out.push(radius),
            Message::GwInfo { gw_id, address } => {
                out.push(gw_id);
                out.extend_from_slice(address);
            }
            Message::Connect {
                flags,
                protocol_id,
                duration,
                client_id,
            } => {
                out.push(flags.0);
                out.push(protocol_id);
                put16(out, duration);
                out.extend_from_slice(client_id);
            }
            Message::ConnAck { rc }
            | Message::WillTopicResp { rc }
            | Message::WillMsgResp { rc } => out.push(rc),
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => {}
            Message::WillTopic { flags, topic } | Message::WillTopicUpd { flags, topic } => {
                if flags.0 != 0 || !topic.is_empty() {
                    out.push(flags.0);
                    out.extend_from_slice(topic);
                }
            }
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => out.extend_from_slice(msg),
            Message::Register {
                topic_id,
                msg_id,
                topic,
            } => {
                put16(out, topic_id);
                put16(out, msg_id);
                out.extend_from_slice(topic);
            }
            Message::RegAck {
                topic_id,
                msg_id,
                rc,
            }
            | Message::PubAck {
                topic_id,
                msg_id,
                rc,
            } => {
                put16(out, topic_id);
                put16(out, msg_id);
                out.push(rc);
            }
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => {
                out.push(flags.0);
                put16(out, topic_id);
                put16(out, msg_id);
                out.extend_from_slice(data);
            }
            Message::PubComp { msg_id }
            | Message::PubRec { msg_id }
            | Message::PubRel { msg_id }
            | Message::UnsubAck { msg_id } => put16(out, msg_id),
            Message::Subscribe {
                flags,
                msg_id,
                topic: ref t,
            }
            | Message::Unsubscribe {
                flags,
                msg_id,
                topic: ref t,
            } => {
                out.push(flags.0);
                put16(out, msg_id);
                topic(out, t);
            }
            Message::SubAck {
                flags,
                topic_id,
                msg_id,
                rc,
            } => {
                out.push(flags.0);
                put16(out, topic_id);
                put16(out, msg_id);
                out.push(rc);
            }
            Message::PingReq { client_id } => out.extend_from_slice(client_id),
            Message::Disconnect { duration } => {
                if let Some(d) = duration {
                    put16(out, d);
                }
            }
        });
    }
}

/// Append a forwarder's encapsulation header; the message to the client follows it.
pub fn encode_encapsulation(out: &mut Vec<u8>, e: &Encapsulation<'_>) {
    // Its Length is one byte (spec 5.5); a node id too long for it takes the 3-byte form, as
    // the decoder reads any header.
    let n = e.node_id.len();
    if n + 3 < 256 {
        out.push((n + 3) as u8);
    } else {
        out.push(0x01);
        out.extend_from_slice(&((n + 5).min(MAX_MESSAGE) as u16).to_be_bytes());
    }
    out.push(kind::ENCAPSULATED);
    out.push(e.ctrl);
    out.extend_from_slice(e.node_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message<'_>) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(out.len(), m.encoded_len(), "{m:?}");
        let d = decode(&out).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        assert_eq!(d.encapsulation, None);
        assert_eq!(d.message, m);
    }

    #[test]
    fn every_message_round_trips() {
        let f = Flags::new(1, true, true, topic_type::NORMAL);
        for m in [
            Message::Advertise {
                gw_id: 7,
                duration: 900,
            },
            Message::SearchGw { radius: 1 },
            Message::GwInfo {
                gw_id: 1,
                address: b"",
            },
            Message::GwInfo {
                gw_id: 1,
                address: b"\x7f\x00\x00\x01",
            },
            Message::Connect {
                flags: Flags(0x0c),
                protocol_id: PROTOCOL_ID,
                duration: 60,
                client_id: b"sensor-1",
            },
            Message::ConnAck { rc: rc::ACCEPTED },
            Message::WillTopicReq,
            Message::WillTopic {
                flags: Flags::new(1, true, false, 0),
                topic: b"will/topic",
            },
            Message::WillTopic {
                flags: Flags(0),
                topic: b"",
            },
            Message::WillMsgReq,
            Message::WillMsg { msg: b"gone" },
            Message::WillMsg { msg: b"" },
            Message::Register {
                topic_id: 0,
                msg_id: 3,
                topic: b"a/b/c",
            },
            Message::RegAck {
                topic_id: 1,
                msg_id: 3,
                rc: 0,
            },
            Message::Publish {
                flags: f,
                topic_id: 1,
                msg_id: 9,
                data: b"21.5",
            },
            Message::PubAck {
                topic_id: 1,
                msg_id: 9,
                rc: rc::INVALID_TOPIC_ID,
            },
            Message::PubComp { msg_id: 1 },
            Message::PubRec { msg_id: 2 },
            Message::PubRel { msg_id: 3 },
            Message::Subscribe {
                flags: Flags::new(1, false, false, topic_type::NORMAL),
                msg_id: 4,
                topic: TopicRef::Name(b"sensors/+/temp"),
            },
            Message::Subscribe {
                flags: Flags::new(0, false, false, topic_type::PREDEFINED),
                msg_id: 5,
                topic: TopicRef::Predefined(1),
            },
            Message::Subscribe {
                flags: Flags::new(2, false, false, topic_type::SHORT),
                msg_id: 6,
                topic: TopicRef::Short(*b"ab"),
            },
            Message::SubAck {
                flags: Flags::new(1, false, false, 0),
                topic_id: 1,
                msg_id: 4,
                rc: 0,
            },
            Message::Unsubscribe {
                flags: Flags::new(0, false, false, topic_type::NORMAL),
                msg_id: 7,
                topic: TopicRef::Name(b"x/#"),
            },
            Message::UnsubAck { msg_id: 7 },
            Message::PingReq { client_id: b"" },
            Message::PingReq {
                client_id: b"sleepy",
            },
            Message::PingResp,
            Message::Disconnect { duration: None },
            Message::Disconnect {
                duration: Some(300),
            },
            Message::WillTopicUpd {
                flags: Flags::new(0, false, false, 0),
                topic: b"w",
            },
            Message::WillTopicResp { rc: 0 },
            Message::WillMsgUpd { msg: b"bye" },
            Message::WillMsgResp { rc: 0 },
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn long_form_length_from_256_bytes() {
        let data = vec![0x55u8; 300];
        let m = Message::Publish {
            flags: Flags::new(0, false, false, topic_type::NORMAL),
            topic_id: 1,
            msg_id: 0,
            data: &data,
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(&out[..4], &[0x01, 0x01, 0x35, kind::PUBLISH]);
        assert_eq!(out.len(), 309);
        roundtrip(m);
        // 249 bytes of data: 256 in the short form would not fit one byte.
        let publish = |data| Message::Publish {
            flags: Flags::new(0, false, false, topic_type::NORMAL),
            topic_id: 1,
            msg_id: 0,
            data,
        };
        let mut out = Vec::new();
        publish(&data[..249]).encode(&mut out);
        assert_eq!(out[0], 0x01);
        roundtrip(publish(&data[..249]));
        let mut out = Vec::new();
        publish(&data[..248]).encode(&mut out);
        assert_eq!(out[0], 255);
    }

    #[test]
    fn encapsulated_messages() {
        let mut out = Vec::new();
        let e = Encapsulation {
            ctrl: 1,
            node_id: b"\x00\x12\x4b\x00",
        };
        encode_encapsulation(&mut out, &e);
        Message::PingReq { client_id: b"" }.encode(&mut out);
        let d = decode(&out).unwrap();
        assert_eq!(d.encapsulation, Some(e));
        assert_eq!(d.message, Message::PingReq { client_id: b"" });
        // The forwarded message must be whole, alone, and not another encapsulation.
        assert!(decode(&out[..out.len() - 1]).is_err());
        let mut twice = out.clone();
        twice.extend_from_slice(&[2, kind::PINGRESP]);
        assert!(decode(&twice).is_err());
        let mut nested = Vec::new();
        encode_encapsulation(&mut nested, &e);
        nested.extend_from_slice(&out);
        assert!(decode(&nested).is_err());
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        for bad in [
            &b""[..],
            &[0],
            &[1],
            &[1, 0],
            &[1, 0, 3, 0x17],
            &[2],
            &[3, kind::PINGRESP],
            &[2, kind::PINGRESP, 0],
            &[3, kind::PINGRESP, 0],
            &[2, 0x03],
            &[2, 0xff],
            &[2, kind::CONNACK],
            &[4, kind::PUBREL, 0],
            &[5, kind::PUBREL, 0, 1, 2],
            &[5, kind::SUBSCRIBE, 0x03, 0, 1],
            &[5, kind::SUBSCRIBE, 0x00, 0, 1],
            &[6, kind::SUBSCRIBE, 0x01, 0, 1, 9],
            &[5, kind::DISCONNECT, 0, 0, 0],
            &[3, kind::DISCONNECT, 0],
            &[3, 0xfe],
            &[3, 0xfe, 0, 2, kind::PINGRESP, 9],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags() {
        let f = Flags(0b1111_1110);
        assert!(f.dup() && f.retain() && f.will() && f.clean_session());
        assert_eq!(f.qos(), -1);
        assert_eq!(f.topic_type(), topic_type::SHORT);
        for q in [-1i8, 0, 1, 2] {
            assert_eq!(Flags::new(q, false, false, 0).qos(), q);
        }
    }

    #[test]
    fn every_short_input_decodes_without_panicking() {
        // Exhaustive over every 1- and 2-byte datagram and every 3-byte one with a plausible
        // length: errors, never a panic.
        for a in 0..=255u8 {
            let _ = decode(&[a]);
            for b in 0..=255u8 {
                let _ = decode(&[a, b]);
                let _ = decode(&[3, a, b]);
                let _ = decode(&[a, 0xfe, b, 2, 0x17]);
            }
        }
    }
}
