//! The subscription table: a trie of topic-filter levels.
//!
//! Matching a topic walks one path per level plus the `+` and `#` branches, so its cost grows
//! with the topic's levels and the wildcards on the way, not with the number of subscriptions,
//! and it allocates nothing. Nodes are made when a filter first uses a level (a subscribe-time
//! allocation) and removed when the last subscription under them goes.

use super::fxhash::FxHashMap;
use super::topic::split_level;
use super::SessionId;
use slab::Slab;

/// One session's subscription at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    pub session: SessionId,
    pub qos: u8,
}

#[derive(Default)]
struct Node {
    parent: usize,
    /// This node's level in its parent (empty for the root and the wildcard children).
    level: Box<str>,
    children: FxHashMap<Box<str>, usize>,
    plus: Option<usize>,
    hash: Option<usize>,
    subs: Vec<SubEntry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subs.is_empty()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }
}

pub struct SubscriptionTree {
    nodes: Slab<Node>,
    count: usize,
}

const ROOT: usize = 0;

impl Default for SubscriptionTree {
    fn default() -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node::default());
        SubscriptionTree { nodes, count: 0 }
    }
}

impl SubscriptionTree {
    /// Number of (session, filter) subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add or replace `session`'s subscription to a valid `filter`. Returns true if it is new.
    pub fn insert(&mut self, filter: &str, entry: SubEntry) -> bool {
        let mut node = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            node = self.child_or_insert(node, level);
        }
        let subs = &mut self.nodes[node].subs;
        match subs.iter_mut().find(|s| s.session == entry.session) {
            Some(s) => {
                *s = entry;
                false
            }
            None => {
                subs.push(entry);
                self.count += 1;
                true
            }
        }
    }

    fn child_or_insert(&mut self, node: usize, level: &str) -> usize {
        let existing = match level {
            "+" => self.nodes[node].plus,
            "#" => self.nodes[node].hash,
            _ => self.nodes[node].children.get(level).copied(),
        };
        if let Some(c) = existing {
            return c;
        }
        let wildcard = level == "+" || level == "#";
        let child = self.nodes.insert(Node {
            parent: node,
            level: if wildcard { "".into() } else { level.into() },
            ..Node::default()
        });
        let n = &mut self.nodes[node];
        match level {
            "+" => n.plus = Some(child),
            "#" => n.hash = Some(child),
            _ => {
                n.children.insert(level.into(), child);
            }
        }
        child
    }

    fn find(&self, filter: &str) -> Option<usize> {
        let mut node = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            let n = &self.nodes[node];
            node = match level {
                "+" => n.plus?,
                "#" => n.hash?,
                _ => *n.children.get(level)?,
            };
        }
        Some(node)
    }

    /// Remove `session`'s subscription to `filter`. Returns true if there was one.
    pub fn remove(&mut self, filter: &str, session: SessionId) -> bool {
        let Some(mut node) = self.find(filter) else {
            return false;
        };
        let subs = &mut self.nodes[node].subs;
        let Some(i) = subs.iter().position(|s| s.session == session) else {
            return false;
        };
        subs.swap_remove(i);
        self.count -= 1;
        // Prune the now-empty branch so a churn of distinct filters cannot grow the trie.
        while node != ROOT && self.nodes[node].is_empty() {
            let gone = self.nodes.remove(node);
            let parent = &mut self.nodes[gone.parent];
            if parent.plus == Some(node) {
                parent.plus = None;
            } else if parent.hash == Some(node) {
                parent.hash = None;
            } else {
                parent.children.remove(&gone.level);
            }
            node = gone.parent;
        }
        true
    }

    /// Call `f` for every subscription whose filter matches the topic name `topic`.
    /// A session with several matching filters is reported once per filter.
    pub fn for_each_match(&self, topic: &str, f: &mut impl FnMut(SubEntry)) {
        // Spec 4.7.2: a leading wildcard does not match a topic starting with '$'.
        self.walk(ROOT, Some(topic), topic.starts_with('$'), f);
    }

    fn walk(&self, node: usize, rest: Option<&str>, dollar: bool, f: &mut impl FnMut(SubEntry)) {
        let n = &self.nodes[node];
        let Some(rest) = rest else {
            n.subs.iter().for_each(|s| f(*s));
            // "a/#" also matches "a" (spec 4.7.1.2).
            if let Some(h) = n.hash {
                self.nodes[h].subs.iter().for_each(|s| f(*s));
            }
            return;
        };
        let (level, tail) = split_level(rest);
        if !dollar {
            if let Some(h) = n.hash {
                self.nodes[h].subs.iter().for_each(|s| f(*s));
            }
            if let Some(p) = n.plus {
                self.walk(p, tail, false, f);
            }
        }
        if let Some(&c) = n.children.get(level) {
            self.walk(c, tail, false, f);
        }
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
        t.for_each_match(topic, &mut |e| v.push((e.session, e.qos)));
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar() {
        let mut t = SubscriptionTree::default();
        t.insert("a/b", SubEntry { session: 1, qos: 0 });
        t.insert("a/+", SubEntry { session: 2, qos: 1 });
        t.insert("a/#", SubEntry { session: 3, qos: 2 });
        t.insert("#", SubEntry { session: 4, qos: 0 });
        t.insert("+/b", SubEntry { session: 5, qos: 0 });
        t.insert("$SYS/#", SubEntry { session: 6, qos: 0 });
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
        assert!(t.insert("x/y/z", SubEntry { session: 1, qos: 0 }));
        assert!(!t.insert("x/y/z", SubEntry { session: 1, qos: 2 }));
        assert_eq!(matches(&t, "x/y/z"), vec![(1, 2)]);
        assert!(t.insert("x/+/#", SubEntry { session: 1, qos: 1 }));
        assert!(t.remove("x/y/z", 1));
        assert!(!t.remove("x/y/z", 1));
        assert!(t.remove("x/+/#", 1));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }
}
