//! A reload (SIGHUP) hands over from the running executor to one built from the file read
//! again. A device declared exactly as before is taken over as it is — values, waiting and
//! running `exec` commands, counters — and is not announced again: re-publishing its retained
//! availability, values and state would look like a change to every automation watching
//! them. A new or changed device is announced as at start. What is no longer declared — a
//! device, or a command of a changed device — is removed: its retained status, state and
//! availability topics and its Home Assistant discovery configs are cleared (an empty
//! retained message), which makes Home Assistant drop the entity and an emptied device.

use super::decl::Device;
use super::{config_topics, Executor, Options, Outbox};

impl Executor {
    /// Take over from `old`, the executor running until this reload. What goes away is
    /// announced into `out` now; what is new is announced by [`Executor::start`] next.
    pub fn take_over(&mut self, mut old: Executor, out: &mut Outbox) {
        // Other topics (a new prefix, discovery switched): every device is announced anew.
        let same_topics = old.opts.prefix == self.opts.prefix
            && old.opts.discovery == self.opts.discovery
            && old.opts.discovery_prefix == self.opts.discovery_prefix;
        // What the old declarations announced, for what is removed now.
        let mut announced = Outbox::default();
        if old.opts.discovery {
            for d in 0..old.devices.len() {
                old.announce_discovery(d, &mut announced);
            }
        }
        self.removed = std::mem::take(&mut old.removed);
        let cleared_before = out.msgs.len();
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
                    match i {
                        Some(i) if same_topics => {
                            clear_removed(&old.opts, &kept.decl, Some(&self.devices[i].decl), out)
                        }
                        _ => clear_removed(&old.opts, &kept.decl, None, out),
                    }
                    // Its program's result has no declaration to go to any more.
                    if let Some(mut r) = kept.running.take() {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                    }
                }
            }
        }
        let cleared: Vec<&str> = out.msgs[cleared_before..]
            .iter()
            .map(|m| std::str::from_utf8(&out.bytes[m.topic.clone()]).unwrap_or(""))
            .collect();
        for (topic, config, _, _) in announced.iter() {
            if cleared.contains(&topic) {
                self.remember_removed(topic, config);
            }
        }
        if self.devices.iter().any(|d| d.running.is_some()) {
            self.next_poll = old.next_poll;
        }
        self.unknown_failed = old.unknown_failed;
    }
}

/// Removed discovery configs kept for Home Assistant's next start: at most this many.
const REMOVED_KEPT: usize = 256;

impl Executor {
    fn remember_removed(&mut self, topic: &str, config: &[u8]) {
        self.removed.retain(|(t, _)| &**t != topic);
        if self.removed.len() == REMOVED_KEPT {
            self.removed.pop_front();
        }
        self.removed.push_back((topic.into(), config.into()));
    }

    /// Home Assistant says `online` (it started): it drops an entity only on a clear it gets
    /// while connected, and only one it discovered since its start. So each removed config
    /// goes out again, not retained, followed by its clear.
    pub(super) fn resend_removals(&self, out: &mut Outbox) {
        for (topic, config) in &self.removed {
            let t = out.topic(&[topic]);
            let p = out.bytes.len();
            out.bytes.extend_from_slice(config);
            out.end(t, p, false);
            let t = out.topic(&[topic]);
            let p = out.bytes.len();
            out.end(t, p, true);
        }
    }
}

/// Clear what `old` had announced and `new` (the same device as declared now, if it still is,
/// under the same topics) does not have any more: every command gone or announced as another
/// component, and, for a device gone, its state, availability and command result event.
fn clear_removed(opts: &Options, old: &Device, new: Option<&Device>, out: &mut Outbox) {
    let mut clear = |parts: &[&str]| {
        let t = out.topic(parts);
        let p = out.bytes.len();
        out.end(t, p, true);
    };
    let (pre, id) = (&*opts.prefix, &*old.id);
    for cmd in &old.commands {
        if new.is_none_or(|n| !n.commands.iter().any(|c| c.name == cmd.name)) {
            clear(&[pre, id, &cmd.name]);
        }
    }
    if new.is_none() {
        clear(&[pre, id, "state"]);
        clear(&[pre, id, "availability"]);
    }
    // Every config it was announced with that it is not announced with now.
    let now = new.map(|n| config_topics(opts, n)).unwrap_or_default();
    for topic in config_topics(opts, old) {
        if !now.contains(&topic) {
            clear(&[&topic]);
        }
    }
}
