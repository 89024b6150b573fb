//! Mosquitto's ACL file: `topic [read|write|readwrite|deny] <filter>` lines, grouped under
//! `user <name>` (lines before any `user` apply to anonymous clients), and `pattern` lines with
//! `%c` (client id) and `%u` (username) that apply to every client.
//!
//! A check follows Mosquitto: with no ACL file everything is allowed; otherwise the client's
//! own rules (its user's, or the anonymous ones) and the patterns are consulted, any `deny`
//! that matches wins, then any rule granting the access allows, else it is denied. A `%u`
//! pattern never matches an anonymous client. Publishing needs `write`; receiving a message
//! needs `read` for its topic, checked at delivery (as Mosquitto does). A subscription is
//! refused outright when no `read` rule could ever let a message through it.

use crate::broker::topic;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, a: Access) -> bool {
        matches!(
            (self, a),
            (Grant::Read, Access::Read) | (Grant::Write, Access::Write) | (Grant::ReadWrite, _)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    pub fn load(path: &std::path::Path) -> Result<AclFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read ACL file {}: {}",
                path.display(),
                crate::config::io_reason(&e)
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, name: &str) -> Result<AclFile, String> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("{name}:{}: {what}", n + 1);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("'user' needs a username"));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let (grant, filter) = match rest.split_once(char::is_whitespace) {
                        Some(("read", f)) => (Grant::Read, f.trim()),
                        Some(("write", f)) => (Grant::Write, f.trim()),
                        Some(("readwrite", f)) => (Grant::ReadWrite, f.trim()),
                        Some(("deny", f)) => (Grant::Deny, f.trim()),
                        // The access may be left out: read and write (a topic may contain spaces
                        // only when the access is given).
                        _ => (Grant::ReadWrite, rest),
                    };
                    if filter.is_empty() || !topic::valid_filter(filter) {
                        return Err(err(&format!("invalid topic filter '{filter}'")));
                    }
                    let rule = Rule {
                        grant,
                        filter: filter.to_string(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.get_mut(u).expect("user entry").push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(err(&format!(
                        "unknown keyword '{other}' (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    fn own_rules(&self, user: Option<&str>) -> &[Rule] {
        match user {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        }
    }

    /// May this client publish to (`Write`) or receive (`Read`) `topic`?
    pub fn check(&self, user: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        let own = self.own_rules(user);
        let mut buf = String::new();
        let mut pattern =
            |r: &Rule| expand(&r.filter, user, client_id, &mut buf).then(|| buf.clone());
        let denied = own
            .iter()
            .any(|r| r.grant == Grant::Deny && topic::matches(&r.filter, topic))
            || self
                .patterns
                .iter()
                .filter(|r| r.grant == Grant::Deny)
                .any(|r| pattern(r).is_some_and(|f| topic::matches(&f, topic)));
        if denied {
            return false;
        }
        own.iter()
            .any(|r| r.grant.allows(access) && topic::matches(&r.filter, topic))
            || self
                .patterns
                .iter()
                .filter(|r| r.grant.allows(access))
                .any(|r| pattern(r).is_some_and(|f| topic::matches(&f, topic)))
    }

    /// May a publisher with no client id and no username write (or read) `topic`? An MQTT-SN
    /// QoS -1 publish: the anonymous rules apply, and the patterns that name neither `%c` nor
    /// `%u` (a `%c` pattern has no client id to stand for: `#` is never put in its place).
    pub fn check_unidentified(&self, topic: &str, access: Access) -> bool {
        self.check(None, "#", topic, access)
    }

    /// May this client subscribe to `filter`: could any `read` rule let a message through it,
    /// without a `deny` covering all of it?
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let own = self.own_rules(user);
        let mut rules: Vec<(Grant, String)> =
            own.iter().map(|r| (r.grant, r.filter.clone())).collect();
        let mut buf = String::new();
        for r in &self.patterns {
            if expand(&r.filter, user, client_id, &mut buf) {
                rules.push((r.grant, buf.clone()));
            }
        }
        if rules
            .iter()
            .any(|(g, f)| *g == Grant::Deny && covers(f, filter))
        {
            return false;
        }
        rules
            .iter()
            .any(|(g, f)| g.allows(Access::Read) && overlaps(f, filter))
    }
}

/// Replace whole-level `%c` and `%u` in a pattern; false (the pattern does not apply) if `%u`
/// is used and there is no user, or if the value is not one plain topic level: a client id
/// `+` or `#` would turn `cl/%c/#` into a wildcard over every client's topics (Mosquitto's
/// CVE-2017-7650), and `victim/x` would reach into `victim`'s own subtree.
fn expand(pattern: &str, user: Option<&str>, client_id: &str, out: &mut String) -> bool {
    let plain = |v: &str| !v.contains(['+', '#', '/']);
    out.clear();
    for (i, level) in pattern.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match level {
            "%c" if plain(client_id) => out.push_str(client_id),
            "%u" => match user {
                Some(u) if plain(u) => out.push_str(u),
                _ => return false,
            },
            "%c" => return false,
            l => out.push_str(l),
        }
    }
    true
}

/// Can two filters match a common topic?
fn overlaps(a: &str, b: &str) -> bool {
    if a.starts_with('$') != b.starts_with('$') && !(a.starts_with('$') && b.starts_with('$')) {
        // A leading wildcard does not reach '$' topics.
        let (dollar, other) = if a.starts_with('$') { (a, b) } else { (b, a) };
        if other.starts_with('+') || other.starts_with('#') || !dollar.starts_with('$') {
            return false;
        }
    }
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does `deny` match every topic that `filter` can match?
fn covers(deny: &str, filter: &str) -> bool {
    if filter.starts_with('$') != deny.starts_with('$')
        && (deny.starts_with('+') || deny.starts_with('#'))
    {
        return false;
    }
    let (mut d, mut f) = (deny.split('/'), filter.split('/'));
    loop {
        match (d.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(p), Some(q)) if p == q && q != "+" && q != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_that_are_not_one_plain_level_get_no_pattern_rule() {
        let acl = AclFile::parse(
            "pattern readwrite cl/%c/#\npattern read users/%u/#\n",
            "acl",
        )
        .unwrap();
        assert!(acl.check(None, "victim", "cl/victim/secret", Access::Read));
        for id in ["+", "#", "victim/x", "a+b"] {
            assert!(
                !acl.check(None, id, "cl/victim/secret", Access::Read),
                "{id}"
            );
            assert!(!acl.may_subscribe(None, id, "cl/+/#"), "{id}");
        }
        assert!(acl.check(Some("bob"), "c", "users/bob/x", Access::Read));
        assert!(!acl.check(Some("#"), "c", "users/bob/x", Access::Read));
    }

    use super::*;

    const ACL: &str = "# anonymous\ntopic read pub/#\n\nuser alice\ntopic read a/#\ntopic write b/#\ntopic c/+/x\ntopic deny c/secret/x\npattern readwrite dev/%u/#\npattern read cl/%c\n";

    #[test]
    fn mosquitto_semantics() {
        let acl = AclFile::parse(ACL, "acl").unwrap();
        let alice = Some("alice");
        assert!(acl.check(alice, "c1", "a/x", Access::Read));
        assert!(!acl.check(alice, "c1", "a/x", Access::Write));
        assert!(acl.check(alice, "c1", "b/y", Access::Write));
        assert!(!acl.check(alice, "c1", "b/y", Access::Read));
        assert!(acl.check(alice, "c1", "c/open/x", Access::Write));
        assert!(!acl.check(alice, "c1", "c/secret/x", Access::Read));
        assert!(acl.check(alice, "c1", "dev/alice/t", Access::Write));
        assert!(!acl.check(alice, "c1", "dev/bob/t", Access::Write));
        assert!(acl.check(alice, "c1", "cl/c1", Access::Read));
        assert!(!acl.check(alice, "c1", "pub/x", Access::Read)); // anonymous rules are not hers
        assert!(acl.check(None, "anon", "pub/x", Access::Read));
        assert!(!acl.check(None, "anon", "pub/x", Access::Write));
        assert!(acl.check(None, "anon", "cl/anon", Access::Read)); // %c applies to anonymous
        assert!(!acl.check(None, "anon", "dev/anon/t", Access::Write)); // %u does not
        assert!(!acl.check(Some("carol"), "c", "a/x", Access::Read)); // no rules: denied
    }

    #[test]
    fn subscriptions() {
        let acl = AclFile::parse(ACL, "acl").unwrap();
        let alice = Some("alice");
        assert!(acl.may_subscribe(alice, "c1", "a/#"));
        assert!(acl.may_subscribe(alice, "c1", "#"));
        assert!(acl.may_subscribe(alice, "c1", "c/+/x"));
        assert!(!acl.may_subscribe(alice, "c1", "c/secret/x"));
        assert!(!acl.may_subscribe(alice, "c1", "b/#"));
        assert!(!acl.may_subscribe(alice, "c1", "z"));
        assert!(!acl.may_subscribe(alice, "c1", "$SYS/#"));
        assert!(acl.may_subscribe(None, "anon", "pub/+"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            AclFile::parse("topic read a/#/b\n", "acl").unwrap_err(),
            "acl:1: invalid topic filter 'a/#/b'"
        );
        assert!(AclFile::parse("\nusr bob\n", "acl")
            .unwrap_err()
            .starts_with("acl:2: unknown keyword 'usr'"));
        assert!(AclFile::parse("user\n", "acl").is_err());
    }
}
