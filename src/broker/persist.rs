//! The broker's side of persistence (`src/store/` has the files): what changed in this loop
//! turn, as journal records; the whole state, as snapshot records; and the state rebuilt from
//! them at start.
//!
//! Stored: retained messages (with their MQTT 5 properties and expiry); the sessions that
//! outlive their connections, with their subscriptions (a session's record is written whole
//! when it changes: replay is "last record wins"); the QoS 1/2 messages those sessions hold,
//! queued or in flight, by store id, and each step of their acknowledgement; and the QoS 2
//! packet ids received from them and not yet released. With devices declared (in the devices
//! store with `persistence false` too): the Home Assistant discovery removals HA may not have
//! seen (`devices/removals.rs`).

use super::message::{MessagePool, MsgId};
use super::session::{Awaiting, Inflight, Queued, Session, SubIds};
use super::subs::SubEntry;
use super::subscribe::split_shared;
use super::{Broker, ConnId, SessionId};
use crate::devices::removals::Change;
use crate::store::record::{self, Frame, Msg, Record};
use crate::wire::SubOptions;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

impl Broker {
    /// Keep a journal of changes from now on (`persistence true`).
    pub fn enable_journal(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keep a journal of the devices' retained status topics (under `prefix/`) only: their
    /// last values survive a restart with `persistence false`. With `discovery_prefix`, also
    /// the Home Assistant discovery configs gatemq itself announced under it, so that what is
    /// no longer declared at the next start can be cleared.
    pub fn enable_device_journal(&mut self, prefix: &str, discovery_prefix: Option<&str>) {
        self.journal = Some(Vec::new());
        self.journal_only = Some(format!("{prefix}/").into());
        self.journal_discovery = discovery_prefix.map(|p| format!("{p}/").into());
    }

    /// Is `topic`'s retained message (`payload`; None: its clear) kept by the journal?
    fn journal_keeps(&self, topic: &str, payload: Option<&[u8]>) -> bool {
        if topic.starts_with("$SYS/") {
            return false;
        }
        let Some(only) = &self.journal_only else {
            return true;
        };
        topic.starts_with(&**only)
            || self.journal_discovery.as_ref().is_some_and(|p| {
                topic.starts_with(&**p) && payload.is_none_or(crate::devices::is_our_config)
            })
    }

    /// Append this turn's records to `out`; the event loop writes them before this turn's
    /// output leaves.
    pub fn take_journal(&mut self, out: &mut Vec<u8>) {
        if let Some(j) = &mut self.journal {
            out.extend_from_slice(j);
            j.clear();
        }
    }

    /// Records made and not taken yet.
    pub fn journal_waiting(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.is_empty())
    }

    /// Connection `id` was handling a QoS 1/2 PUBLISH, with the journal `journal_len` long and
    /// its output `out_len` long before: if that made records, what it output since (its
    /// PUBACK/PUBREC, and what follows) waits until the records are written.
    pub(super) fn hold_output(&mut self, id: ConnId, journal_len: usize, out_len: usize) {
        let grew = self.journal.as_ref().is_some_and(|j| j.len() > journal_len);
        let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        if grew && c.held.is_none() && c.out.len() > out_len {
            c.held = Some(out_len);
            self.held.push(id);
        }
    }

    /// What the event loop could write of the records taken so far: `durable`, everything
    /// (held output is released, and its connections are read again); or not, and then the
    /// connections with held output are not read until it is.
    pub fn journal_written(&mut self, durable: bool) {
        let was_failing = self.journal_failing;
        if durable == was_failing {
            self.journal_failing = !durable;
            super::sys::persistence(self);
        }
        if !durable {
            return;
        }
        for i in 0..self.held.len() {
            let id = self.held[i];
            let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
                continue;
            };
            c.held = None;
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
            if was_failing {
                self.resumed.push(id);
            }
        }
        self.held.clear();
    }

    /// Publishers whose acknowledgements wait for the journal.
    pub fn held_connections(&self) -> usize {
        self.held.len()
    }

    /// Session `sid` changed in a way a restart must keep (created, resumed, subscribed,
    /// expiry changed): its record is written now, before anything it holds.
    pub(super) fn session_changed(&mut self, sid: SessionId) {
        if self.journal_only.is_some() {
            return;
        }
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

    /// Session `sid`'s delayed will is now pending (written whole) or gone.
    pub(super) fn journal_will(&mut self, sid: SessionId) {
        let (Some(j), Some(s)) = (&mut self.journal, self.sessions.get(sid)) else {
            return;
        };
        if !s.stored {
            return;
        }
        match s.pending_will {
            Some((m, at)) => write_will(j, s, self.pool.get(m), at, self.now),
            None => record::encode(
                j,
                &Record::WillGone {
                    client_id: &s.client_id,
                },
            ),
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
        // The broker's own figures ($SYS) are made anew after a restart.
        let payload = msg.map(|m| self.pool.get(m).payload());
        if !self.journal_keeps(topic, payload) {
            return;
        }
        let Some(j) = &mut self.journal else {
            return;
        };
        match msg {
            Some(m) => write_retained(j, self.pool.get(m), self.now),
            None => record::encode(j, &Record::Unretain { topic }),
        }
    }

    /// The discovery removals the executor kept or dropped since the last call, as records.
    /// Not on the message path: nothing to do unless a reload, a start or Home Assistant
    /// changed them.
    pub(super) fn journal_removals(&mut self) {
        let Some(ex) = self.devices.as_deref_mut() else {
            return;
        };
        let journal = &mut self.journal;
        ex.removals_mut().take_changes(|c| {
            if let Some(j) = journal {
                record::encode(j, &removal_record(c));
            }
        });
    }

    /// A step of an acknowledgement flow of session `sid` (if its state is kept).
    pub(super) fn journal_ack(&mut self, sid: SessionId, rec: AckStep) {
        let (Some(j), Some(s)) = (&mut self.journal, self.sessions.get(sid)) else {
            return;
        };
        if !s.stored {
            return;
        }
        let client_id = &*s.client_id;
        let rec = match rec {
            AckStep::Done(packet_id) => Record::Done {
                client_id,
                msg: 0,
                packet_id,
            },
            AckStep::Released(packet_id) => Record::Released {
                client_id,
                packet_id,
            },
            AckStep::Qos2In(packet_id) => Record::Qos2In {
                client_id,
                packet_id,
            },
            AckStep::Qos2InDone(packet_id) => Record::Qos2InDone {
                client_id,
                packet_id,
            },
        };
        record::encode(j, &rec);
    }

    /// The whole state to keep, as records (a new snapshot).
    pub fn snapshot(&mut self, out: &mut Vec<u8>) {
        let now = self.now;
        self.retained.for_each(|m| {
            let msg = self.pool.get(m);
            if !msg.is_expired(now) && self.journal_keeps(msg.topic_str(), Some(msg.payload())) {
                write_retained(out, msg, now);
            }
        });
        self.discovery_removals()
            .for_each(|c| record::encode(out, &removal_record(c)));
        if self.journal_only.is_some() {
            return;
        }
        let mut written = std::collections::HashSet::new();
        let Broker {
            sessions,
            pool,
            next_store_id,
            ..
        } = self;
        for (_, s) in sessions.iter().filter(|(_, s)| s.persistent()) {
            write_session(out, s);
            for i in &s.inflight {
                let msg = match i.msg {
                    Some(m) => message(out, next_store_id, pool, m, now, Some(&mut written)),
                    None => 0,
                };
                record::encode_hold(
                    out,
                    &s.client_id,
                    msg,
                    i.qos,
                    i.retain,
                    i.packet_id,
                    &i.sub_ids,
                );
            }
            for q in &s.queue {
                let msg = message(out, next_store_id, pool, q.msg, now, Some(&mut written));
                record::encode_hold(out, &s.client_id, msg, q.qos, q.retain, 0, &q.sub_ids);
            }
            if let Some((m, at)) = s.pending_will {
                write_will(out, s, pool.get(m), at, now);
            }
            for &p in &s.qos2_incoming {
                record::encode(
                    out,
                    &Record::Qos2In {
                        client_id: &s.client_id,
                        packet_id: p,
                    },
                );
            }
        }
    }

    /// Rebuild the state from `records` (intact frames, oldest first) at start, before any
    /// client connects. Restored sessions are offline and their expiry counts from now.
    pub fn restore(&mut self, mut records: &[u8], now: Instant) -> (usize, usize) {
        self.now = now;
        // Messages by store id while replaying; each holds one reference, let go at the end.
        let mut messages: std::collections::HashMap<u64, MsgId> = Default::default();
        while let Frame::Record(rec, n) = record::decode(records) {
            records = &records[n..];
            match rec {
                Record::Retain(msg) => {
                    if instant_of(msg.expiry, now).is_some_and(|e| e <= now) {
                        self.drop_retained(msg.topic);
                        continue;
                    }
                    let m = store(
                        &mut self.pool,
                        &Msg {
                            retain: true,
                            ..msg
                        },
                        now,
                    );
                    if let Some(old) = self.retained.set(msg.topic, m) {
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
                    // The same session again: new settings and subscriptions, same messages.
                    let sid = match self.by_client_id.get(&self.sessions, client_id) {
                        Some(sid) => {
                            let old = std::mem::take(&mut self.sessions[sid].subscriptions);
                            for sub in &old {
                                let (share, f) = split_shared(&sub.filter);
                                self.subs.remove(f, sid, share);
                            }
                            self.sessions[sid].expiry = expiry;
                            sid
                        }
                        None => {
                            let sid = self.sessions.insert(Session::new(client_id, expiry));
                            self.by_client_id.insert(&self.sessions, sid);
                            sid
                        }
                    };
                    let s = &mut self.sessions[sid];
                    s.username = username.map(Into::into);
                    s.listener = listener;
                    s.stored = true;
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
                Record::Message { id, msg } => {
                    let m = store(&mut self.pool, &msg, now);
                    self.pool.set_store_id(m, id);
                    self.next_store_id = self.next_store_id.max(id);
                    if let Some(old) = messages.insert(id, m) {
                        self.pool.release(old);
                    }
                }
                Record::Hold {
                    client_id,
                    msg,
                    qos,
                    retain,
                    packet_id,
                    sub_ids,
                } => {
                    let Some(sid) = self.by_client_id.get(&self.sessions, client_id) else {
                        continue;
                    };
                    let m = messages.get(&msg).copied();
                    if msg != 0 && m.is_none() {
                        continue;
                    }
                    let ids: SubIds = sub_ids.iter().take(4).collect();
                    let s = &mut self.sessions[sid];
                    match (m, packet_id) {
                        (Some(m), 0) => {
                            self.pool.retain(m);
                            s.queued_bytes += self.pool.get(m).payload().len();
                            s.queue.push_back(Queued {
                                msg: m,
                                qos,
                                retain,
                                sub_ids: ids,
                            });
                        }
                        (m, packet_id) if packet_id != 0 => {
                            if let Some(m) = m {
                                self.pool.retain(m);
                            }
                            s.inflight.push_back(Inflight {
                                packet_id,
                                seq: 0,
                                msg: m,
                                qos,
                                retain,
                                awaiting: match (m, qos) {
                                    (None, _) => Awaiting::PubComp,
                                    (_, 1) => Awaiting::PubAck,
                                    _ => Awaiting::PubRec,
                                },
                                sub_ids: ids,
                            });
                        }
                        _ => {}
                    }
                }
                Record::Sent {
                    client_id,
                    msg,
                    packet_id,
                } => {
                    let Some(sid) = self.by_client_id.get(&self.sessions, client_id) else {
                        continue;
                    };
                    let pool = &self.pool;
                    let s = &mut self.sessions[sid];
                    if let Some(i) = s.queue.iter().position(|q| pool.get(q.msg).store_id == msg) {
                        let q = s.queue.remove(i).expect("position");
                        s.queued_bytes -= pool.get(q.msg).payload().len();
                        s.inflight.push_back(Inflight {
                            packet_id,
                            seq: 0,
                            msg: Some(q.msg),
                            qos: q.qos,
                            retain: q.retain,
                            awaiting: if q.qos == 1 {
                                Awaiting::PubAck
                            } else {
                                Awaiting::PubRec
                            },
                            sub_ids: q.sub_ids,
                        });
                    }
                }
                Record::Done {
                    client_id,
                    msg,
                    packet_id,
                } => {
                    let Some(sid) = self.by_client_id.get(&self.sessions, client_id) else {
                        continue;
                    };
                    let s = &mut self.sessions[sid];
                    let gone = if packet_id != 0 {
                        let i = s.inflight.iter().position(|i| i.packet_id == packet_id);
                        i.and_then(|i| s.inflight.remove(i)).and_then(|i| i.msg)
                    } else {
                        let pool = &self.pool;
                        let i = s.queue.iter().position(|q| pool.get(q.msg).store_id == msg);
                        let q = i.and_then(|i| s.queue.remove(i));
                        if let Some(q) = &q {
                            s.queued_bytes -= pool.get(q.msg).payload().len();
                        }
                        q.map(|q| q.msg)
                    };
                    if let Some(m) = gone {
                        self.pool.release(m);
                    }
                }
                Record::Released {
                    client_id,
                    packet_id,
                } => {
                    let Some(sid) = self.by_client_id.get(&self.sessions, client_id) else {
                        continue;
                    };
                    let s = &mut self.sessions[sid];
                    if let Some(i) = s.inflight.iter_mut().find(|i| i.packet_id == packet_id) {
                        i.awaiting = Awaiting::PubComp;
                        if let Some(m) = i.msg.take() {
                            self.pool.release(m);
                        }
                    }
                }
                Record::Qos2In {
                    client_id,
                    packet_id,
                } => {
                    if let Some(sid) = self.by_client_id.get(&self.sessions, client_id) {
                        let ids = &mut self.sessions[sid].qos2_incoming;
                        if !ids.contains(&packet_id) {
                            ids.push(packet_id);
                        }
                    }
                }
                Record::Qos2InDone {
                    client_id,
                    packet_id,
                } => {
                    if let Some(sid) = self.by_client_id.get(&self.sessions, client_id) {
                        self.sessions[sid].qos2_incoming.retain(|&p| p != packet_id);
                    }
                }
                Record::Will { client_id, at, msg } => {
                    let Some(sid) = self.by_client_id.get(&self.sessions, client_id) else {
                        continue;
                    };
                    let m = store(&mut self.pool, &msg, now);
                    // Due while the broker was down: published as soon as it runs.
                    let at = instant_of(at, now).unwrap_or(now);
                    if let Some((old, _)) = self.sessions[sid].pending_will.replace((m, at)) {
                        self.pool.release(old);
                    }
                }
                Record::WillGone { client_id } => {
                    if let Some(sid) = self.by_client_id.get(&self.sessions, client_id) {
                        if let Some((old, _)) = self.sessions[sid].pending_will.take() {
                            self.pool.release(old);
                        }
                    }
                }
                // Read before any executor exists: it takes them when the devices are set.
                Record::DiscoveryRemoval { id, topic, config } => self
                    .parked_removals
                    .restore(Change::Kept { id, topic, config }),
                Record::DiscoveryRemovalDone { id } => {
                    self.parked_removals.restore(Change::Done { id })
                }
            }
        }
        for (_, m) in messages {
            self.pool.release(m);
        }
        for (_, s) in self.sessions.iter_mut() {
            s.after_restore();
        }
        // Each session's next deadline (expiry or delayed will), from what was read last.
        let sids: Vec<SessionId> = self.sessions.iter().map(|(sid, _)| sid).collect();
        for sid in sids {
            self.arm_session_timer(sid);
        }
        // Replaying wrote records of its own (session removals): the new snapshot has them.
        if let Some(j) = &mut self.journal {
            j.clear();
        }
        (self.retained.len(), self.sessions.len())
    }

    /// A restored session starts offline: its expiry runs from now.
    /// (Its timer is armed when the whole state has been read.)
    fn session_offline(&mut self, sid: SessionId, now: Instant) {
        let s = &mut self.sessions[sid];
        s.expires_at = (s.expiry != super::session::NEVER_EXPIRES)
            .then(|| now + Duration::from_secs(s.expiry as u64));
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

/// What an acknowledgement did, for [`Broker::journal_ack`].
#[derive(Clone, Copy)]
pub(super) enum AckStep {
    /// The in-flight message with this packet id is done (PUBACK, PUBCOMP, refused).
    Done(u16),
    /// PUBREC for this packet id: only PUBREL is left.
    Released(u16),
    /// An incoming QoS 2 packet id was recorded / released.
    Qos2In(u16),
    Qos2InDone(u16),
}

/// The store id of message `m`, writing its Message record first if it has none yet (or, in a
/// snapshot, if `written` has not seen it). Without `written` (the journal) nothing allocates.
fn message(
    out: &mut Vec<u8>,
    next_store_id: &mut u64,
    pool: &mut MessagePool,
    m: MsgId,
    now: Instant,
    written: Option<&mut std::collections::HashSet<u64>>,
) -> u64 {
    let mut id = pool.get(m).store_id;
    let new = id == 0;
    if new {
        *next_store_id += 1;
        id = *next_store_id;
        pool.set_store_id(m, id);
    }
    if written.map_or(new, |w| w.insert(id)) {
        let msg = fields(pool.get(m), now);
        record::encode(out, &Record::Message { id, msg });
    }
    id
}

/// Journal that session `s` now holds message `m` (queued, or in flight under `packet_id`).
/// Called from delivery with the broker's fields borrowed apart.
#[allow(clippy::too_many_arguments)]
pub(super) fn journal_hold(
    journal: &mut Option<Vec<u8>>,
    next_store_id: &mut u64,
    pool: &mut MessagePool,
    s: &Session,
    m: MsgId,
    qos: u8,
    retain: bool,
    packet_id: u16,
    sub_ids: &[u32],
    now: Instant,
) {
    let Some(j) = journal else {
        return;
    };
    if !s.stored {
        return;
    }
    let known = pool.get(m).store_id;
    let id = if known != 0 {
        known
    } else {
        message(j, next_store_id, pool, m, now, None)
    };
    record::encode_hold(j, &s.client_id, id, qos, retain, packet_id, sub_ids);
}

/// Journal that session `s`'s queued message `m` was sent (`packet_id` > 0) or let go (0).
pub(super) fn journal_unqueue(
    journal: &mut Option<Vec<u8>>,
    pool: &MessagePool,
    s: &Session,
    m: MsgId,
    packet_id: u16,
) {
    let (Some(j), true) = (journal, s.stored) else {
        return;
    };
    let (client_id, msg) = (&*s.client_id, pool.get(m).store_id);
    let rec = if packet_id == 0 {
        Record::Done {
            client_id,
            msg,
            packet_id: 0,
        }
    } else {
        Record::Sent {
            client_id,
            msg,
            packet_id,
        }
    };
    record::encode(j, &rec);
}

fn write_will(
    out: &mut Vec<u8>,
    s: &Session,
    m: &super::message::Message,
    at: Instant,
    now: Instant,
) {
    record::encode(
        out,
        &Record::Will {
            client_id: &s.client_id,
            at: unix_of(at, now),
            msg: fields(m, now),
        },
    );
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

fn removal_record(c: Change<'_>) -> Record<'_> {
    match c {
        Change::Kept { id, topic, config } => Record::DiscoveryRemoval { id, topic, config },
        Change::Done { id } => Record::DiscoveryRemovalDone { id },
    }
}

fn write_retained(out: &mut Vec<u8>, m: &super::message::Message, now: Instant) {
    record::encode(out, &Record::Retain(fields(m, now)));
}

/// A pooled message as a record carries it.
fn fields(m: &super::message::Message, now: Instant) -> Msg<'_> {
    Msg {
        topic: m.topic_str(),
        qos: m.qos,
        retain: m.retain,
        expiry: m.expiry.map_or(0, |e| unix_of(e, now)),
        props: m.properties(),
        payload: m.payload(),
    }
}

/// A message read from a record, into the pool (one reference, the caller's).
fn store(pool: &mut MessagePool, m: &Msg<'_>, now: Instant) -> MsgId {
    let expiry = instant_of(m.expiry, now);
    pool.store_with(
        m.topic,
        &[m.props],
        m.payload,
        m.qos.min(2),
        m.retain,
        expiry,
    )
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
    // At most MQTT's longest interval ahead (u32 seconds): a damaged or hostile value cannot
    // overflow the clock (found by the restore fuzz target).
    let ahead = unix.saturating_sub(wall).min(u32::MAX as u64);
    Some(now.checked_add(Duration::from_secs(ahead)).unwrap_or(now))
}
