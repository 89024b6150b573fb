//! MQTT over WebSocket (RFC 6455; MQTT 5 spec 6.0): the HTTP upgrade and the frame codec for a
//! listener with `protocol websockets`, without I/O of its own.
//!
//! Written here rather than taken from `tungstenite`: the loop owns the sockets and feeds bytes
//! in, and all MQTT needs is a byte stream, so the codec is an upgrade reply plus a frame
//! header parser that unmasks payload bytes in place (compacting them to the front of the read
//! buffer, with no copy and no allocation). A packet split across frames and several packets
//! in one frame both come out as one stream for the MQTT framing. Output is one binary frame
//! per chunk of the broker's output. Parsing never panics: a bad request gets a 400 answer, a
//! bad frame a close frame with its status code, then the connection closes.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The longest upgrade request taken (Mosquitto's `websockets_headers_size` default is 4096).
const MAX_REQUEST: usize = 8192;
/// RFC 6455 section 1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Close status codes (RFC 6455 section 7.4.1).
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;

/// Why a WebSocket connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The upgrade request was not one (answered 400 in `out`).
    BadRequest(&'static str),
    /// A frame broke the protocol (a close frame with this status is in `out`).
    Protocol(&'static str),
    /// The client sent a close frame (answered in `out`).
    Closed,
}

/// One WebSocket connection's codec state.
#[derive(Default)]
pub struct WebSocket {
    /// The upgrade request so far; `None` once upgraded.
    request: Option<Vec<u8>>,
    /// The header of the frame being read, while incomplete (at most 14 bytes).
    header: [u8; 14],
    header_len: u8,
    /// Inside a frame's payload: bytes still to come, its mask and its opcode.
    in_payload: bool,
    remaining: u64,
    mask: [u8; 4],
    mask_at: u8,
    opcode: u8,
    /// The payload of a control frame being read (at most 125 bytes).
    control: Vec<u8>,
    /// Bytes for the socket: the upgrade answer, pongs, close frames, framed MQTT output.
    pub out: Vec<u8>,
}

impl WebSocket {
    pub fn new() -> Self {
        WebSocket {
            request: Some(Vec::new()),
            ..Default::default()
        }
    }

    pub fn upgraded(&self) -> bool {
        self.request.is_none()
    }

    /// Take `data` as read from the socket; what is MQTT in it is moved to its front. Returns
    /// how many MQTT bytes that is.
    pub fn input(&mut self, data: &mut [u8]) -> Result<usize, End> {
        let mut start = 0;
        if let Some(req) = &mut self.request {
            // Only up to the blank line: anything after it is already frames.
            let before = req.len();
            req.extend_from_slice(data);
            // Only the new bytes (and the three before them) can complete the blank line.
            let from = before.saturating_sub(3);
            let Some(end) = find(&req[from..], b"\r\n\r\n").map(|e| e + from) else {
                if req.len() > MAX_REQUEST {
                    return Err(self.bad_request("request headers too long"));
                }
                return Ok(0);
            };
            start = end + 4 - before;
            let req = self.request.take().unwrap_or_default();
            self.upgrade(&req[..end])?;
        }
        self.frames(data, start)
    }

    /// Answer the upgrade request (its head, without the blank line).
    fn upgrade(&mut self, head: &[u8]) -> Result<(), End> {
        let Ok(head) = std::str::from_utf8(head) else {
            return Err(self.bad_request("request is not text"));
        };
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        if !request_line.starts_with("GET ") || !request_line.ends_with(" HTTP/1.1") {
            return Err(self.bad_request("not a GET HTTP/1.1 request"));
        }
        let (mut key, mut upgrade, mut version, mut protocols) = (None, false, None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "sec-websocket-key" => key = Some(value),
                "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
                "sec-websocket-version" => version = Some(value),
                "sec-websocket-protocol" => protocols = Some(value),
                _ => {}
            }
        }
        let Some(key) = key.filter(|_| upgrade) else {
            return Err(self.bad_request("not a WebSocket upgrade"));
        };
        if version != Some("13") {
            return Err(self.bad_request("WebSocket version is not 13"));
        }
        // MQTT's subprotocol names (spec 6.0): "mqtt", and "mqttv3.1" of older clients. A
        // request naming others only is refused; one naming none is served.
        let protocol = match protocols {
            None => None,
            Some(list) => {
                let offered: Vec<&str> = list.split(',').map(str::trim).collect();
                match ["mqtt", "mqttv3.1"]
                    .into_iter()
                    .find(|p| offered.contains(p))
                {
                    Some(p) => Some(p),
                    None => return Err(self.bad_request("no MQTT subprotocol offered")),
                }
            }
        };
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(ACCEPT_GUID);
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        self.out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        self.out.extend_from_slice(accept.as_bytes());
        if let Some(p) = protocol {
            self.out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
            self.out.extend_from_slice(p.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        Ok(())
    }

    fn bad_request(&mut self, why: &'static str) -> End {
        self.out.extend_from_slice(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        End::BadRequest(why)
    }

    /// Decode frames in `data[at..]`, unmasking data payloads to `data[..n]`.
    fn frames(&mut self, data: &mut [u8], mut at: usize) -> Result<usize, End> {
        let mut n = 0;
        while at < data.len() {
            if !self.in_payload {
                // A header: its first two bytes say how long it is.
                let need = self.header_needed();
                let take = (need - self.header_len as usize).min(data.len() - at);
                let h = self.header_len as usize;
                self.header[h..h + take].copy_from_slice(&data[at..at + take]);
                self.header_len += take as u8;
                at += take;
                if self.header_needed() > self.header_len as usize {
                    continue; // the length or mask bytes are still to come
                }
                self.start_frame()?;
                if self.remaining == 0 {
                    self.end_frame()?;
                } else {
                    self.in_payload = true;
                }
                continue;
            }
            let take = (self.remaining.min((data.len() - at) as u64)) as usize;
            for i in 0..take {
                let b = data[at + i] ^ self.mask[(self.mask_at as usize + i) % 4];
                if self.opcode >= 8 {
                    self.control.push(b);
                } else {
                    data[n] = b;
                    n += 1;
                }
            }
            self.mask_at = ((self.mask_at as usize + take) % 4) as u8;
            self.remaining -= take as u64;
            at += take;
            if self.remaining == 0 {
                self.in_payload = false;
                self.end_frame()?;
            }
        }
        Ok(n)
    }

    /// Header bytes needed, from what is known so far: 2, then with the length and the mask
    /// (an unmasked frame is refused after its first two bytes).
    fn header_needed(&self) -> usize {
        if self.header_len < 2 || self.header[1] & 0x80 == 0 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + 4
    }

    fn start_frame(&mut self) -> Result<(), End> {
        let (b0, b1) = (self.header[0], self.header[1]);
        self.header_len = 0;
        if b0 & 0x70 != 0 {
            return Err(self.fail(PROTOCOL_ERROR, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(self.fail(PROTOCOL_ERROR, "client frame not masked"));
        }
        let (len, mask_at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                4,
            ),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            l => (l as u64, 2),
        };
        self.mask
            .copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.mask_at = 0;
        let opcode = b0 & 0x0f;
        match opcode {
            // Continuation and binary carry MQTT bytes.
            0 | 2 => {}
            1 => return Err(self.fail(UNSUPPORTED_DATA, "text frame (MQTT is binary)")),
            8..=10 => {
                if len > 125 || b0 & 0x80 == 0 {
                    return Err(self.fail(PROTOCOL_ERROR, "bad control frame"));
                }
            }
            _ => return Err(self.fail(PROTOCOL_ERROR, "unknown opcode")),
        }
        self.opcode = opcode;
        self.remaining = len;
        Ok(())
    }

    /// A frame's payload is all in: answer a ping, end at a close.
    fn end_frame(&mut self) -> Result<(), End> {
        let result = match self.opcode {
            9 => {
                frame(&mut self.out, 0x8A, &self.control);
                Ok(())
            }
            // A close payload is empty or starts with a 2-byte status (RFC 6455 5.5.1).
            8 if self.control.len() == 1 => Err(self.fail(PROTOCOL_ERROR, "1-byte close payload")),
            8 => {
                // Echo the status code.
                let status = self.control.get(..2).unwrap_or(&[]);
                frame(&mut self.out, 0x88, status);
                Err(End::Closed)
            }
            _ => Ok(()),
        };
        self.control.clear();
        result
    }

    fn fail(&mut self, status: u16, why: &'static str) -> End {
        frame(&mut self.out, 0x88, &status.to_be_bytes());
        End::Protocol(why)
    }

    /// A close frame with `status` (the broker ends the connection).
    pub fn close(&mut self, status: u16) {
        frame(&mut self.out, 0x88, &status.to_be_bytes());
    }

    /// Frame MQTT output as one binary frame into `out`.
    pub fn output(&mut self, mqtt: &[u8]) {
        frame(&mut self.out, 0x82, mqtt);
    }
}

/// Append a server frame (unmasked) with first byte `b0`.
fn frame(out: &mut Vec<u8>, b0: u8, payload: &[u8]) {
    out.push(b0);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    /// A client frame: masked with `mask`.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = Vec::new();
        frame(&mut v, b0, payload);
        let at = v.len() - payload.len();
        v[1] |= 0x80;
        let mut out = v[..at].to_vec();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn upgrade_answers_with_the_rfc_example_key() {
        let mut ws = WebSocket::new();
        let mut data = REQUEST.to_vec();
        assert_eq!(ws.input(&mut data), Ok(0));
        let out = String::from_utf8(ws.out.clone()).unwrap();
        assert!(out.starts_with("HTTP/1.1 101 "));
        // RFC 6455 section 1.3's worked example.
        assert!(out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(out.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    }

    #[test]
    fn packets_split_across_frames_and_several_in_one_frame() {
        let mut ws = WebSocket::new();
        let mqtt: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let mut stream = REQUEST.to_vec();
        stream.extend(client_frame(0x02, &mqtt[..10], [1, 2, 3, 4]));
        stream.extend(client_frame(0x80, &mqtt[10..300], [9, 8, 7, 6]));
        stream.extend(client_frame(0x89, b"ping!", [5, 5, 5, 5]));
        stream.extend(client_frame(0x82, &mqtt[300..], [0xff, 0, 0xaa, 0x55]));
        // Fed in every chunk size, the MQTT bytes come out whole and in order.
        for chunk in [1, 3, 7, 100, 4096, stream.len()] {
            let mut ws2 = WebSocket::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                let mut buf = c.to_vec();
                let n = ws2.input(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, mqtt, "chunk size {chunk}");
            assert!(ws2.out.ends_with(&[0x8A, 5, b'p', b'i', b'n', b'g', b'!']));
        }
        let mut buf = REQUEST.to_vec();
        ws.input(&mut buf).unwrap();
        ws.out.clear();
        ws.output(&mqtt[..200]);
        assert_eq!(&ws.out[..4], &[0x82, 126, 0, 200]);
    }

    #[test]
    fn bad_input_ends_the_connection_with_a_reason() {
        let mut ws = WebSocket::new();
        let mut data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(ws.input(&mut data), Err(End::BadRequest(_))));
        assert!(ws.out.starts_with(b"HTTP/1.1 400"));

        for (frame_bytes, status) in [
            (client_frame(0x81, b"text", [1, 1, 1, 1]), UNSUPPORTED_DATA),
            (vec![0x82, 0x01, 0x00], PROTOCOL_ERROR), // not masked
            (vec![0xC2, 0x80, 0, 0, 0, 0], PROTOCOL_ERROR), // reserved bit
            (client_frame(0x88, &[3], [1, 2, 3, 4]), PROTOCOL_ERROR), // 1-byte close payload
            (client_frame(0x89, &[0; 126], [1, 2, 3, 4]), PROTOCOL_ERROR), // long ping
            (client_frame(0x09, b"x", [1, 2, 3, 4]), PROTOCOL_ERROR), // fragmented ping
        ] {
            let mut ws = WebSocket::new();
            let mut data = REQUEST.to_vec();
            data.extend(frame_bytes);
            assert!(matches!(ws.input(&mut data), Err(End::Protocol(_))));
            assert!(ws.out.ends_with(&status.to_be_bytes()));
        }
        let mut ws = WebSocket::new();
        let mut data = REQUEST.to_vec();
        data.extend(client_frame(0x88, &1000u16.to_be_bytes(), [3, 3, 3, 3]));
        assert_eq!(ws.input(&mut data), Err(End::Closed));
        assert!(ws.out.ends_with(&[0x88, 2, 0x03, 0xE8]));
    }
}
