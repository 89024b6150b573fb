//! A reload (SIGHUP) hands over from the running executor to one built from the file read
//! again. A device declared exactly as before is taken over as it is — values, waiting and
//! running `exec` commands, counters — and is not announced again: re-publishing its retained
//! availability, values and state would look like a change to every automation watching
//! them. A new or changed device is announced as at start; a device no longer declared goes
//! `offline`.

use super::{Executor, Outbox};

impl Executor {
    /// Take over from `old`, the executor running until this reload. What goes away is
    /// announced into `out` now; what is new is announced by [`Executor::start`] next.
    pub fn take_over(&mut self, mut old: Executor, out: &mut Outbox) {
        // Other topics (a new prefix, discovery switched): every device is announced anew.
        let same_topics = old.opts.prefix == self.opts.prefix
            && old.opts.discovery == self.opts.discovery
            && old.opts.discovery_prefix == self.opts.discovery_prefix;
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
                    if i.is_none() || !same_topics {
                        let t = out.topic(&[&old.opts.prefix, &kept.decl.id, "availability"]);
                        let p = out.bytes.len();
                        out.bytes.extend_from_slice(b"offline");
                        out.end(t, p, true);
                    }
                    // Its program's result has no declaration to go to any more.
                    if let Some(mut r) = kept.running.take() {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                    }
                }
            }
        }
        if self.devices.iter().any(|d| d.running.is_some()) {
            self.next_poll = old.next_poll;
        }
        self.unknown_failed = old.unknown_failed;
    }
}
