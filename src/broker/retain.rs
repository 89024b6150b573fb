//! Retained messages: a trie of topic levels holding at most one message per topic, so a
//! subscription's filter finds its retained messages by walking the trie, not by scanning
//! every retained topic.

use super::fxhash::FxHashMap;
use super::message::MsgId;
use super::topic::split_level;
use slab::Slab;

#[derive(Default)]
struct Node {
    parent: usize,
    level: Box<str>,
    children: FxHashMap<Box<str>, usize>,
    msg: Option<MsgId>,
}

pub struct RetainedStore {
    nodes: Slab<Node>,
    count: usize,
}

const ROOT: usize = 0;

impl Default for RetainedStore {
    fn default() -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node::default());
        RetainedStore { nodes, count: 0 }
    }
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Set the retained message of `topic`, returning the one it replaces (whose reference
    /// the caller now owns and must release).
    pub fn set(&mut self, topic: &str, msg: MsgId) -> Option<MsgId> {
        let mut node = ROOT;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            node = match self.nodes[node].children.get(level) {
                Some(&c) => c,
                None => {
                    let c = self.nodes.insert(Node {
                        parent: node,
                        level: level.into(),
                        ..Node::default()
                    });
                    self.nodes[node].children.insert(level.into(), c);
                    c
                }
            };
        }
        let old = self.nodes[node].msg.replace(msg);
        if old.is_none() {
            self.count += 1;
        }
        old
    }

    /// Remove the retained message of `topic`, returning it (the caller releases it).
    pub fn remove(&mut self, topic: &str) -> Option<MsgId> {
        let mut node = ROOT;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            node = *self.nodes[node].children.get(level)?;
        }
        let old = self.nodes[node].msg.take()?;
        self.count -= 1;
        while node != ROOT && self.nodes[node].msg.is_none() && self.nodes[node].children.is_empty()
        {
            let gone = self.nodes.remove(node);
            self.nodes[gone.parent].children.remove(&gone.level);
            node = gone.parent;
        }
        Some(old)
    }

    /// Call `f` with every retained message (for a snapshot; each message holds its topic).
    pub fn for_each(&self, mut f: impl FnMut(MsgId)) {
        self.nodes
            .iter()
            .filter_map(|(_, n)| n.msg)
            .for_each(&mut f);
    }

    /// Call `f` with every retained message whose topic matches the valid filter `filter`.
    pub fn for_each_match(&self, filter: &str, f: &mut impl FnMut(MsgId)) {
        self.walk(ROOT, Some(filter), true, f);
    }

    fn walk(&self, node: usize, rest: Option<&str>, at_root: bool, f: &mut impl FnMut(MsgId)) {
        let n = &self.nodes[node];
        let Some(rest) = rest else {
            if let Some(m) = n.msg {
                f(m);
            }
            return;
        };
        let (level, tail) = split_level(rest);
        match level {
            "#" => {
                // "a/#" matches "a" itself as well as everything below it.
                if !at_root {
                    if let Some(m) = n.msg {
                        f(m);
                    }
                }
                for (name, &c) in &n.children {
                    if !(at_root && name.starts_with('$')) {
                        self.all_below(c, f);
                    }
                }
            }
            "+" => {
                for (name, &c) in &n.children {
                    if !(at_root && name.starts_with('$')) {
                        self.walk(c, tail, false, f);
                    }
                }
            }
            _ => {
                if let Some(&c) = n.children.get(level) {
                    self.walk(c, tail, false, f);
                }
            }
        }
    }

    fn all_below(&self, node: usize, f: &mut impl FnMut(MsgId)) {
        let n = &self.nodes[node];
        if let Some(m) = n.msg {
            f(m);
        }
        for &c in n.children.values() {
            self.all_below(c, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &RetainedStore, filter: &str) -> Vec<MsgId> {
        let mut v = Vec::new();
        s.for_each_match(filter, &mut |m| v.push(m));
        v.sort();
        v
    }

    #[test]
    fn set_match_remove() {
        let mut s = RetainedStore::default();
        assert_eq!(s.set("a/b", 1), None);
        assert_eq!(s.set("a", 2), None);
        assert_eq!(s.set("a/b/c", 3), None);
        assert_eq!(s.set("$SYS/x", 4), None);
        assert_eq!(s.set("a/b", 5), Some(1));
        assert_eq!(s.len(), 4);
        assert_eq!(found(&s, "#"), vec![2, 3, 5]);
        assert_eq!(found(&s, "a/#"), vec![2, 3, 5]);
        assert_eq!(found(&s, "+/b"), vec![5]);
        assert_eq!(found(&s, "+"), vec![2]);
        assert_eq!(found(&s, "$SYS/+"), vec![4]);
        assert_eq!(s.remove("a/b"), Some(5));
        assert_eq!(s.remove("a/b"), None);
        assert_eq!(found(&s, "a/+/c"), vec![3]);
        assert_eq!(s.remove("a/b/c"), Some(3));
        assert_eq!(s.remove("a"), Some(2));
        assert_eq!(s.remove("$SYS/x"), Some(4));
        assert_eq!(s.nodes.len(), 1);
    }
}
