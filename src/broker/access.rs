//! A reload's new rules applied to who is already here: every connected client is checked
//! again against its listener's new `allow_anonymous`, password file and certificate rules,
//! and the ones no longer allowed are disconnected (MQTT 5: DISCONNECT 0x87 Not authorized;
//! 3.1.x: closed). Those still allowed are not touched.
//!
//! Passwords are never kept: a connection remembers the digest of the password file entry its
//! password matched ([`Credential::Password`]), and stays while its user's entry is the same.
//! An entry rewritten (even with the same password: a new salt) counts as changed.
//!
//! The ACL needs no re-check of subscriptions: routing asks the ACL in force at each delivery
//! (`publish::route`, retained messages at SUBSCRIBE). What was admitted under the old ACL and
//! is still held is checked here once: queued messages the new ACL denies are let go, and
//! wills it denies are dropped; in-flight messages are checked when they would be resent
//! (`connect::resend_inflight`).

use super::{bridge, Broker, ConnId, ListenerPolicy, SessionId};
use crate::auth::acl::Access;
use crate::auth::password::EntryDigest;
use std::time::Instant;

/// MQTT 5 DISCONNECT reason code: Not authorized.
const NOT_AUTHORIZED: u8 = 0x87;

/// How a connected client proved who it is, kept for a reload to check it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credential {
    /// No password was checked: an anonymous client, or a username without a password file.
    Unchecked,
    /// Its password matched this password file entry.
    Password(EntryDigest),
    /// Its TLS client certificate named it (`use_identity_as_username`).
    Identity,
}

/// A TLS client's certificate checked against its listener's new TLS settings (the event
/// loop does this; the broker core has no TLS in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertCheck {
    /// Nothing to check: not over TLS, or the listener asks for no client certificate.
    Unchecked,
    /// The certificate chain passes; the subject's Common Name, if it has one.
    Valid(Option<String>),
    /// Not accepted any more, and why.
    Invalid(String),
}

/// Is a client that is `username`, and proved it with `credential`, still allowed in under
/// policy `p`? `Err` says why not.
fn still_allowed(
    p: &ListenerPolicy,
    username: Option<&str>,
    credential: Credential,
    cert: &CertCheck,
) -> Result<(), String> {
    if let CertCheck::Invalid(why) = cert {
        return Err(why.clone());
    }
    if p.use_identity_as_username {
        return match cert {
            CertCheck::Valid(Some(cn)) if Some(cn.as_str()) == username => Ok(()),
            CertCheck::Valid(Some(cn)) => Err(format!(
                "its certificate names '{cn}', not its username (use_identity_as_username)"
            )),
            _ => Err("no client certificate identity (use_identity_as_username)".into()),
        };
    }
    let Some(user) = username else {
        return match p.allow_anonymous {
            true => Ok(()),
            false => Err("anonymous clients are no longer allowed".into()),
        };
    };
    let Some(passwords) = &p.passwords else {
        return Ok(());
    };
    match (credential, passwords.entry_digest(user)) {
        (_, None) => Err(format!("user '{user}' is no longer in the password file")),
        (Credential::Password(was), Some(is)) if was == is => Ok(()),
        (Credential::Password(_), Some(_)) => {
            Err(format!("the password file entry of user '{user}' changed"))
        }
        (_, Some(_)) => Err(format!(
            "user '{user}' connected without a password check, and the password file now asks for one"
        )),
    }
}

impl Broker {
    /// After [`Broker::reconfigure`]: disconnect every client the new rules no longer let in
    /// (`cert` gives the check of each connection's TLS client certificate), and let go of
    /// held messages and wills the new ACL denies. Bridges' upstream links are not clients
    /// and are not checked. Returns how many connections were closed.
    pub fn recheck_access(
        &mut self,
        cert: &mut dyn FnMut(ConnId) -> CertCheck,
        now: Instant,
    ) -> usize {
        self.now = now;
        let mut revoked: Vec<(ConnId, String)> = Vec::new();
        for (id, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            if c.closing || c.bridge != bridge::NO_BRIDGE {
                continue;
            }
            let check = cert(id);
            let policy = self.policy(c.listener);
            let Some(sid) = c.session else {
                // Not connected yet: its CONNECT meets the new rules; its certificate is
                // checked now, and its identity is the one the new check found.
                match check {
                    CertCheck::Invalid(why) => revoked.push((id, why)),
                    CertCheck::Valid(Some(cn)) if policy.use_identity_as_username => {
                        self.identities.insert(id, cn.into());
                    }
                    _ => {}
                }
                continue;
            };
            let username = self.sessions[sid].username.as_deref();
            if let Err(why) = still_allowed(policy, username, c.credential, &check) {
                revoked.push((id, why));
            }
        }
        for (id, why) in &revoked {
            match self.conns[*id]
                .as_ref()
                .is_some_and(|c| c.session.is_some())
            {
                true => log::info!(
                    "Client {} disconnected at reload, not authorized: {why}",
                    self.who(*id)
                ),
                false => log::info!("Connection from {} closed at reload: {why}", self.who(*id)),
            }
            self.disconnect_v5(*id, NOT_AUTHORIZED, Some("not authorized"));
            // No will: it was accepted under rights the client no longer has.
            self.end_connection(*id, "not authorized after reload", false, now);
        }
        self.let_go_of_denied();
        revoked.len()
    }

    /// Queued messages the ACL now denies their session are let go (never delivered), and
    /// wills it denies their client to publish are dropped.
    fn let_go_of_denied(&mut self) {
        let (mut messages, mut wills) = (0usize, 0usize);
        let sids: Vec<SessionId> = self.sessions.iter().map(|(sid, _)| sid).collect();
        for sid in sids {
            let s = &self.sessions[sid];
            if s.bridge || self.policy(s.listener).acl.is_none() {
                continue;
            }
            let mut i = 0;
            while i < self.sessions[sid].queue.len() {
                let m = self.sessions[sid].queue[i].msg;
                if self.acl_allows(sid, self.pool.get(m).topic_str(), Access::Read) {
                    i += 1;
                    continue;
                }
                let s = &mut self.sessions[sid];
                s.queue.remove(i);
                s.queued_bytes -= self.pool.get(m).payload().len();
                super::persist::journal_unqueue(&mut self.journal, &self.pool, s, m, 0);
                self.pool.release(m);
                messages += 1;
            }
            if let Some((w, _)) = self.sessions[sid].pending_will {
                if !self.acl_allows(sid, self.pool.get(w).topic_str(), Access::Write) {
                    self.sessions[sid].pending_will = None;
                    self.pool.release(w);
                    self.journal_will(sid);
                    wills += 1;
                }
            }
            let conn = self.sessions[sid].conn;
            let will = conn.and_then(|id| self.conns[id].as_ref()?.will);
            if let (Some(id), Some(w)) = (conn, will) {
                if !self.acl_allows(sid, self.pool.get(w).topic_str(), Access::Write) {
                    if let Some(c) = self.conns[id].as_mut() {
                        c.will = None;
                    }
                    self.pool.release(w);
                    wills += 1;
                }
            }
        }
        if messages > 0 || wills > 0 {
            log::info!(
                "reload: the new ACL denies {messages} queued messages and {wills} wills: let go"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::PasswordFile;

    fn policy(anonymous: bool, users: &[(&str, &str)]) -> ListenerPolicy {
        let mut f = PasswordFile::default();
        for (u, p) in users {
            f.set(u, p).unwrap();
        }
        ListenerPolicy {
            allow_anonymous: anonymous,
            passwords: (!users.is_empty()).then_some(f),
            ..ListenerPolicy::default()
        }
    }

    #[test]
    fn who_stays_and_who_goes() {
        let p = policy(false, &[("alice", "a"), ("bob", "b")]);
        let pw = p.passwords.as_ref().unwrap();
        let alice = Credential::Password(pw.verify("alice", b"a").unwrap());
        let none = CertCheck::Unchecked;
        assert_eq!(still_allowed(&p, Some("alice"), alice, &none), Ok(()));
        let anon = still_allowed(&p, None, Credential::Unchecked, &none);
        assert_eq!(anon.unwrap_err(), "anonymous clients are no longer allowed");
        // Bob's entry checked against alice's digest: another entry, so changed.
        let bob = still_allowed(&p, Some("bob"), alice, &none);
        assert_eq!(
            bob.unwrap_err(),
            "the password file entry of user 'bob' changed"
        );
        let mut q = p.clone();
        q.passwords.as_mut().unwrap().delete("alice");
        let gone = still_allowed(&q, Some("alice"), alice, &none).unwrap_err();
        assert_eq!(gone, "user 'alice' is no longer in the password file");
        q.passwords.as_mut().unwrap().set("alice", "a").unwrap();
        let renewed = still_allowed(&q, Some("alice"), alice, &none).unwrap_err();
        assert_eq!(renewed, "the password file entry of user 'alice' changed");
        let unchecked = still_allowed(&p, Some("alice"), Credential::Unchecked, &none);
        assert!(unchecked.unwrap_err().contains("without a password check"));
        let open = ListenerPolicy::default();
        assert_eq!(
            still_allowed(&open, None, Credential::Unchecked, &none),
            Ok(())
        );
        assert_eq!(
            still_allowed(&open, Some("x"), Credential::Identity, &none),
            Ok(())
        );
    }

    #[test]
    fn certificates_and_identities() {
        let open = ListenerPolicy::default();
        let bad = CertCheck::Invalid("not signed by the cafile".into());
        assert_eq!(
            still_allowed(&open, None, Credential::Unchecked, &bad).unwrap_err(),
            "not signed by the cafile"
        );
        let id = ListenerPolicy {
            use_identity_as_username: true,
            ..ListenerPolicy::default()
        };
        let cn = |s: &str| CertCheck::Valid(Some(s.into()));
        let ok = still_allowed(&id, Some("dev1"), Credential::Identity, &cn("dev1"));
        assert_eq!(ok, Ok(()));
        let other = still_allowed(&id, Some("dev1"), Credential::Identity, &cn("dev2"));
        assert!(other.unwrap_err().contains("names 'dev2'"));
        let none = still_allowed(
            &id,
            Some("dev1"),
            Credential::Identity,
            &CertCheck::Unchecked,
        );
        assert!(none
            .unwrap_err()
            .starts_with("no client certificate identity"));
    }
}
