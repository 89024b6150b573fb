//! The discovery removals Home Assistant may not have seen, kept until it has.
//!
//! Home Assistant acts on a removal (a cleared config, or a device config with a component as
//! `{"p": "<platform>"}` only) only while it is connected, and only for what it discovered
//! since its own start. A removal made while HA was down, or while gatemq itself was stopped,
//! would leave an orphan entity in HA's registry for ever: so each one is kept here with what
//! the topic said before, and when HA says it (re)started (its birth message) the old configs
//! go out again, then the removals and clears (`reload.rs`).
//!
//! They are kept in the store gatemq keeps its own discovery configs in (the journal, or the
//! devices store with `persistence false`): a `DiscoveryRemoval` record when one is made, a
//! `DiscoveryRemovalDone` record when it is dropped; the snapshot holds the ones kept. So a
//! restart, or `kill -9`, before HA is back loses none.
//!
//! When is one dropped? At most [`KEPT`] are kept: a newer one pushes the oldest out. And once
//! HA has had it for sure: its clear went out while HA was online (HA's birth `online` seen,
//! no `offline` since, which is HA's last will and what it leaves on its way out), either
//! when it was made or in answer to a birth, and HA then stayed online for [`HEARD_AFTER`].
//! The wait covers HA writing its registries (10 s after a change; 3 min while it starts)
//! and a dead HA being noticed by the broker (1.5 × its keep-alive, 90 s by default): an HA
//! that dies before its registry is written sends its will first, and the removal is kept.
//! A removal dropped too early would cost an orphan entity; one kept too long costs one more
//! replay (the entity created and removed again at HA's next birth).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Removals kept for Home Assistant's next start: at most this many.
pub const KEPT: usize = 256;
/// A removal whose clear HA got is dropped once HA has stayed online this long after it.
pub const HEARD_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Removals {
    /// Oldest first: the order they go out in again.
    list: VecDeque<Removal>,
    /// The last id given (ids survive restarts through the records).
    last_id: u64,
    /// Kept and dropped since the journal last took them (ids), oldest first.
    changes: Vec<(u64, bool)>,
    /// Home Assistant's birth came and its last will has not (since gatemq started).
    ha_online: bool,
}

#[derive(Debug)]
struct Removal {
    id: u64,
    topic: Box<str>,
    config: Box<[u8]>,
    /// When its clear last went out while HA was online.
    heard: Option<Instant>,
}

/// A change for the journal.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Kept {
        id: u64,
        topic: &'a str,
        config: &'a [u8],
    },
    Done {
        id: u64,
    },
}

impl Removals {
    /// `topic`, which said `config`, was just cleared (or `config` is the removal announced on
    /// it). The same pair made again is kept as new: HA needs to see it again.
    pub fn remember(&mut self, topic: &str, config: &[u8], now: Instant) {
        if let Some(i) = self
            .list
            .iter()
            .position(|r| &*r.topic == topic && *r.config == *config)
        {
            self.drop_at(i);
        }
        if self.list.len() == KEPT {
            self.drop_at(0);
        }
        self.last_id = self.last_id.wrapping_add(1);
        self.list.push_back(Removal {
            id: self.last_id,
            topic: topic.into(),
            config: config.into(),
            heard: self.ha_online.then_some(now),
        });
        self.changes.push((self.last_id, true));
    }

    fn drop_at(&mut self, i: usize) {
        if let Some(r) = self.list.remove(i) {
            self.changes.push((r.id, false));
        }
    }

    /// The removals, oldest first: (topic, what it said).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.list.iter().map(|r| (&*r.topic, &*r.config))
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Home Assistant's birth: every removal is sent again now, while it listens.
    pub fn ha_online(&mut self, now: Instant) {
        self.ha_online = true;
        for r in &mut self.list {
            r.heard = Some(now);
        }
    }

    /// Home Assistant went away (its last will, or anything but `online` on its status
    /// topic): what it got lately may not be in its registry.
    pub fn ha_offline(&mut self) {
        self.ha_online = false;
        for r in &mut self.list {
            r.heard = None;
        }
    }

    /// When a removal HA got is next due to be dropped.
    pub fn deadline(&self) -> Option<Instant> {
        let first = self.list.iter().filter_map(|r| r.heard).min()?;
        Some(first + HEARD_AFTER)
    }

    /// Drop the removals HA has had for [`HEARD_AFTER`] while online.
    pub fn drop_heard(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].heard.is_some_and(|t| t + HEARD_AFTER <= now) {
                self.drop_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Hand the changes since the last call to `f` (the journal), oldest first.
    pub fn take_changes(&mut self, mut f: impl FnMut(Change<'_>)) {
        if self.changes.is_empty() {
            return;
        }
        for &(id, kept) in &self.changes {
            if !kept {
                f(Change::Done { id });
            } else if let Some(r) = self.list.iter().find(|r| r.id == id) {
                f(Change::Kept {
                    id,
                    topic: &r.topic,
                    config: &r.config,
                });
            }
        }
        self.changes.clear();
    }

    /// Every removal kept, as the changes that make it (a snapshot).
    pub fn for_each(&self, mut f: impl FnMut(Change<'_>)) {
        for r in &self.list {
            f(Change::Kept {
                id: r.id,
                topic: &r.topic,
                config: &r.config,
            });
        }
    }

    /// Replay a record at start. Whatever the records say (repeated, contradicting, more than
    /// [`KEPT`]), the memory stays as bounded as when they were written.
    pub fn restore(&mut self, change: Change<'_>) {
        match change {
            Change::Kept { id, topic, config } => {
                self.list
                    .retain(|r| r.id != id && !(&*r.topic == topic && *r.config == *config));
                if self.list.len() == KEPT {
                    self.list.pop_front();
                }
                self.list.push_back(Removal {
                    id,
                    topic: topic.into(),
                    config: config.into(),
                    heard: None,
                });
                self.last_id = self.last_id.max(id);
            }
            Change::Done { id } => self.list.retain(|r| r.id != id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(r: &mut Removals) -> Vec<(u64, bool)> {
        let mut v = Vec::new();
        r.take_changes(|c| {
            v.push(match c {
                Change::Kept { id, .. } => (id, true),
                Change::Done { id } => (id, false),
            })
        });
        v
    }

    #[test]
    fn bounded_and_the_same_removal_again_is_new() {
        let now = Instant::now();
        let mut r = Removals::default();
        for i in 0..KEPT + 2 {
            r.remember(&format!("t/{i}"), b"c", now);
        }
        assert_eq!(r.len(), KEPT);
        assert_eq!(r.iter().next().unwrap().0, "t/2");
        let changes = kept(&mut r);
        assert_eq!(changes.len(), KEPT + 2);
        assert!(changes.contains(&(1, false)) && changes.contains(&(2, false)));
        // Kept and dropped in the same turn: only the drop is written.
        assert!(!changes.contains(&(1, true)));
        r.remember("t/5", b"c", now);
        assert_eq!(kept(&mut r), [(6, false), (KEPT as u64 + 3, true)]);
        assert_eq!(r.iter().last().unwrap().0, "t/5");
        assert_eq!(r.len(), KEPT);
    }

    #[test]
    fn dropped_only_once_home_assistant_stayed_online_after_it_got_them() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.remember("a", b"1", t0);
        r.remember("b", b"2", t0);
        kept(&mut r);
        assert_eq!(r.deadline(), None, "HA has not been heard from");
        r.ha_online(t0);
        assert_eq!(r.deadline(), Some(t0 + HEARD_AFTER));
        // Made while HA listens: it gets the clear now.
        let t1 = t0 + Duration::from_secs(60);
        r.remember("c", b"3", t1);
        // HA goes (its will) before its registry is surely written: all kept.
        r.ha_offline();
        assert_eq!(r.deadline(), None);
        r.drop_heard(t0 + HEARD_AFTER * 2);
        assert_eq!(r.len(), 3);
        // Back (its birth: everything is sent again), and it stays.
        let t2 = t1 + Duration::from_secs(60);
        r.ha_online(t2);
        let t3 = t2 + Duration::from_secs(30);
        r.remember("d", b"4", t3);
        kept(&mut r);
        r.drop_heard(t2 + HEARD_AFTER - Duration::from_millis(1));
        assert_eq!(r.len(), 4);
        r.drop_heard(t2 + HEARD_AFTER);
        assert_eq!(r.iter().map(|(t, _)| t).collect::<Vec<_>>(), ["d"]);
        assert_eq!(kept(&mut r), [(1, false), (2, false), (3, false)]);
        assert_eq!(r.deadline(), Some(t3 + HEARD_AFTER));
        r.drop_heard(t3 + HEARD_AFTER);
        assert!(r.is_empty() && r.deadline().is_none());
    }

    #[test]
    fn replay_is_bounded_and_ids_go_on() {
        let mut r = Removals::default();
        for id in 1..=KEPT as u64 + 10 {
            r.restore(Change::Kept {
                id,
                topic: "t",
                config: &id.to_le_bytes(),
            });
        }
        r.restore(Change::Kept {
            id: 300,
            topic: "t",
            config: b"x",
        });
        r.restore(Change::Kept {
            id: 300,
            topic: "t",
            config: b"y",
        });
        r.restore(Change::Done { id: 20 });
        r.restore(Change::Done { id: 12345 });
        assert_eq!(r.len(), KEPT - 1);
        assert_eq!(r.iter().last().unwrap().1, b"y");
        assert!(kept(&mut r).is_empty(), "replay writes nothing");
        r.remember("u", b"z", Instant::now());
        assert_eq!(kept(&mut r), [(301, true)]);
    }
}
