//! A device's own availability (`availability_topic`): what the device reports there (Tasmota's
//! LWT `Online`/`Offline`, Zigbee2MQTT's `{"state":"online"}` with `availability_key`) becomes
//! `<prefix>/<device>/availability`, instead of "online while gatemq runs". Until it has
//! reported, the device is `offline`: a plug that does not exist is not shown as there.

use super::{json, scalar_text, Executor, Outbox};

impl Executor {
    /// Is `topic` a device's availability topic?
    pub(super) fn is_availability_topic(&self, topic: &str) -> bool {
        !self.availability_topics.is_empty() && self.availability_topics.contains_key(topic)
    }

    /// The availability each device last reported, from `last(topic)`: the retained message a
    /// running or restarted broker holds (a device's LWT is retained). Before [`Executor::start`].
    pub fn adopt_availability(&mut self, mut last: impl FnMut(&str) -> Option<Vec<u8>>) {
        for d in 0..self.devices.len() {
            let Some(a) = &self.devices[d].decl.availability else {
                continue;
            };
            if let Some(payload) = last(&a.topic) {
                if let Some(online) = self.parse_availability(d, &payload) {
                    self.devices[d].online = Some(online);
                }
            }
        }
    }

    /// A report on an availability topic: each device it is for that changes is announced.
    pub(super) fn on_availability(&mut self, topic: &str, payload: &[u8], out: &mut Outbox) {
        let Some(targets) = self.availability_topics.get(topic) else {
            return;
        };
        for i in 0..targets.len() {
            let d = self.availability_topics[topic][i];
            match self.parse_availability(d, payload) {
                Some(online) if self.devices[d].online != Some(online) => {
                    self.devices[d].online = Some(online);
                    self.publish_availability(d, out);
                }
                Some(_) => {}
                None => log::debug!("{topic}: ignored availability report"),
            }
        }
    }

    /// `online`/`offline` from device `d`'s report, or None for anything else.
    fn parse_availability(&mut self, d: usize, payload: &[u8]) -> Option<bool> {
        let a = self.devices[d].decl.availability.as_ref()?;
        let text = std::str::from_utf8(payload).ok()?.trim();
        let value = match &a.key {
            None => text,
            Some(key) => {
                let (_, v) = json::members(text)
                    .filter_map(Result::ok)
                    .find(|(k, _)| *k == &**key)?;
                if !scalar_text(v, &mut self.text) {
                    return None;
                }
                self.text.as_str()
            }
        };
        if value == &*a.available {
            Some(true)
        } else if value == &*a.not_available {
            Some(false)
        } else {
            None
        }
    }

    /// `<prefix>/<device>/availability`, retained: gatemq's own (`online` while it runs) or,
    /// for a device with `availability_topic`, what the device last reported (else `offline`).
    pub(super) fn publish_availability(&self, d: usize, out: &mut Outbox) {
        let dev = &self.devices[d];
        let online = dev.decl.availability.is_none() || dev.online == Some(true);
        let t = out.topic(&[&self.opts.prefix, &dev.decl.id, "availability"]);
        let p = out.bytes.len();
        out.bytes
            .extend_from_slice(if online { b"online" } else { b"offline" });
        out.end(t, p, true);
    }
}
