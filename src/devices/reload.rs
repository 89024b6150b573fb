//! What was announced before, and clearing what is no longer declared.
//!
//! A reload (SIGHUP) hands over from the running executor to one built from the file read
//! again. A device declared exactly as before is taken over as it is — values, readings,
//! waiting and running `exec` commands, counters — and is not announced again: re-publishing
//! its retained availability, values and state would look like a change to every automation
//! watching them. A new or changed device is announced as at start. What is no longer declared
//! — a device, or a command or reading of a changed device — is removed: its retained status,
//! state and availability topics are cleared (an empty retained message), a device gone has
//! its Home Assistant config cleared, and a component gone is announced as a removal (its
//! device's config with it as `{"p": "<platform>"}` only); Home Assistant then drops the
//! entity, and an emptied device.
//!
//! At start, what gatemq announced before it stopped is read back from the retained store
//! (the devices store keeps gatemq's discovery configs, see `broker/persist.rs`): configs of
//! devices, components and status topics not declared any more are cleared the same way, and
//! the single-component configs of an older gatemq (`<prefix>/<platform>/<device>/<key>/config`)
//! are migrated to the device config (`{"migrate_discovery": true}`, then cleared).
//!
//! Home Assistant acts on a removal only while connected, and only for what it discovered
//! since its own start: each removal is remembered with what the topic said before (kept in
//! the store until HA has surely had it, `removals.rs`), and when HA says it (re)started (its
//! birth message), the old configs and the removals go out again, then the current device
//! configs, then the clears.

use super::decl::{Action, Device};
use super::discovery::{self, Component};
use super::{Executor, Options, Outbox};
use std::time::Instant;

impl Executor {
    /// Take over from `old`, the executor running until this reload. What goes away is
    /// announced into `out` now; what is new is announced by [`Executor::start`] next.
    pub fn take_over(&mut self, mut old: Executor, now: Instant, out: &mut Outbox) {
        // Other topics (a new prefix, discovery switched): every device is announced anew.
        let same_topics = old.opts.prefix == self.opts.prefix
            && old.opts.discovery == self.opts.discovery
            && old.opts.discovery_prefix == self.opts.discovery_prefix;
        self.removals = std::mem::take(&mut old.removals);
        // File reads in flight (of readings kept) answer on the old channel.
        let waker = self.reader.waker.take();
        std::mem::swap(&mut self.reader, &mut old.reader);
        if waker.is_some() {
            self.reader.waker = waker;
        }
        // Threads of file readings whose device changed or went (`reading.rs`).
        let mut workers = Vec::new();
        for mut kept in old.devices.drain(..) {
            let i = self.by_id.get(&kept.decl.id).copied();
            match i {
                Some(i) if same_topics && self.devices[i].decl == kept.decl => {
                    kept.announced = true;
                    self.devices[i] = kept;
                    // Its files are read again: what changed there is published.
                    let changed = self.read_back_files(i);
                    for &c in &changed {
                        self.publish_value(i, c, out);
                    }
                    if !changed.is_empty() {
                        self.publish_state(i, out);
                    }
                }
                _ => {
                    let declared = i
                        .filter(|_| same_topics)
                        .map(|i| self.devices[i].decl.clone());
                    clear_status(&old.opts, &kept.decl, declared.as_ref(), out);
                    if old.opts.discovery {
                        let mut said = Outbox::default();
                        discovery::announce(&old.opts, &kept.decl, true, &mut said);
                        let (topic, config, _, _) = said.iter().next().expect("announced");
                        let before = discovery::components(&kept.decl);
                        match declared {
                            Some(dev) if self.opts.discovery => {
                                self.lose(&dev, before, topic, config, now, out)
                            }
                            _ => {
                                clear(out, topic);
                                self.removals.remember(topic, config, now);
                            }
                        }
                    }
                    // Its program's result has no declaration to go to any more.
                    if let Some(mut r) = kept.running.take() {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                    }
                    for (r, decl) in kept.readings.iter_mut().zip(&kept.decl.readings) {
                        workers.extend(r.take_worker(decl));
                        r.stop();
                    }
                }
            }
        }
        self.hand_over_workers(workers);
        if self.devices.iter().any(|d| d.running.is_some()) {
            self.next_poll = old.next_poll;
        }
        self.unknown_failed = old.unknown_failed;
    }

    /// Device `dev` (declared now) was announced with `before` in `config` on `topic`: the
    /// components it does not have any more (or has as another platform) are removed.
    fn lose(
        &mut self,
        dev: &Device,
        mut before: Vec<Component>,
        topic: &str,
        config: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) {
        let has = discovery::components(dev);
        before.retain(|c| !has.contains(c));
        if before.is_empty() {
            return;
        }
        let start = out.msgs.len();
        discovery::announce_removals(&self.opts, dev, &before, out);
        let removal = out.iter().nth(start).map(|(_, p, _, _)| p.to_vec());
        self.removals.remember(topic, config, now);
        if let Some(removal) = removal {
            self.removals.remember(topic, &removal, now);
        }
    }

    /// At start, before [`Executor::start`]: the retained topics under the devices prefix and
    /// gatemq's discovery configs, as the retained store holds them from before. What is not
    /// declared any more is cleared into `out`.
    pub fn adopt_announced(
        &mut self,
        retained: &[(String, Vec<u8>)],
        now: Instant,
        out: &mut Outbox,
    ) {
        let pre = format!("{}/", self.opts.prefix);
        // Devices gatemq announced and that are not declared any more: each had its
        // availability (`online`/`offline`, as gatemq writes it) and its JSON state. Other
        // retained topics under the prefix are not gatemq's to clear.
        let held = |topic: &str| retained.iter().find(|(t, _)| t == topic).map(|(_, p)| p);
        let gone: Vec<&str> = retained
            .iter()
            .filter(|(_, p)| p == b"online" || p == b"offline")
            .filter_map(|(t, _)| t.strip_prefix(&pre)?.strip_suffix("/availability"))
            .filter(|id| !id.contains('/') && !self.by_id.contains_key(*id))
            .filter(|id| held(&format!("{pre}{id}/state")).is_some_and(|s| s.starts_with(b"{")))
            .collect();
        for (topic, payload) in retained {
            if let Some(rest) = topic.strip_prefix(&pre) {
                if self.stale_status(topic, rest, &gone) {
                    clear(out, topic);
                }
                continue;
            }
            if !discovery::is_ours(payload) {
                continue;
            }
            let Some((id, component)) = discovery::parse_topic(&self.opts, topic) else {
                continue;
            };
            let declared = self
                .by_id
                .get(id)
                .map(|&d| self.devices[d].decl.clone())
                .filter(|_| self.opts.discovery);
            match (component, declared) {
                (None, Some(dev)) => {
                    let before = discovery::announced_components(payload)
                        .into_iter()
                        .filter_map(|(key, platform)| component_of(&key, &platform))
                        .collect();
                    self.lose(&dev, before, topic, payload, now, out);
                }
                (Some((platform, key)), Some(dev))
                    if discovery::components(&dev)
                        .iter()
                        .any(|c| c.platform == platform && &*c.key == key) =>
                {
                    // Home Assistant moves the entity over to the device config, keeping it.
                    let t = out.topic(&[topic]);
                    let p = out.bytes.len();
                    out.bytes.extend_from_slice(MIGRATE);
                    out.end(t, p, false);
                    self.removals.remember(topic, MIGRATE, now);
                    self.migrated.push(topic.clone());
                }
                _ => {
                    clear(out, topic);
                    self.removals.remember(topic, payload, now);
                }
            }
        }
    }

    /// Is `topic` (a retained topic under the devices prefix, `rest` after it) the status of
    /// something not declared any more: of a device in `gone`, or of a command or reading a
    /// declared device does not have? A topic the device itself reports on or is commanded on
    /// (its availability or state topic, a command's state topic or `publish` topic) is the
    /// device's, wherever it is.
    fn stale_status(&self, topic: &str, rest: &str, gone: &[&str]) -> bool {
        let Some((id, level)) = rest.split_once('/') else {
            return false;
        };
        if gone.contains(&id) {
            return true;
        }
        let Some(&d) = self.by_id.get(id) else {
            return false;
        };
        let dev = &self.devices[d].decl;
        let own = |t: Option<&str>| t == Some(topic);
        let reported = own(dev.availability.as_ref().map(|a| &*a.topic))
            || own(dev.state_topic.as_deref())
            || dev.commands.iter().any(|c| {
                own(c.state_topic.as_deref())
                    || matches!(&c.action, Action::Publish { topic: t, .. } if **t == *topic)
            });
        !level.contains('/')
            && !matches!(level, "state" | "availability")
            && !dev.commands.iter().any(|c| &*c.name == level)
            && !dev.readings.iter().any(|r| &*r.name == level)
            && !reported
    }
}

/// What asks Home Assistant to move a single-component entity to a device config.
const MIGRATE: &[u8] = b"{\"migrate_discovery\":true}";

/// A component as read back from a config: known platforms only.
fn component_of(key: &str, platform: &str) -> Option<Component> {
    const PLATFORMS: [&str; 11] = [
        "switch",
        "number",
        "select",
        "button",
        "text",
        "light",
        "fan",
        "cover",
        "event",
        "sensor",
        "binary_sensor",
    ];
    let platform = PLATFORMS.iter().find(|p| **p == platform)?;
    Some(Component {
        platform,
        key: key.into(),
    })
}

fn clear(out: &mut Outbox, topic: &str) {
    let t = out.topic(&[topic]);
    let p = out.bytes.len();
    out.end(t, p, true);
}

impl Executor {
    /// Home Assistant says `online` (it started): it drops an entity only on a removal it gets
    /// while connected, and only for one it discovered since its start. So each removed
    /// config goes out again (not retained), then every device config as it is now, then the
    /// clears of the topics no device config is on.
    pub(super) fn resend_removals(&mut self, now: Instant, out: &mut Outbox) {
        self.removals.ha_online(now);
        if self.removals.is_empty() || !self.opts.discovery {
            return;
        }
        for (topic, config) in self.removals.iter() {
            let t = out.topic(&[topic]);
            let p = out.bytes.len();
            out.bytes.extend_from_slice(config);
            out.end(t, p, false);
        }
        let mut current = Vec::new();
        for d in 0..self.devices.len() {
            self.announce_discovery(d, false, out);
            current.push(discovery::device_topic(
                &self.opts,
                &self.devices[d].decl.id,
            ));
        }
        for (i, (topic, _)) in self.removals.iter().enumerate() {
            let again = self.removals.iter().take(i).any(|(t, _)| t == topic);
            if !again && !current.iter().any(|c| **c == *topic) {
                clear(out, topic);
            }
        }
    }
}

/// Clear the status topics of what `old` had and `new` (the same device as declared now, if it
/// still is, under the same topics) does not have any more: every command and reading gone,
/// and for a device gone, its state and availability.
fn clear_status(opts: &Options, old: &Device, new: Option<&Device>, out: &mut Outbox) {
    let (pre, id) = (&*opts.prefix, &*old.id);
    let has = |name: &str| {
        new.is_some_and(|n| {
            n.commands.iter().any(|c| &*c.name == name)
                || n.readings.iter().any(|r| &*r.name == name)
        })
    };
    let names = old
        .commands
        .iter()
        .map(|c| &c.name)
        .chain(old.readings.iter().map(|r| &r.name));
    for name in names {
        if !has(name) {
            clear(out, &format!("{pre}/{id}/{name}"));
        }
    }
    if new.is_none() {
        clear(out, &format!("{pre}/{id}/state"));
        clear(out, &format!("{pre}/{id}/availability"));
    }
}
