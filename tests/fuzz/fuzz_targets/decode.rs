//! The codec: frame arbitrary bytes like the event loop does and decode every whole packet at
//! each protocol level, walking everything a decoded view offers. Must never panic.
#![no_main]
use gatemq::net::ws::WebSocket;
use gatemq::wire::client::{decode_server, ServerPacket};
use gatemq::wire::{frame_len, Packet};
use libfuzzer_sys::fuzz_target;

/// A valid WebSocket upgrade: what follows it in an input is fuzzed as frames.
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    // The WebSocket codec: an upgrade request, then frames, fed in two pieces.
    for prefix in [&b""[..], UPGRADE] {
        let mut ws = WebSocket::new();
        let mut bytes = [prefix, data].concat();
        let cut = data.first().map_or(0, |&b| b as usize).min(bytes.len());
        let (a, b) = bytes.split_at_mut(cut);
        if let Ok(n) = ws.input(a) {
            assert!(n <= a.len());
            if let Ok(n) = ws.input(b) {
                assert!(n <= b.len());
            }
        }
    }
    for level in [0u8, 3, 4, 5] {
        let mut rest = data;
        while let Ok(Some(f)) = frame_len(rest, 1 << 20) {
            if f.total_len > rest.len() {
                break;
            }
            if let Ok(p) = Packet::decode(&rest[..f.total_len], f.header_len, level) {
                walk(&p);
            }
            // What an upstream broker sends a bridge.
            if let Ok(Some(ServerPacket::ConnAck { properties, .. })) =
                decode_server(&rest[..f.total_len], f.header_len, level == 5)
            {
                let _ = properties.iter().count();
            }
            rest = &rest[f.total_len..];
        }
    }
});

fn walk(p: &Packet<'_>) {
    match p {
        Packet::Connect(c) => {
            let _ = c.is_supported_level();
            let _ = c.properties.iter().count();
            if let Some(w) = &c.will {
                let _ = w.properties.iter().count();
            }
        }
        Packet::Publish(p) => {
            let _ = p.properties.iter().count();
        }
        Packet::Subscribe(s) => {
            for (f, o) in s.filters.clone() {
                let _ = (f.len(), o.qos(), o.no_local(), o.retain_handling());
            }
            let _ = s.properties.iter().count();
        }
        Packet::Unsubscribe(u) => {
            let _ = u.filters.clone().count();
        }
        Packet::Disconnect(d) => {
            let _ = d.properties.iter().count();
        }
        Packet::Auth(a) => {
            let _ = a.properties.iter().count();
        }
        _ => {}
    }
}
