//! A hand-rolled MQTT 3.1.1 client: just what the bench sends and reads, over blocking sockets.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PINGREQ: [u8; 2] = [0xc0, 0];
pub const DISCONNECT: [u8; 2] = [0xe0, 0];

/// Packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;

/// Keep-alive asked for by every bench connection: long enough for any scenario (gatemq, like
/// Mosquitto 2.0.12+, refuses a 3.1.1 keep-alive of 0).
pub const KEEPALIVE: u16 = 900;

pub fn put_varint(v: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn put_str(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s);
}

/// CONNECT with a clean session.
pub fn connect_packet(out: &mut Vec<u8>, client_id: &str) {
    connect_packet_with(out, client_id, true)
}

/// CONNECT with clean session `clean` (false: a session the broker keeps, and persists).
pub fn connect_packet_with(out: &mut Vec<u8>, client_id: &str, clean: bool) {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, if clean { 0x02 } else { 0x00 }]);
    body.extend_from_slice(&KEEPALIVE.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    out.push(0x10);
    put_varint(out, body.len());
    out.extend_from_slice(&body);
}

pub fn subscribe_packet(out: &mut Vec<u8>, id: u16, filter: &str, qos: u8) {
    out.push(0x82);
    put_varint(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&id.to_be_bytes());
    put_str(out, filter.as_bytes());
    out.push(qos);
}

pub fn publish_packet(out: &mut Vec<u8>, topic: &[u8], qos: u8, id: u16, payload: &[u8]) {
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_varint(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback(out: &mut Vec<u8>, id: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// A received PUBLISH.
pub struct Publish<'a> {
    pub qos: u8,
    pub topic: &'a [u8],
    pub id: u16,
    pub payload: &'a [u8],
}

pub fn parse_publish(first: u8, body: &[u8]) -> Option<Publish<'_>> {
    let qos = (first >> 1) & 3;
    let tl = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let topic = body.get(2..2 + tl)?;
    let mut at = 2 + tl;
    let mut id = 0;
    if qos > 0 {
        id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some(Publish {
        qos,
        topic,
        id,
        payload: body.get(at..)?,
    })
}

/// `(header length, total length)` of the whole packet at the start of `b`, if it is all there.
fn frame(b: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(1 + i) else {
            return Ok(None);
        };
        len |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + len;
            return Ok((b.len() >= total).then_some((2 + i, total)));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed remaining length from the broker",
    ))
}

/// One client connection with its read buffer.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Wraps a connected socket; `buf` is the initial read buffer size.
    pub fn new(s: TcpStream, buf: usize) -> Conn {
        Conn {
            s,
            buf: vec![0; buf],
            start: 0,
            end: 0,
        }
    }

    /// Connects, sends CONNECT and waits for a successful CONNACK.
    pub fn open(addr: &str, client_id: &str) -> io::Result<Conn> {
        Conn::open_with(addr, client_id, true)
    }

    /// As [`Conn::open`], with clean session `clean`.
    pub fn open_with(addr: &str, client_id: &str, clean: bool) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut c = Conn::new(s, 256 * 1024);
        let mut out = Vec::new();
        connect_packet_with(&mut out, client_id, clean);
        c.send(&out)?;
        let body = c.expect(CONNACK, Duration::from_secs(10))?;
        if body.get(1) != Some(&0) {
            return Err(other(format!("CONNACK refused {client_id}: {body:?}")));
        }
        Ok(c)
    }

    pub fn subscribe(&mut self, filter: &str, qos: u8) -> io::Result<()> {
        let mut out = Vec::new();
        subscribe_packet(&mut out, 1, filter, qos);
        self.send(&out)?;
        let body = self.expect(SUBACK, Duration::from_secs(10))?;
        if body.get(2).is_none_or(|&rc| rc > 2) {
            return Err(other(format!("SUBACK refused {filter}: {body:?}")));
        }
        Ok(())
    }

    pub fn set_timeout(&self, d: Duration) -> io::Result<()> {
        self.s.set_read_timeout(Some(d))
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        self.s.set_nonblocking(true)
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.s)
    }

    /// Writes all of `b`, waiting out a full socket buffer on a non-blocking socket.
    pub fn send(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            match self.s.write(b) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands `f` each whole packet (first byte, body) buffered; if none is buffered, reads once
    /// from the socket first. `f` returns true to stop: the rest stays buffered. `Ok(false)`:
    /// the read timed out.
    pub fn pump(&mut self, mut f: impl FnMut(u8, &[u8]) -> bool) -> io::Result<bool> {
        if self.drain(&mut f)? > 0 {
            return Ok(true);
        }
        if self.buf.len() - self.end < self.buf.len() / 4 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < self.buf.len() / 4 {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        match self.s.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ))
            }
            Ok(n) => self.end += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        }
        self.drain(&mut f)?;
        Ok(true)
    }

    /// Packets handed to `f` (up to and including the one it stopped at).
    fn drain(&mut self, f: &mut impl FnMut(u8, &[u8]) -> bool) -> io::Result<usize> {
        let mut n = 0;
        while let Some((hl, total)) = frame(&self.buf[self.start..self.end])? {
            let p = &self.buf[self.start..self.start + total];
            self.start += total;
            n += 1;
            if f(p[0], &p[hl..]) {
                break;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(n)
    }

    /// Waits for the next packet of type `kind` and returns its body; other packets before it
    /// are skipped.
    pub fn expect(&mut self, kind: u8, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        self.set_timeout(Duration::from_millis(100))?;
        let mut found = None;
        while found.is_none() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no packet of type {kind} from the broker in {timeout:?}"),
                ));
            }
            self.pump(|first, body| {
                if first >> 4 == kind {
                    found = Some(body.to_vec());
                    true
                } else {
                    false
                }
            })?;
        }
        Ok(found.unwrap_or_default())
    }
}

pub fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip() {
        let mut out = Vec::new();
        publish_packet(&mut out, b"a/b", 1, 7, &[9; 200]);
        let (hl, total) = frame(&out).unwrap().unwrap();
        assert_eq!(total, out.len());
        let p = parse_publish(out[0], &out[hl..]).unwrap();
        assert_eq!(
            (p.qos, p.topic, p.id, p.payload.len()),
            (1, &b"a/b"[..], 7, 200)
        );
        assert_eq!(frame(&out[..total - 1]).unwrap(), None);
    }
}
