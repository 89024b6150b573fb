//! The records of the snapshot and the journal: one change (or, in a snapshot, one piece of
//! state) each, framed so that a torn or damaged record is recognised and never misread.
//!
//! A frame is `length: u32 LE` (of what follows the checksum), `crc32: u32 LE` (of the same
//! bytes), `kind: u8`, then the body. Strings are `u16 LE` length + UTF-8, byte strings
//! `u32 LE` length + bytes. Decoding reads only inside the frame and never panics: anything
//! that does not add up is `None`.

/// Largest frame body accepted when reading (a retained message is at most a packet).
pub const MAX_FRAME: usize = crate::wire::MAX_REMAINING_LENGTH + 64 * 1024;

const RETAIN: u8 = 1;
const UNRETAIN: u8 = 2;
const SESSION: u8 = 3;
const END_SESSION: u8 = 4;
const MESSAGE: u8 = 5;
const HOLD: u8 = 6;
const SENT: u8 = 7;
const DONE: u8 = 8;
const RELEASED: u8 = 9;
const QOS2_IN: u8 = 10;
const QOS2_IN_DONE: u8 = 11;
const WILL: u8 = 12;
const WILL_GONE: u8 = 13;
const DISCOVERY_REMOVAL: u8 = 14;
const DISCOVERY_REMOVAL_DONE: u8 = 15;

/// One record, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// The retained message of its topic (replacing any).
    Retain(Msg<'a>),
    /// `topic` has no retained message any more.
    Unretain { topic: &'a str },
    /// A session that outlives its connection, as it is now (replacing any of that id).
    Session {
        client_id: &'a str,
        /// Session Expiry Interval in seconds (u32::MAX: never).
        expiry: u32,
        username: Option<&'a str>,
        listener: u16,
        subscriptions: Subscriptions<'a>,
    },
    /// The session of `client_id` ended.
    EndSession { client_id: &'a str },
    /// A message that sessions hold (queued or in flight), under its store id `id`.
    Message { id: u64, msg: Msg<'a> },
    /// `client_id` holds message `msg` for delivery at `qos`: queued (`packet_id` 0) or in
    /// flight under `packet_id`. `msg` 0 with a packet id: a QoS 2 delivery past PUBREC.
    Hold {
        client_id: &'a str,
        msg: u64,
        qos: u8,
        retain: bool,
        packet_id: u16,
        sub_ids: SubIdList<'a>,
    },
    /// `client_id`'s queued message `msg` was sent under `packet_id`.
    Sent {
        client_id: &'a str,
        msg: u64,
        packet_id: u16,
    },
    /// `client_id` no longer holds the message: in flight under `packet_id` (if not 0), else
    /// queued message `msg` (acknowledged, expired or dropped).
    Done {
        client_id: &'a str,
        msg: u64,
        packet_id: u16,
    },
    /// QoS 2 outgoing: `client_id` acknowledged `packet_id` with PUBREC; only PUBREL is left.
    Released { client_id: &'a str, packet_id: u16 },
    /// QoS 2 incoming: `packet_id` from `client_id` was received and PUBREC sent.
    Qos2In { client_id: &'a str, packet_id: u16 },
    /// QoS 2 incoming: PUBREL for `packet_id` came; the id is free.
    Qos2InDone { client_id: &'a str, packet_id: u16 },
    /// The will of offline session `client_id`, due at `at` (Unix seconds) after its Will
    /// Delay Interval.
    Will {
        client_id: &'a str,
        at: u64,
        msg: Msg<'a>,
    },
    /// The delayed will of `client_id` was published or cancelled.
    WillGone { client_id: &'a str },
    /// A Home Assistant discovery removal HA may not have seen (`devices/removals.rs`), kept
    /// under `id`: `config` is what `topic` said before (or the removal announced on it), sent
    /// again before the clear when HA's birth message comes.
    DiscoveryRemoval {
        id: u64,
        topic: &'a str,
        config: &'a [u8],
    },
    /// Discovery removal `id` is not kept any more (HA has had it, or newer ones pushed it out).
    DiscoveryRemovalDone { id: u64 },
}

/// Up to four Subscription Identifiers of a held message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdList<'a>(&'a [u8]);

impl<'a> SubIdList<'a> {
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Append a Hold record.
pub fn encode_hold(
    out: &mut Vec<u8>,
    client_id: &str,
    msg: u64,
    qos: u8,
    retain: bool,
    packet_id: u16,
    sub_ids: &[u32],
) {
    let mut ids = [0u8; 16];
    let n = sub_ids.len().min(4);
    for (i, id) in sub_ids.iter().take(n).enumerate() {
        ids[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
    }
    encode(
        out,
        &Record::Hold {
            client_id,
            msg,
            qos,
            retain,
            packet_id,
            sub_ids: SubIdList(&ids[..n * 4]),
        },
    );
}

/// A stored message as the Retain, Message and Will records carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Message Expiry as Unix seconds; 0 = never.
    pub expiry: u64,
    /// The MQTT 5 properties forwarded with it, encoded.
    pub props: &'a [u8],
    pub payload: &'a [u8],
}

fn put_msg(out: &mut Vec<u8>, m: &Msg<'_>) {
    put_str(out, m.topic);
    out.push(m.qos);
    out.push(m.retain as u8);
    out.extend_from_slice(&m.expiry.to_le_bytes());
    put_bytes(out, m.props);
    put_bytes(out, m.payload);
}

/// A session's subscriptions inside a record: (filter as subscribed, QoS + option bits,
/// subscription identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriptions<'a> {
    count: u16,
    bytes: &'a [u8],
}

impl<'a> Subscriptions<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u8, u32)> + 'a {
        let mut r = Reader(self.bytes);
        (0..self.count).map_while(move |_| Some((r.str()?, r.u8()?, r.u32()?)))
    }
}

/// Append one record's frame to `out`.
pub fn encode(out: &mut Vec<u8>, rec: &Record<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match rec {
        Record::Retain(m) => {
            out.push(RETAIN);
            put_msg(out, m);
        }
        Record::Unretain { topic } => {
            out.push(UNRETAIN);
            put_str(out, topic);
        }
        Record::Session {
            client_id,
            expiry,
            username,
            listener,
            subscriptions,
        } => {
            out.push(SESSION);
            put_str(out, client_id);
            out.extend_from_slice(&expiry.to_le_bytes());
            match username {
                Some(u) => {
                    out.push(1);
                    put_str(out, u);
                }
                None => out.push(0),
            }
            out.extend_from_slice(&listener.to_le_bytes());
            out.extend_from_slice(&subscriptions.count.to_le_bytes());
            out.extend_from_slice(subscriptions.bytes);
        }
        Record::EndSession { client_id } => {
            out.push(END_SESSION);
            put_str(out, client_id);
        }
        Record::Message { id, msg } => {
            out.push(MESSAGE);
            out.extend_from_slice(&id.to_le_bytes());
            put_msg(out, msg);
        }
        Record::Hold {
            client_id,
            msg,
            qos,
            retain,
            packet_id,
            sub_ids,
        } => {
            out.push(HOLD);
            put_str(out, client_id);
            out.extend_from_slice(&msg.to_le_bytes());
            out.push(*qos);
            out.push(*retain as u8);
            out.extend_from_slice(&packet_id.to_le_bytes());
            out.push((sub_ids.0.len() / 4) as u8);
            out.extend_from_slice(sub_ids.0);
        }
        Record::Sent {
            client_id,
            msg,
            packet_id,
        }
        | Record::Done {
            client_id,
            msg,
            packet_id,
        } => {
            out.push(if matches!(rec, Record::Sent { .. }) {
                SENT
            } else {
                DONE
            });
            put_str(out, client_id);
            out.extend_from_slice(&msg.to_le_bytes());
            out.extend_from_slice(&packet_id.to_le_bytes());
        }
        Record::Will { client_id, at, msg } => {
            out.push(WILL);
            put_str(out, client_id);
            out.extend_from_slice(&at.to_le_bytes());
            put_msg(out, msg);
        }
        Record::WillGone { client_id } => {
            out.push(WILL_GONE);
            put_str(out, client_id);
        }
        Record::DiscoveryRemoval { id, topic, config } => {
            out.push(DISCOVERY_REMOVAL);
            out.extend_from_slice(&id.to_le_bytes());
            put_str(out, topic);
            put_bytes(out, config);
        }
        Record::DiscoveryRemovalDone { id } => {
            out.push(DISCOVERY_REMOVAL_DONE);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Record::Released {
            client_id,
            packet_id,
        }
        | Record::Qos2In {
            client_id,
            packet_id,
        }
        | Record::Qos2InDone {
            client_id,
            packet_id,
        } => {
            out.push(match rec {
                Record::Released { .. } => RELEASED,
                Record::Qos2In { .. } => QOS2_IN,
                _ => QOS2_IN_DONE,
            });
            put_str(out, client_id);
            out.extend_from_slice(&packet_id.to_le_bytes());
        }
    }
    seal(out, start);
}

/// Append a session record whose subscriptions come from an iterator.
pub fn encode_session<'s>(
    out: &mut Vec<u8>,
    client_id: &str,
    expiry: u32,
    username: Option<&str>,
    listener: u16,
    subscriptions: impl Iterator<Item = (&'s str, u8, u32)>,
) {
    let mut subs = Vec::new();
    let mut count = 0u16;
    for (filter, options, id) in subscriptions.take(u16::MAX as usize) {
        put_str(&mut subs, filter);
        subs.push(options);
        subs.extend_from_slice(&id.to_le_bytes());
        count += 1;
    }
    encode(
        out,
        &Record::Session {
            client_id,
            expiry,
            username,
            listener,
            subscriptions: Subscriptions {
                count,
                bytes: &subs,
            },
        },
    );
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Topics, filters and ids are at most 65 535 bytes (MQTT strings).
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Append `body` (a kind byte and its fields, valid or not) as a frame with a correct length
/// and checksum: for tests and the fuzzer, which reach the replay logic past the checksum.
pub fn frame_body(out: &mut Vec<u8>, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(body);
    seal(out, start);
}

/// Fill in the length and checksum of the frame that starts at `start`.
fn seal(out: &mut [u8], start: usize) {
    let body = &out[start + 8..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32(body).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc);
}

/// What is at the start of `data`.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, intact record of `len` bytes (frame included).
    Record(Record<'a>, usize),
    /// Nothing left.
    End,
    /// The bytes end inside a frame (a write cut short by a crash).
    Torn,
    /// A frame whose checksum or contents do not add up.
    Damaged,
}

/// Read the frame at the start of `data`.
pub fn decode(data: &[u8]) -> Frame<'_> {
    if data.is_empty() {
        return Frame::End;
    }
    let Some(head) = data.get(..8) else {
        return Frame::Torn;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_FRAME {
        return Frame::Damaged;
    }
    let Some(body) = data.get(8..8 + len) else {
        return Frame::Torn;
    };
    if crc32(body) != crc {
        return Frame::Damaged;
    }
    match parse(body) {
        Some(r) => Frame::Record(r, 8 + len),
        None => Frame::Damaged,
    }
}

/// What [`scan`] found besides the intact frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Intact frames handed on.
    pub records: usize,
    /// Damaged regions skipped (each one up to the next intact frame, or to the end).
    pub damaged: usize,
    /// Bytes in those regions.
    pub skipped: usize,
    /// Where the first damaged region starts.
    pub first_damage: Option<usize>,
    /// Bytes of a last frame cut short by a crash (nothing intact follows it): not damage.
    pub torn: usize,
}

/// Walk the frames of `data`, handing each intact one's bytes to `keep`. A frame that does
/// not add up costs that frame only: the reader resynchronises on the next offset where an
/// intact frame (length, checksum and contents) starts, as LevelDB's log reader does. An
/// incomplete frame with nothing intact after it is a torn tail (a crash mid-write); with
/// something intact after it, its length field was damaged. Offsets whose length field is
/// out of range are rejected before any checksum is computed, so garbage is scanned quickly.
pub fn scan<'a>(data: &'a [u8], mut keep: impl FnMut(&'a [u8])) -> Scan {
    let mut s = Scan::default();
    let mut at = 0;
    loop {
        let bad = match decode(&data[at..]) {
            Frame::Record(_, n) => {
                keep(&data[at..at + n]);
                s.records += 1;
                at += n;
                continue;
            }
            Frame::End => return s,
            bad => bad,
        };
        let next = (at + 1..data.len()).find(|&p| matches!(decode(&data[p..]), Frame::Record(..)));
        match (next, bad) {
            (None, Frame::Torn) => {
                s.torn = data.len() - at;
                return s;
            }
            (next, _) => {
                let to = next.unwrap_or(data.len());
                s.damaged += 1;
                s.skipped += to - at;
                s.first_damage.get_or_insert(at);
                at = to;
            }
        }
    }
}

fn parse(body: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader(body);
    let rec = match r.u8()? {
        RETAIN => Record::Retain(r.msg()?),
        UNRETAIN => Record::Unretain { topic: r.str()? },
        SESSION => {
            let client_id = r.str()?;
            let expiry = r.u32()?;
            let username = match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                _ => return None,
            };
            let listener = r.u16()?;
            let count = r.u16()?;
            let subscriptions = Subscriptions { count, bytes: r.0 };
            // Every subscription must be readable.
            if subscriptions.iter().count() != count as usize {
                return None;
            }
            r.0 = &[];
            Record::Session {
                client_id,
                expiry,
                username,
                listener,
                subscriptions,
            }
        }
        END_SESSION => Record::EndSession {
            client_id: r.str()?,
        },
        MESSAGE => Record::Message {
            id: r.u64()?,
            msg: r.msg()?,
        },
        HOLD => {
            let client_id = r.str()?;
            let msg = r.u64()?;
            let qos = r.u8()?;
            let retain = r.u8()? != 0;
            let packet_id = r.u16()?;
            let n = r.u8()? as usize;
            if n > 4 {
                return None;
            }
            Record::Hold {
                client_id,
                msg,
                qos,
                retain,
                packet_id,
                sub_ids: SubIdList(r.take(n * 4)?),
            }
        }
        SENT => Record::Sent {
            client_id: r.str()?,
            msg: r.u64()?,
            packet_id: r.u16()?,
        },
        DONE => Record::Done {
            client_id: r.str()?,
            msg: r.u64()?,
            packet_id: r.u16()?,
        },
        RELEASED => Record::Released {
            client_id: r.str()?,
            packet_id: r.u16()?,
        },
        QOS2_IN => Record::Qos2In {
            client_id: r.str()?,
            packet_id: r.u16()?,
        },
        QOS2_IN_DONE => Record::Qos2InDone {
            client_id: r.str()?,
            packet_id: r.u16()?,
        },
        WILL => Record::Will {
            client_id: r.str()?,
            at: r.u64()?,
            msg: r.msg()?,
        },
        WILL_GONE => Record::WillGone {
            client_id: r.str()?,
        },
        DISCOVERY_REMOVAL => Record::DiscoveryRemoval {
            id: r.u64()?,
            topic: r.str()?,
            config: r.bytes()?,
        },
        DISCOVERY_REMOVAL_DONE => Record::DiscoveryRemovalDone { id: r.u64()? },
        _ => return None,
    };
    // Nothing may be left over.
    r.0.is_empty().then_some(rec)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn msg(&mut self) -> Option<Msg<'a>> {
        Some(Msg {
            topic: self.str()?,
            qos: self.u8()?,
            retain: self.u8()? != 0,
            expiry: self.u64()?,
            props: self.bytes()?,
            payload: self.bytes()?,
        })
    }
}

/// CRC-32 (IEEE), bitwise with a small table: records are written once per change, so this is
/// not on the message path of a broker without persistence.
pub fn crc32(data: &[u8]) -> u32 {
    const fn table() -> [u32; 16] {
        let mut t = [0u32; 16];
        let mut i = 0;
        while i < 16 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 4 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    const T: [u32; 16] = table();
    let mut c = !0u32;
    for &b in data {
        c = T[((c ^ b as u32) & 0xF) as usize] ^ (c >> 4);
        c = T[((c ^ (b as u32 >> 4)) & 0xF) as usize] ^ (c >> 4);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            &Record::Retain(Msg {
                topic: "home/lamp/state",
                qos: 1,
                retain: true,
                expiry: 1_900_000_000,
                props: &[0x03, 0, 4, b't', b'e', b'x', b't'],
                payload: b"{\"power\":\"ON\"}",
            }),
        );
        encode(&mut out, &Record::Unretain { topic: "a/b" });
        encode_session(
            &mut out,
            "sensor-1",
            u32::MAX,
            Some("alice"),
            2,
            [("a/+/c", 1u8, 0u32), ("$share/g/x/#", 0x06, 7)].into_iter(),
        );
        encode(&mut out, &Record::EndSession { client_id: "gone" });
        encode(
            &mut out,
            &Record::Message {
                id: 7,
                msg: Msg {
                    topic: "q/1",
                    qos: 2,
                    retain: false,
                    expiry: 0,
                    props: &[],
                    payload: b"p",
                },
            },
        );
        encode_hold(&mut out, "sensor-1", 7, 2, false, 513, &[1, 70000]);
        for rec in [
            Record::Sent {
                client_id: "c",
                msg: 7,
                packet_id: 9,
            },
            Record::Done {
                client_id: "c",
                msg: 0,
                packet_id: 9,
            },
            Record::Released {
                client_id: "c",
                packet_id: 10,
            },
            Record::Qos2In {
                client_id: "c",
                packet_id: 11,
            },
            Record::Qos2InDone {
                client_id: "c",
                packet_id: 11,
            },
            Record::Will {
                client_id: "c",
                at: 1_900_000_000,
                msg: Msg {
                    topic: "w/t",
                    qos: 1,
                    retain: true,
                    expiry: 0,
                    props: &[],
                    payload: b"gone",
                },
            },
            Record::WillGone { client_id: "c" },
            Record::DiscoveryRemoval {
                id: 3,
                topic: "homeassistant/device/lamp/config",
                config: b"{\"cmps\":{\"power\":{\"p\":\"switch\"}}}",
            },
            Record::DiscoveryRemovalDone { id: 3 },
        ] {
            encode(&mut out, &rec);
        }
        out
    }

    fn all(mut data: &[u8]) -> (Vec<Record<'_>>, Frame<'_>) {
        let mut v = Vec::new();
        loop {
            match decode(data) {
                Frame::Record(r, n) => {
                    v.push(r);
                    data = &data[n..];
                }
                other => return (v, other),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let data = samples();
        let (recs, end) = all(&data);
        assert_eq!(end, Frame::End);
        assert_eq!(recs.len(), 15);
        match &recs[5] {
            Record::Hold {
                msg,
                qos,
                packet_id,
                sub_ids,
                ..
            } => {
                assert_eq!((*msg, *qos, *packet_id), (7, 2, 513));
                assert_eq!(sub_ids.iter().collect::<Vec<_>>(), [1, 70000]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            recs[9],
            Record::Qos2In {
                client_id: "c",
                packet_id: 11
            }
        );
        match &recs[2] {
            Record::Session {
                client_id,
                expiry,
                username,
                listener,
                subscriptions,
            } => {
                assert_eq!(
                    (*client_id, *expiry, *username, *listener),
                    ("sensor-1", u32::MAX, Some("alice"), 2)
                );
                let subs: Vec<_> = subscriptions.iter().collect();
                assert_eq!(subs, [("a/+/c", 1, 0), ("$share/g/x/#", 6, 7)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            recs[13],
            Record::DiscoveryRemoval {
                id: 3,
                topic: "homeassistant/device/lamp/config",
                config: b"{\"cmps\":{\"power\":{\"p\":\"switch\"}}}",
            }
        );
        assert_eq!(recs[14], Record::DiscoveryRemovalDone { id: 3 });
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn every_cut_is_torn_and_every_flip_is_caught() {
        let data = samples();
        let whole = all(&data).0.len();
        for cut in 0..data.len() {
            let (recs, end) = all(&data[..cut]);
            assert!(recs.len() < whole || end == Frame::End);
            assert!(
                matches!(end, Frame::Torn | Frame::End | Frame::Damaged),
                "{cut}"
            );
        }
        let mut d = data.clone();
        for i in 0..d.len() {
            for bit in [0x01, 0x80] {
                d[i] ^= bit;
                // No panic; the damaged record and what follows are not read as intact.
                let (recs, _) = all(&d);
                assert!(recs.len() < whole, "flip at {i} went unnoticed");
                d[i] ^= bit;
            }
        }
    }

    /// The frame boundaries of `data`.
    fn bounds(data: &[u8]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        scan(data, |f| {
            let start = f.as_ptr() as usize - data.as_ptr() as usize;
            v.push((start, start + f.len()));
        });
        v
    }

    #[test]
    fn a_damaged_frame_costs_that_frame_only() {
        let data = samples();
        let frames = bounds(&data);
        assert_eq!(frames.len(), 15);
        let mut d = data.clone();
        for i in 0..d.len() {
            for bit in [0x01, 0x10, 0x80] {
                d[i] ^= bit;
                let hit = frames.iter().position(|&(s, e)| s <= i && i < e).unwrap();
                let mut kept = Vec::new();
                let s = scan(&d, |f| kept.push(f));
                let want: Vec<&[u8]> = (0..frames.len())
                    .filter(|&k| k != hit)
                    .map(|k| &data[frames[k].0..frames[k].1])
                    .collect();
                assert_eq!(kept, want, "flip {bit:#x} at {i}");
                if hit == frames.len() - 1 && s.torn > 0 {
                    // A last frame whose length now runs past the end reads as torn.
                    assert_eq!((s.damaged, s.torn), (0, frames[hit].1 - frames[hit].0));
                } else {
                    assert_eq!((s.damaged, s.first_damage), (1, Some(frames[hit].0)));
                    assert_eq!(s.skipped, frames[hit].1 - frames[hit].0, "flip at {i}");
                }
                d[i] ^= bit;
            }
        }
        // A zeroed sector across several frames costs exactly those frames.
        let mut z = data.clone();
        let (from, to) = (frames[3].0 + 5, frames[6].0 + 2);
        z[from..to].fill(0);
        let mut kept = 0;
        let s = scan(&z, |_| kept += 1);
        assert_eq!((kept, s.damaged), (15 - 4, 1));
        assert_eq!(s.skipped, frames[6].1 - frames[3].0);
        // A torn tail is not damage.
        let s = scan(&data[..data.len() - 3], |_| {});
        assert_eq!(
            (s.records, s.damaged, s.torn),
            (14, 0, frames[14].1 - frames[14].0 - 3)
        );
    }
}
