//! Persistence replay: arbitrary record bodies, framed with correct checksums (so the fuzzer
//! gets past them), replayed into a broker in any order and then snapshot again. Records that
//! name unknown sessions or messages, repeat, or contradict each other must never panic.
//! Input: a sequence of (length byte, body) pairs.
#![no_main]
use gatemq::broker::{Broker, BrokerConfig};
use gatemq::store::record;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        record::frame_body(&mut frames, &tail[..n]);
        rest = &tail[n..];
    }
    let now = Instant::now();
    let mut b = Broker::new(BrokerConfig::default(), now);
    b.enable_journal();
    b.restore(&frames, now);
    let mut out = Vec::new();
    b.snapshot(&mut out);
    // The snapshot of what was restored reads back in full.
    let mut b2 = Broker::new(BrokerConfig::default(), now);
    b2.enable_journal();
    b2.restore(&out, now);
    b.handle_timeout(now + std::time::Duration::from_secs(3600));
});
