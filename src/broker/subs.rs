//! The subscription table: a trie of topic-filter levels.
//!
//! Matching a topic walks one path per level plus the `+` and `#` branches, so its cost grows
//! with the topic's levels and the wildcards on the way, not with the number of subscriptions,
//! and it allocates nothing. Nodes are made when a filter first uses a level (a subscribe-time
//! allocation) and removed when the last subscription under them goes.
//!
//! A shared subscription (`$share/<group>/<filter>`, MQTT 5) sits at its filter's node in a
//! group; a match reports the group, and [`SubscriptionTree::pick_shared`] chooses one member,
//! round robin, preferring members that are online.

use super::fxhash::FxHashMap;
use super::topic::split_level;
use super::SessionId;
use slab::Slab;

/// One session's subscription at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    pub session: SessionId,
    pub qos: u8,
    /// MQTT 5 subscription options byte (No Local, Retain As Published).
    pub options: u8,
    /// MQTT 5 Subscription Identifier; 0 = none.
    pub sub_id: u32,
}

impl SubEntry {
    pub fn new(session: SessionId, qos: u8) -> Self {
        SubEntry {
            session,
            qos,
            options: 0,
            sub_id: 0,
        }
    }
    pub fn no_local(&self) -> bool {
        self.options & 0x04 != 0
    }
    pub fn retain_as_published(&self) -> bool {
        self.options & 0x08 != 0
    }
}

/// What a topic matched: a subscription, or a shared group to pick one member of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Entry(SubEntry),
    Shared { node: usize, group: usize },
}

struct SharedGroup {
    name: Box<str>,
    members: Vec<SubEntry>,
    next: usize,
}

/// A level of the trie. Kept small, as every distinct filter has one (an idle client with
/// its own topic costs a node): a node knows neither its parent nor its own level (its
/// parent's map holds the level once; removal walks down again from the filter), and the
/// wildcard children are u32 slots.
struct Node {
    children: FxHashMap<Box<str>, usize>,
    subs: Vec<SubEntry>,
    shared: Vec<SharedGroup>,
    plus: u32,
    hash: u32,
}

/// No `+` or `#` child.
const NONE: u32 = u32::MAX;

impl Default for Node {
    fn default() -> Self {
        Node {
            children: FxHashMap::default(),
            subs: Vec::new(),
            shared: Vec::new(),
            plus: NONE,
            hash: NONE,
        }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subs.is_empty()
            && self.shared.is_empty()
            && self.children.is_empty()
            && self.plus == NONE
            && self.hash == NONE
    }

    fn plus(&self) -> Option<usize> {
        (self.plus != NONE).then_some(self.plus as usize)
    }

    fn hash(&self) -> Option<usize> {
        (self.hash != NONE).then_some(self.hash as usize)
    }

    fn report(&self, node: usize, f: &mut impl FnMut(Match)) {
        self.subs.iter().for_each(|s| f(Match::Entry(*s)));
        for group in 0..self.shared.len() {
            f(Match::Shared { node, group });
        }
    }
}

pub struct SubscriptionTree {
    nodes: Slab<Node>,
    count: usize,
    /// Scratch for removal: the nodes from the root down a filter's path.
    path: Vec<usize>,
}

const ROOT: usize = 0;

impl Default for SubscriptionTree {
    fn default() -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node::default());
        SubscriptionTree {
            nodes,
            count: 0,
            path: Vec::new(),
        }
    }
}

impl SubscriptionTree {
    /// Number of (session, filter) subscriptions, shared ones included.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add or replace `session`'s subscription to a valid `filter` (in `share` group, if
    /// shared). Returns true if it is new.
    pub fn insert(&mut self, filter: &str, entry: SubEntry, share: Option<&str>) -> bool {
        let mut node = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            node = self.child_or_insert(node, level);
        }
        let n = &mut self.nodes[node];
        let subs = match share {
            None => &mut n.subs,
            Some(name) => {
                let g = match n.shared.iter().position(|g| &*g.name == name) {
                    Some(g) => g,
                    None => {
                        n.shared.push(SharedGroup {
                            name: name.into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        n.shared.len() - 1
                    }
                };
                &mut n.shared[g].members
            }
        };
        match subs.iter_mut().find(|s| s.session == entry.session) {
            Some(s) => {
                *s = entry;
                false
            }
            None => {
                // Most filters have one subscriber: no room for four (Vec's first growth).
                if subs.capacity() == 0 {
                    subs.reserve_exact(1);
                }
                subs.push(entry);
                self.count += 1;
                true
            }
        }
    }

    fn child_or_insert(&mut self, node: usize, level: &str) -> usize {
        let existing = match level {
            "+" => self.nodes[node].plus(),
            "#" => self.nodes[node].hash(),
            _ => self.nodes[node].children.get(level).copied(),
        };
        if let Some(c) = existing {
            return c;
        }
        let child = self.nodes.insert(Node::default());
        // More than 2^32 - 1 nodes cannot be made: the memory runs out long before.
        let slot = u32::try_from(child).unwrap_or(NONE);
        let n = &mut self.nodes[node];
        match level {
            "+" => n.plus = slot,
            "#" => n.hash = slot,
            _ => {
                n.children.insert(level.into(), child);
            }
        }
        child
    }

    /// The node of `filter`, with the nodes on the way (root first) in `path` if given.
    fn find(&self, filter: &str, mut path: Option<&mut Vec<usize>>) -> Option<usize> {
        let mut node = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            if let Some(p) = path.as_deref_mut() {
                p.push(node);
            }
            let (level, tail) = split_level(r);
            rest = tail;
            let n = &self.nodes[node];
            node = match level {
                "+" => n.plus()?,
                "#" => n.hash()?,
                _ => *n.children.get(level)?,
            };
        }
        Some(node)
    }

    /// Remove `session`'s subscription to `filter` (in `share` group). True if there was one.
    pub fn remove(&mut self, filter: &str, session: SessionId, share: Option<&str>) -> bool {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let found = self.find(filter, Some(&mut path));
        let removed = found.is_some_and(|node| self.remove_at(node, session, share));
        if removed {
            // Prune the now-empty branch so a churn of distinct filters cannot grow the trie:
            // up the path, each empty node leaves its parent's map under its level.
            let mut node = found.unwrap_or(ROOT);
            for (level, &parent) in filter.rsplit('/').zip(path.iter().rev()) {
                if !self.nodes[node].is_empty() {
                    break;
                }
                self.nodes.remove(node);
                let p = &mut self.nodes[parent];
                match level {
                    "+" => p.plus = NONE,
                    "#" => p.hash = NONE,
                    _ => {
                        p.children.remove(level);
                    }
                }
                node = parent;
            }
        }
        self.path = path;
        removed
    }

    /// Remove `session`'s entry (in `share` group) at `node`. True if there was one.
    fn remove_at(&mut self, node: usize, session: SessionId, share: Option<&str>) -> bool {
        let n = &mut self.nodes[node];
        let removed = match share {
            None => match n.subs.iter().position(|s| s.session == session) {
                Some(i) => {
                    n.subs.swap_remove(i);
                    true
                }
                None => false,
            },
            Some(name) => match n.shared.iter().position(|g| &*g.name == name) {
                Some(g) => match n.shared[g]
                    .members
                    .iter()
                    .position(|s| s.session == session)
                {
                    Some(i) => {
                        n.shared[g].members.remove(i);
                        if n.shared[g].members.is_empty() {
                            n.shared.swap_remove(g);
                        }
                        true
                    }
                    None => false,
                },
                None => false,
            },
        };
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Call `f` for every subscription and shared group whose filter matches `topic`.
    /// A session with several matching filters is reported once per filter.
    pub fn for_each_match(&self, topic: &str, f: &mut impl FnMut(Match)) {
        // Spec 4.7.2: a leading wildcard does not match a topic starting with '$'.
        self.walk(ROOT, Some(topic), topic.starts_with('$'), f);
    }

    fn walk(&self, node: usize, rest: Option<&str>, dollar: bool, f: &mut impl FnMut(Match)) {
        let n = &self.nodes[node];
        let Some(rest) = rest else {
            n.report(node, f);
            // "a/#" also matches "a" (spec 4.7.1.2).
            if let Some(h) = n.hash() {
                self.nodes[h].report(h, f);
            }
            return;
        };
        let (level, tail) = split_level(rest);
        if !dollar {
            if let Some(h) = n.hash() {
                self.nodes[h].report(h, f);
            }
            if let Some(p) = n.plus() {
                self.walk(p, tail, false, f);
            }
        }
        if let Some(&c) = n.children.get(level) {
            self.walk(c, tail, false, f);
        }
    }

    /// One member of a matched shared group: the next online one after the last chosen, or,
    /// if none is online, the next one (its session queues the message).
    pub fn pick_shared(
        &mut self,
        node: usize,
        group: usize,
        online: impl Fn(SessionId) -> bool,
    ) -> Option<SubEntry> {
        let g = self.nodes.get_mut(node)?.shared.get_mut(group)?;
        let n = g.members.len();
        if n == 0 {
            return None;
        }
        let start = g.next % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| online(g.members[i].session))
            .unwrap_or(start);
        g.next = pick + 1;
        Some(g.members[pick])
    }

    /// Nodes in use (for tests of pruning).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(t: &SubscriptionTree, topic: &str) -> Vec<(usize, u8)> {
        let mut v = Vec::new();
        t.for_each_match(topic, &mut |m| {
            if let Match::Entry(e) = m {
                v.push((e.session, e.qos))
            }
        });
        v.sort();
        v
    }

    fn e(session: usize, qos: u8) -> SubEntry {
        SubEntry::new(session, qos)
    }

    #[test]
    fn wildcards_and_dollar() {
        let mut t = SubscriptionTree::default();
        t.insert("a/b", e(1, 0), None);
        t.insert("a/+", e(2, 1), None);
        t.insert("a/#", e(3, 2), None);
        t.insert("#", e(4, 0), None);
        t.insert("+/b", e(5, 0), None);
        t.insert("$SYS/#", e(6, 0), None);
        assert_eq!(
            matches(&t, "a/b"),
            vec![(1, 0), (2, 1), (3, 2), (4, 0), (5, 0)]
        );
        assert_eq!(matches(&t, "a"), vec![(3, 2), (4, 0)]);
        assert_eq!(matches(&t, "a/b/c"), vec![(3, 2), (4, 0)]);
        assert_eq!(matches(&t, "$SYS/b"), vec![(6, 0)]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn replace_and_prune() {
        let mut t = SubscriptionTree::default();
        assert!(t.insert("x/y/z", e(1, 0), None));
        assert!(!t.insert("x/y/z", e(1, 2), None));
        assert_eq!(matches(&t, "x/y/z"), vec![(1, 2)]);
        assert!(t.insert("x/+/#", e(1, 1), None));
        assert!(t.remove("x/y/z", 1, None));
        assert!(!t.remove("x/y/z", 1, None));
        assert!(t.remove("x/+/#", 1, None));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
        // Branches share a prefix: removing one keeps what the other still uses.
        for f in ["a/b/c", "a/b", "a/+/c", "a//", "#", "a/b/c/#"] {
            assert!(t.insert(f, e(2, 0), None));
        }
        assert!(t.insert("a/b/c", e(3, 0), Some("g")));
        assert!(t.remove("a/b", 2, None));
        assert_eq!(matches(&t, "a/b/c").len(), 4); // a/b/c, a/+/c, #, a/b/c/#
        for f in ["a/b/c", "#", "a/+/c", "a//", "a/b/c/#"] {
            assert!(t.remove(f, 2, None));
        }
        assert!(!t.remove("a/b/c", 3, None));
        assert!(t.remove("a/b/c", 3, Some("g")));
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn shared_round_robin_prefers_online() {
        let mut t = SubscriptionTree::default();
        t.insert("s/#", e(1, 1), Some("g"));
        t.insert("s/#", e(2, 1), Some("g"));
        t.insert("s/#", e(3, 1), Some("g"));
        let mut groups = Vec::new();
        t.for_each_match("s/x", &mut |m| groups.push(m));
        let [Match::Shared { node, group }] = groups[..] else {
            panic!("{groups:?}")
        };
        let picks: Vec<usize> = (0..4)
            .map(|_| t.pick_shared(node, group, |_| true).unwrap().session)
            .collect();
        assert_eq!(picks, vec![1, 2, 3, 1]);
        let online_only_3: Vec<usize> = (0..2)
            .map(|_| t.pick_shared(node, group, |s| s == 3).unwrap().session)
            .collect();
        assert_eq!(online_only_3, vec![3, 3]);
        assert!(t.remove("s/#", 2, Some("g")));
        assert!(t.remove("s/#", 1, Some("g")));
        assert!(t.remove("s/#", 3, Some("g")));
        assert_eq!(t.node_count(), 1);
    }
}
