//! The broker's side of persistence (`src/store/` has the files): what changed in this loop
//! turn, as journal records; the whole state, as snapshot records; and the state rebuilt from
//! them at start.
//!
//! Stored now: retained messages (with their MQTT 5 properties and expiry) and the sessions
//! that outlive their connections, with their subscriptions. A session's record is written
//! whole when it changes (at most once per turn), so replay is "last record wins".

use super::session::Session;
use super::subs::SubEntry;
use super::subscribe::split_shared;
use super::{Broker, SessionId};
use crate::store::record::{self, Frame, Record};
use crate::wire::SubOptions;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

impl Broker {
    /// Keep a journal of changes from now on (`persistence true`).
    pub fn enable_journal(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Append this turn's records to `out`; the event loop writes them before this turn's
    /// output leaves.
    pub fn take_journal(&mut self, out: &mut Vec<u8>) {
        if self.journal.is_none() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty_sessions);
        dirty.sort_unstable();
        dirty.dedup();
        for &sid in &dirty {
            self.journal_session(sid);
        }
        dirty.clear();
        self.dirty_sessions = dirty;
        if let Some(j) = &mut self.journal {
            out.extend_from_slice(j);
            j.clear();
        }
    }

    /// Session `sid` changed in a way a restart must keep (created, resumed, subscribed,
    /// expiry changed).
    pub(super) fn session_changed(&mut self, sid: SessionId) {
        if self.journal.is_some() {
            self.dirty_sessions.push(sid);
        }
    }

    fn journal_session(&mut self, sid: SessionId) {
        let (Some(j), Some(s)) = (&mut self.journal, self.sessions.get_mut(sid)) else {
            return;
        };
        if s.persistent() {
            write_session(j, s);
            s.stored = true;
        } else if s.stored {
            record::encode(
                j,
                &Record::EndSession {
                    client_id: &s.client_id,
                },
            );
            s.stored = false;
        }
    }

    /// Session `s` (already out of the slab) ended.
    pub(super) fn journal_end_session(&mut self, s: &Session) {
        if let (Some(j), true) = (&mut self.journal, s.stored) {
            record::encode(
                j,
                &Record::EndSession {
                    client_id: &s.client_id,
                },
            );
        }
    }

    /// `topic`'s retained message is now `msg` (or none).
    pub(super) fn journal_retained(&mut self, topic: &str, msg: Option<super::message::MsgId>) {
        let Some(j) = &mut self.journal else {
            return;
        };
        if topic.starts_with("$SYS/") {
            // The broker's own figures are made anew after a restart.
            return;
        }
        match msg {
            Some(m) => write_retained(j, self.pool.get(m), self.now),
            None => record::encode(j, &Record::Unretain { topic }),
        }
    }

    /// The whole state to keep, as records (a new snapshot).
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        let now = self.now;
        self.retained.for_each(|m| {
            let msg = self.pool.get(m);
            if !msg.is_expired(now) && !msg.topic_str().starts_with("$SYS/") {
                write_retained(out, msg, now);
            }
        });
        for (_, s) in self.sessions.iter().filter(|(_, s)| s.persistent()) {
            write_session(out, s);
        }
    }

    /// Rebuild the state from `records` (intact frames, oldest first) at start, before any
    /// client connects. Restored sessions are offline and their expiry counts from now.
    pub fn restore(&mut self, mut records: &[u8], now: Instant) -> (usize, usize) {
        self.now = now;
        while let Frame::Record(rec, n) = record::decode(records) {
            records = &records[n..];
            match rec {
                Record::Retain {
                    topic,
                    qos,
                    expiry,
                    props,
                    payload,
                } => {
                    let expiry = instant_of(expiry, now);
                    if expiry.is_some_and(|e| e <= now) {
                        self.drop_retained(topic);
                        continue;
                    }
                    let m =
                        self.pool
                            .store_with(topic, &[props], payload, qos.min(2), true, expiry);
                    if let Some(old) = self.retained.set(topic, m) {
                        self.pool.release(old);
                    }
                }
                Record::Unretain { topic } => self.drop_retained(topic),
                Record::Session {
                    client_id,
                    expiry,
                    username,
                    listener,
                    subscriptions,
                } => {
                    if let Some(old) = self.by_client_id.get(&self.sessions, client_id) {
                        self.remove_session(old);
                    }
                    let mut s = Session::new(client_id, expiry);
                    s.username = username.map(Into::into);
                    s.listener = listener;
                    s.stored = true;
                    let sid = self.sessions.insert(s);
                    self.by_client_id.insert(&self.sessions, sid);
                    for (filter, options, sub_id) in subscriptions.iter() {
                        self.restore_subscription(sid, filter, options, sub_id);
                    }
                    self.session_offline(sid, now);
                }
                Record::EndSession { client_id } => {
                    if let Some(sid) = self.by_client_id.get(&self.sessions, client_id) {
                        self.remove_session(sid);
                    }
                }
            }
        }
        // Replaying wrote records of its own (session removals): the new snapshot has them.
        if let Some(j) = &mut self.journal {
            j.clear();
        }
        self.dirty_sessions.clear();
        (self.retained.len(), self.sessions.len())
    }

    /// A restored session starts offline: its expiry runs from now.
    fn session_offline(&mut self, sid: SessionId, now: Instant) {
        let s = &mut self.sessions[sid];
        s.expires_at = (s.expiry != super::session::NEVER_EXPIRES)
            .then(|| now + Duration::from_secs(s.expiry as u64));
        self.arm_session_timer(sid);
    }

    fn drop_retained(&mut self, topic: &str) {
        if let Some(old) = self.retained.remove(topic) {
            self.pool.release(old);
        }
    }

    fn restore_subscription(&mut self, sid: SessionId, filter: &str, options: u8, sub_id: u32) {
        let (share, f) = split_shared(filter);
        let entry = SubEntry {
            session: sid,
            qos: SubOptions(options).qos().min(self.cfg.max_qos),
            options,
            sub_id,
        };
        self.subs.insert(f, entry, share);
        self.sessions[sid]
            .subscriptions
            .push(super::session::Subscription {
                filter: filter.into(),
                options,
                sub_id,
            });
    }
}

fn write_session(out: &mut Vec<u8>, s: &Session) {
    record::encode_session(
        out,
        &s.client_id,
        s.expiry,
        s.username.as_deref(),
        s.listener,
        s.subscriptions
            .iter()
            .map(|x| (&*x.filter, x.options, x.sub_id)),
    );
}

fn write_retained(out: &mut Vec<u8>, m: &super::message::Message, now: Instant) {
    record::encode(
        out,
        &Record::Retain {
            topic: m.topic_str(),
            qos: m.qos,
            expiry: m.expiry.map_or(0, |e| unix_of(e, now)),
            props: m.properties(),
            payload: m.payload(),
        },
    );
}

/// An instant as Unix seconds (rounded up; at least 1, as 0 means "never").
fn unix_of(t: Instant, now: Instant) -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (wall + t.saturating_duration_since(now)).as_secs().max(1) + 1
}

/// Unix seconds as an instant (`None` for 0, "never").
fn instant_of(unix: u64, now: Instant) -> Option<Instant> {
    if unix == 0 {
        return None;
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(now + Duration::from_secs(unix.saturating_sub(wall)))
}
