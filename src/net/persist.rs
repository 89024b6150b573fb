//! Persistence, the event loop's side: opening the store at start, and writing each turn's
//! records (or a snapshot) before that turn's output leaves.

use super::*;

impl Server {
    /// Persistence is on and the broker has records not written yet.
    pub(super) fn journal_waiting(&self) -> bool {
        self.store.is_some() && self.broker.journal_waiting()
    }

    /// Write the journal records of this turn (or, when due, the whole state as a snapshot,
    /// which holds them too). At shutdown (`last`) the whole state becomes the snapshot. What
    /// cannot be written is held by the store and retried; the broker holds the
    /// acknowledgements that depend on it until it is written.
    pub(super) fn persist(&mut self, last: bool) {
        let Some(store) = &mut self.store else {
            return;
        };
        let now = Instant::now();
        self.records.clear();
        self.broker.take_journal(&mut self.records);
        if last || store.wants_snapshot(now) {
            self.records.clear();
            self.broker.snapshot(&mut self.records);
            store.snapshot(&self.records, now);
        } else {
            store.write(&self.records, now);
        }
        self.broker.journal_written(store.durable());
    }
}

/// Read the persisted state into `broker` and start the files anew from it.
pub(super) fn open_store(
    p: &crate::config::Persistence,
    devices: &crate::devices::Options,
    broker: &mut Broker,
) -> Result<crate::store::Store, StartError> {
    let loaded = crate::store::load(&p.location, &p.file).map_err(StartError)?;
    for w in &loaded.warnings {
        log::warn!("persistence: {w}");
    }
    match p.devices_only {
        true => broker.enable_device_journal(
            &devices.prefix,
            devices
                .discovery
                .then_some(devices.discovery_prefix.as_str()),
        ),
        false => broker.enable_journal(),
    }
    let (retained, sessions) = broker.restore(&loaded.records, Instant::now());
    let file = p.location.join(&p.file);
    match p.devices_only {
        true => log::info!(
            "persistence: the devices' last status ({retained} retained messages) restored from {}",
            file.display()
        ),
        false => log::info!(
            "persistence: {retained} retained messages and {sessions} sessions restored from {}",
            file.display()
        ),
    }
    let mut state = Vec::new();
    broker.snapshot(&mut state);
    crate::store::Store::open(&p.location, &p.file, &loaded, &state, p.sync).map_err(StartError)
}
