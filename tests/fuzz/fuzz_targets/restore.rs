//! Persistence replay: arbitrary record bodies, framed with correct checksums (so the fuzzer
//! gets past them), replayed into a broker in any order and then snapshot again. Records that
//! name unknown sessions or messages, repeat, or contradict each other must never panic.
//! The same frames are then damaged over a region (as a bad sector would) and what the reader
//! resynchronises on is replayed too, and so is whatever the reader finds in the raw input.
//! Input: a sequence of (length byte, body) pairs; its first two bytes also place the damage.
#![no_main]
use gatemq::broker::{Broker, BrokerConfig};
use gatemq::store::record;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fn replay(frames: &[u8]) {
    let now = Instant::now();
    let mut b = Broker::new(BrokerConfig::default(), now);
    b.enable_journal();
    b.restore(frames, now);
    let mut out = Vec::new();
    b.snapshot(&mut out);
    // The snapshot of what was restored reads back in full.
    let mut b2 = Broker::new(BrokerConfig::default(), now);
    b2.enable_journal();
    b2.restore(&out, now);
    // Home Assistant's removals stay bounded whatever the records say, and all come back.
    let kept = b.discovery_removals().len();
    assert!(kept <= gatemq::devices::removals::KEPT);
    assert_eq!(b2.discovery_removals().len(), kept);
    b.handle_timeout(now + std::time::Duration::from_secs(3600));
}

/// The intact frames `record::scan` finds in `data`.
fn scanned(data: &[u8]) -> Vec<u8> {
    let mut kept = Vec::new();
    record::scan(data, |f| kept.extend_from_slice(f));
    kept
}

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        record::frame_body(&mut frames, &tail[..n]);
        rest = &tail[n..];
    }
    replay(&frames);
    // Frames with correct checksums whose bodies are not records are damage to the reader.
    replay(&scanned(&frames));
    if let [a, b, ..] = *data {
        let at = a as usize * frames.len() / 256;
        let end = (at + 1 + b as usize % 64).min(frames.len());
        let mut bad = frames.clone();
        bad[at..end].iter_mut().for_each(|x| *x = !*x);
        replay(&scanned(&bad));
    }
    replay(&scanned(data));
});
