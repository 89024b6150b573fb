//! What happens when a PUBLISH lands on a device topic: the executor (`crate::devices`) is
//! told, and what it publishes back (status, state, responses, adapter commands) is routed.

use super::message::MsgId;
use super::{publish, Broker, ConnId};
use crate::devices::{Executor, Observed};
use std::time::Instant;

impl Broker {
    /// Hand the device declarations to the broker; announces availability, initial values and
    /// Home Assistant discovery at once (at a reload: of the devices that are new or changed).
    pub fn set_devices(&mut self, mut ex: Executor) {
        // The last values a restart (persistence) or a reload kept, from the retained status
        // topics `<prefix>/<device>/<command>`.
        let prefix = ex.options().prefix.clone();
        let (retained, pool) = (&self.retained, &self.pool);
        ex.adopt_values(|device, command| {
            let mut found = None;
            let topic = format!("{prefix}/{device}/{command}");
            retained.for_each_match(&topic, &mut |m| {
                found = std::str::from_utf8(pool.get(m).payload())
                    .ok()
                    .map(String::from);
            });
            found
        });
        ex.adopt_availability(|topic| {
            let mut found = None;
            retained.for_each_match(topic, &mut |m| found = Some(pool.get(m).payload().to_vec()));
            found
        });
        match self.devices.take() {
            Some(old) => ex.take_over(*old, self.now, &mut self.device_out),
            None => {
                // At start: the removals HA may not have seen, and what gatemq announced
                // before it stopped (the store kept both).
                ex.adopt_removals(std::mem::take(&mut self.parked_removals));
                let mut before = Vec::new();
                let mut filters = vec![format!("{prefix}/#")];
                filters.push(format!("{}/#", ex.options().discovery_prefix));
                for f in &filters {
                    retained.for_each_match(f, &mut |m| {
                        let m = pool.get(m);
                        before.push((m.topic_str().to_string(), m.payload().to_vec()));
                    });
                }
                ex.adopt_announced(&before, self.now, &mut self.device_out);
            }
        }
        ex.start(&mut self.device_out);
        self.devices = Some(Box::new(ex));
        flush(self, None);
    }

    /// A reload removed the devices file: its devices are announced `offline`, and commands
    /// are ordinary messages from now on.
    pub fn clear_devices(&mut self) {
        self.stopping();
        // The removals stay kept (and in the store) for devices declared again.
        if let Some(mut ex) = self.devices.take() {
            self.parked_removals = std::mem::take(ex.removals_mut());
        }
    }

    /// The broker is shutting down: devices are announced `offline`.
    pub fn stopping(&mut self) {
        if let Some(ex) = self.devices.as_mut() {
            ex.stop(&mut self.device_out);
            flush(self, None);
        }
    }

    /// The loop was woken by a helper thread: a reading's file may have been read.
    pub fn devices_woken(&mut self, now: Instant) {
        if let Some(ex) = self.devices.as_mut() {
            ex.on_wake(now, &mut self.device_out);
            flush(self, None);
        }
    }

    /// A child process ended (SIGCHLD): an `exec` action may be done.
    pub fn children_exited(&mut self, now: Instant) {
        if let Some(ex) = self.devices.as_mut() {
            ex.on_child_exit(now, &mut self.device_out);
            flush(self, None);
        }
    }
}

/// Which executor topic `topic` is, if any.
pub(super) fn observed(b: &Broker, topic: &str) -> Observed {
    b.devices
        .as_ref()
        .map_or(Observed::No, |ex| ex.observes(topic))
}

/// Whether a command message is also routed to ordinary subscribers.
pub(super) fn route_commands(b: &Broker) -> bool {
    b.devices
        .as_ref()
        .is_none_or(|ex| ex.options().route_commands)
}

/// `from` is the connection that sent the command (none for an MQTT-SN QoS -1 publish): what the executor publishes in answer
/// counts as its traffic, so a full subscriber queue pauses it (see `publish::deliver`).
/// `reply` is an MQTT 5 command's Response Topic and Correlation Data.
pub(super) fn on_publish(
    b: &mut Broker,
    topic: &str,
    payload: &[u8],
    now: Instant,
    from: Option<ConnId>,
    reply: Option<(&str, Option<&[u8]>)>,
) {
    if let Some(ex) = b.devices.as_mut() {
        ex.on_publish(topic, payload, now, &mut b.device_out, reply);
        flush(b, from);
    }
}

/// A will on an executor topic, its payload read in place from the pool (the caller still
/// holds it): as [`on_publish`] from no connection.
pub(super) fn on_will(b: &mut Broker, topic: &str, w: MsgId) {
    if let Some(ex) = b.devices.as_mut() {
        ex.on_publish(
            topic,
            b.pool.get(w).payload(),
            b.now,
            &mut b.device_out,
            None,
        );
        flush(b, None);
    }
}

pub(super) fn on_timeout(b: &mut Broker, now: Instant) {
    if let Some(ex) = b.devices.as_mut() {
        if ex.next_deadline().is_some_and(|t| t <= now) {
            ex.on_timeout(now, &mut b.device_out);
            flush(b, None);
        }
    }
}

/// Route what the executor published. Its buffers are taken for the duration and put back
/// with their capacity, so this allocates nothing once warm.
fn flush(b: &mut Broker, from: Option<ConnId>) {
    b.journal_removals();
    if b.device_out.is_empty() {
        return;
    }
    let mut out = std::mem::take(&mut b.device_out);
    for (topic, payload, retain, props) in out.iter() {
        if props.is_empty() {
            publish::route(b, topic, payload, 1, retain, from, None);
        } else {
            // A response to an MQTT 5 Response Topic, with its Correlation Data.
            let m = b.pool.store_with(topic, &[props], payload, 1, retain, None);
            publish::route_stored(b, topic, m, from);
            b.pool.release(m);
        }
    }
    out.clear();
    b.device_out = out;
}
