//! MQTT 5.0 helpers for the black-box tests: a broker process with extra config lines, MQTT 5
//! packet builders (properties included, so that bad packets can be built on purpose) and
//! decoders for what the broker sends. Built on `common`'s raw client and framing.
//!
//! Spec references are to MQTT Version 5.0, OASIS Standard, 7 March 2019.
#![allow(dead_code)]

use crate::common::{field, listening_port, packet, temp_path, varint, write_temp, Pkt, Raw};
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broker binary under test.
pub fn broker_bin() -> String {
    env!("CARGO_BIN_EXE_gatemq").to_string()
}

/// A broker process on an ephemeral 127.0.0.1 port. Killed (temp files removed) on drop.
pub struct Broker5 {
    child: Child,
    pub port: u16,
    conf: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Broker5 {
    /// Start with these config lines after `listener 0 127.0.0.1`.
    pub fn start(extra: &[&str]) -> Broker5 {
        let mut text = String::from("listener 0 127.0.0.1\nallow_anonymous true\n");
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        let conf = write_temp("v5.conf", &text);
        let log = temp_path("v5-stderr.log");
        let child = Command::new(broker_bin())
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn the broker");
        let mut b = Broker5 {
            child,
            port: 0,
            conf,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = b.log();
            if let Some(port) = listening_port(&text) {
                b.port = port;
                return b;
            }
            if let Ok(Some(st)) = b.child.try_wait() {
                panic!("broker exited ({st}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "broker not listening after 5 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw TCP connection (nothing sent yet).
    pub fn raw(&self) -> Raw {
        Raw::open(self.port)
    }

    /// A raw v5 client connected with Clean Start 1 and these CONNECT properties.
    #[track_caller]
    pub fn client(&self, client_id: &str, props: &Props) -> Raw {
        let mut c = self.raw();
        let ack = connect_v5(&mut c, &Connect5::new(client_id).props(props.clone()));
        assert_eq!(ack.reason, 0, "CONNACK for {client_id}: {ack:?}");
        c
    }

    /// Panic with the log if the broker process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("broker exited ({st}):\n{}", self.log());
        }
    }
}

impl Drop for Broker5 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
        let _ = fs::remove_file(&self.conf);
    }
}

// ---------------------------------------------------------------------------------------
// Properties (section 2.2.2)
// ---------------------------------------------------------------------------------------

pub const PAYLOAD_FORMAT: u8 = 0x01;
pub const MESSAGE_EXPIRY: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_ID: u8 = 0x0B;
pub const SESSION_EXPIRY: u8 = 0x11;
pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTH_METHOD: u8 = 0x15;
pub const WILL_DELAY: u8 = 0x18;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// A property value as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Byte(u8),
    U16(u16),
    U32(u32),
    Var(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

fn kind_of(id: u8) -> Option<u8> {
    // 0 byte, 1 u16, 2 u32, 3 varint, 4 string, 5 binary, 6 string pair
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 0,
        0x13 | 0x21 | 0x22 | 0x23 => 1,
        0x02 | 0x11 | 0x18 | 0x27 => 2,
        0x0B => 3,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => 4,
        0x09 | 0x16 => 5,
        0x26 => 6,
        _ => return None,
    })
}

/// A property list under construction, in wire order; duplicates and out-of-place
/// properties are allowed on purpose.
#[derive(Debug, Clone, Default)]
pub struct Props(Vec<u8>);

impl Props {
    pub fn new() -> Props {
        Props(Vec::new())
    }
    pub fn byte(mut self, id: u8, v: u8) -> Props {
        self.0.extend([id, v]);
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Props {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Props {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    pub fn var(mut self, id: u8, v: usize) -> Props {
        self.0.push(id);
        self.0.extend(varint(v));
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Props {
        self.0.push(id);
        self.0.extend(field(v.as_bytes()));
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Props {
        self.0.push(id);
        self.0.extend(field(v));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Props {
        self.0.push(USER_PROPERTY);
        self.0.extend(field(k.as_bytes()));
        self.0.extend(field(v.as_bytes()));
        self
    }
    /// Raw bytes appended to the property list (e.g. an unknown identifier).
    pub fn raw(mut self, bytes: &[u8]) -> Props {
        self.0.extend_from_slice(bytes);
        self
    }
    /// Property Length + properties.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = varint(self.0.len());
        v.extend_from_slice(&self.0);
        v
    }
}

/// Decoded properties, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropList(pub Vec<(u8, Val)>);

impl PropList {
    pub fn get(&self, id: u8) -> Option<&Val> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn all(&self, id: u8) -> Vec<&Val> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }
    /// A numeric property (byte, two/four byte or variable byte integer).
    pub fn num(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Val::Byte(b) => Some(*b as u32),
            Val::U16(v) => Some(*v as u32),
            Val::U32(v) | Val::Var(v) => Some(*v),
            other => panic!("property {id:#x} is not a number: {other:?}"),
        }
    }
    pub fn string(&self, id: u8) -> Option<String> {
        match self.get(id)? {
            Val::Str(s) => Some(s.clone()),
            other => panic!("property {id:#x} is not a string: {other:?}"),
        }
    }
}

fn read_varint(b: &[u8], pos: &mut usize) -> u32 {
    let mut n = 0u32;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        n |= ((byte & 0x7f) as u32) << shift;
        if byte & 0x80 == 0 {
            return n;
        }
        shift += 7;
        assert!(shift <= 21, "variable byte integer too long");
    }
}

fn read_u16(b: &[u8], pos: &mut usize) -> u16 {
    let v = u16::from_be_bytes([b[*pos], b[*pos + 1]]);
    *pos += 2;
    v
}

fn read_field(b: &[u8], pos: &mut usize) -> Vec<u8> {
    let n = read_u16(b, pos) as usize;
    let v = b[*pos..*pos + n].to_vec();
    *pos += n;
    v
}

fn utf8(v: Vec<u8>) -> String {
    String::from_utf8(v).expect("UTF-8 string from the broker")
}

/// Decode Property Length + properties at `pos`, advancing it.
pub fn decode_props(b: &[u8], pos: &mut usize) -> PropList {
    let len = read_varint(b, pos) as usize;
    let end = *pos + len;
    let mut out = Vec::new();
    while *pos < end {
        let id = read_varint(b, pos) as u8;
        let v = match kind_of(id) {
            Some(0) => {
                *pos += 1;
                Val::Byte(b[*pos - 1])
            }
            Some(1) => Val::U16(read_u16(b, pos)),
            Some(2) => {
                let v = u32::from_be_bytes([b[*pos], b[*pos + 1], b[*pos + 2], b[*pos + 3]]);
                *pos += 4;
                Val::U32(v)
            }
            Some(3) => Val::Var(read_varint(b, pos)),
            Some(4) => Val::Str(utf8(read_field(b, pos))),
            Some(5) => Val::Bin(read_field(b, pos)),
            Some(6) => {
                let k = utf8(read_field(b, pos));
                Val::Pair(k, utf8(read_field(b, pos)))
            }
            _ => panic!("unknown property {id:#x} from the broker in {b:02x?}"),
        };
        out.push((id, v));
    }
    assert_eq!(*pos, end, "property length mismatch in {b:02x?}");
    PropList(out)
}

// ---------------------------------------------------------------------------------------
// Packets to the broker
// ---------------------------------------------------------------------------------------

/// A v5 CONNECT under construction.
#[derive(Clone)]
pub struct Connect5 {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub props: Props,
    /// (topic, payload, qos, retain, will properties)
    pub will: Option<(String, Vec<u8>, u8, bool, Props)>,
}

impl Connect5 {
    pub fn new(client_id: &str) -> Connect5 {
        Connect5 {
            client_id: client_id.to_string(),
            clean_start: true,
            keep_alive: 60,
            props: Props::new(),
            will: None,
        }
    }
    pub fn clean_start(mut self, c: bool) -> Connect5 {
        self.clean_start = c;
        self
    }
    pub fn keep_alive(mut self, k: u16) -> Connect5 {
        self.keep_alive = k;
        self
    }
    pub fn props(mut self, p: Props) -> Connect5 {
        self.props = p;
        self
    }
    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, props: Props) -> Connect5 {
        self.will = Some((topic.into(), payload.into(), qos, false, props));
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = if self.clean_start { 0x02 } else { 0 };
        let mut payload = field(self.client_id.as_bytes());
        if let Some((t, p, q, r, wp)) = &self.will {
            flags |= 0x04 | (q << 3) | if *r { 0x20 } else { 0 };
            payload.extend(wp.encode());
            payload.extend(field(t.as_bytes()));
            payload.extend(field(p));
        }
        let mut body = field(b"MQTT");
        body.push(5);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(self.props.encode());
        body.extend(payload);
        packet(0x10, &body)
    }
}

/// PUBLISH v5; `topic` may be empty (Topic Alias use).
pub fn publish5(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    id: u16,
    props: &Props,
) -> Vec<u8> {
    let first = 0x30 | (qos & 3) << 1 | retain as u8;
    let mut body = field(topic.as_bytes());
    if qos > 0 {
        body.extend(id.to_be_bytes());
    }
    body.extend(props.encode());
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// Subscription options byte (section 3.8.3.1).
pub fn sub_opts(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (no_local as u8) << 2 | (retain_as_published as u8) << 3 | retain_handling << 4
}

/// SUBSCRIBE v5 with (filter, options byte) pairs.
pub fn subscribe5(id: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(props.encode());
    for (f, o) in filters {
        body.extend(field(f.as_bytes()));
        body.push(*o);
    }
    packet(0x82, &body)
}

/// PUBACK 0x40 / PUBREC 0x50 / PUBREL 0x62 / PUBCOMP 0x70 with a reason code.
pub fn ack5(first: u8, id: u16, reason: u8) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.push(reason);
    packet(first, &body)
}

pub fn disconnect5(reason: u8, props: &Props) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(props.encode());
    packet(0xe0, &body)
}

// ---------------------------------------------------------------------------------------
// Packets from the broker
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ConnAck5 {
    pub session_present: bool,
    pub reason: u8,
    pub props: PropList,
}

#[derive(Debug, Clone)]
pub struct Publish5 {
    pub topic: String,
    pub id: u16,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub props: PropList,
    pub payload: Vec<u8>,
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP/DISCONNECT-style packet: id (0 for DISCONNECT), reason code
/// (0 when omitted), properties.
#[derive(Debug, Clone)]
pub struct Ack5 {
    pub kind: u8,
    pub id: u16,
    pub reason: u8,
    pub props: PropList,
}

#[track_caller]
pub fn parse_connack(p: &Pkt) -> ConnAck5 {
    assert_eq!(p.header, 0x20, "expected CONNACK, got {:02x?}", p.bytes());
    let mut pos = 2;
    let props = if p.body.len() > 2 {
        decode_props(&p.body, &mut pos)
    } else {
        PropList::default()
    };
    assert_eq!(pos, p.body.len(), "CONNACK length {:02x?}", p.bytes());
    ConnAck5 {
        session_present: p.body[0] & 1 == 1,
        reason: p.body[1],
        props,
    }
}

#[track_caller]
pub fn parse_publish(p: &Pkt) -> Publish5 {
    assert_eq!(p.kind(), 3, "expected PUBLISH, got {:02x?}", p.bytes());
    let qos = (p.header >> 1) & 3;
    let mut pos = 0;
    let topic = utf8(read_field(&p.body, &mut pos));
    let id = if qos > 0 {
        read_u16(&p.body, &mut pos)
    } else {
        0
    };
    let props = decode_props(&p.body, &mut pos);
    Publish5 {
        topic,
        id,
        qos,
        retain: p.header & 1 == 1,
        dup: p.header & 8 != 0,
        props,
        payload: p.body[pos..].to_vec(),
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (with a packet id), DISCONNECT (without).
#[track_caller]
pub fn parse_ack(p: &Pkt) -> Ack5 {
    let kind = p.kind();
    let mut pos = 0;
    let id = if kind == 14 {
        0
    } else {
        assert!(
            (4..=7).contains(&kind),
            "expected an ack, got {:02x?}",
            p.bytes()
        );
        read_u16(&p.body, &mut pos)
    };
    let reason = p.body.get(pos).copied().unwrap_or(0);
    pos += 1;
    let props = if p.body.len() > pos {
        decode_props(&p.body, &mut pos)
    } else {
        PropList::default()
    };
    Ack5 {
        kind,
        id,
        reason,
        props,
    }
}

/// SUBACK: (packet id, reason codes).
#[track_caller]
pub fn parse_suback(p: &Pkt) -> (u16, Vec<u8>) {
    assert_eq!(p.header, 0x90, "expected SUBACK, got {:02x?}", p.bytes());
    let mut pos = 0;
    let id = read_u16(&p.body, &mut pos);
    decode_props(&p.body, &mut pos);
    (id, p.body[pos..].to_vec())
}

/// Send CONNECT and read the CONNACK.
#[track_caller]
pub fn connect_v5(c: &mut Raw, connect: &Connect5) -> ConnAck5 {
    c.send(&connect.encode());
    parse_connack(&c.read_packet())
}

/// SUBSCRIBE and return the SUBACK reason codes.
#[track_caller]
pub fn subscribe_v5(c: &mut Raw, id: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    c.send(&subscribe5(id, props, filters));
    let (got, codes) = parse_suback(&c.read_packet());
    assert_eq!(got, id, "SUBACK packet id");
    codes
}

/// Expect a DISCONNECT whose reason code is one of `codes`, then the connection closed.
/// Returns the DISCONNECT.
#[track_caller]
pub fn expect_disconnect(c: &mut Raw, codes: &[u8]) -> Ack5 {
    let p = c.read_packet();
    assert_eq!(
        p.header,
        0xe0,
        "expected DISCONNECT, got {:02x?}",
        p.bytes()
    );
    let d = parse_ack(&p);
    assert!(
        codes.contains(&d.reason),
        "DISCONNECT reason {:#04x}, expected one of {codes:02x?} ({d:?})",
        d.reason
    );
    assert!(
        !d.props.has(SESSION_EXPIRY),
        "[MQTT-3.14.2-2]: no Session Expiry Interval from the server"
    );
    c.expect_closed();
    d
}
