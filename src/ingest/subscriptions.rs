//! Which topics the node is subscribed to in Redis, kept in step with local interest
//! lazily: a topic that gained its first local subscriber is SUBSCRIBEd, one that lost
//! its last is UNSUBSCRIBEd, and the changes that arrive together go out together,
//! many topics per command. Sans-IO: the caller sends the commands and reports back.

use std::collections::HashSet;

use coregate_protocol::Topic;

/// Topics per SUBSCRIBE/UNSUBSCRIBE command: large batches, bounded replies.
pub const MAX_TOPICS_PER_COMMAND: usize = 1024;

/// See the module docs.
#[derive(Debug, Default)]
pub struct RedisSubscriptions {
    /// Confirmed by Redis on the current connection.
    subscribed: HashSet<Topic>,
    /// Topics whose local interest changed since the last sync.
    dirty: HashSet<Topic>,
}

/// What to send to bring Redis in step with local interest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    pub subscribe: Vec<Topic>,
    pub unsubscribe: Vec<Topic>,
}

impl RedisSubscriptions {
    /// Local interest in `topic` changed (either way).
    pub fn mark(&mut self, topic: Topic) {
        self.dirty.insert(topic);
    }

    /// Whether there is anything to sync.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the changes: what to subscribe and unsubscribe, given what is wanted now.
    /// A topic gained and lost again since the last sync needs nothing.
    pub fn plan(&mut self, wanted: impl Fn(&Topic) -> bool) -> SyncPlan {
        let mut plan = SyncPlan::default();
        for topic in self.dirty.drain() {
            match (wanted(&topic), self.subscribed.contains(&topic)) {
                (true, false) => plan.subscribe.push(topic),
                (false, true) => plan.unsubscribe.push(topic),
                _ => {}
            }
        }
        plan
    }

    /// Redis confirmed these subscriptions.
    pub fn subscribed(&mut self, topics: &[Topic]) {
        self.subscribed.extend(topics.iter().cloned());
    }

    /// Redis confirmed these unsubscriptions.
    pub fn unsubscribed(&mut self, topics: &[Topic]) {
        for topic in topics {
            self.subscribed.remove(topic);
        }
    }

    /// The connection is gone, and with it every subscription: everything wanted must
    /// be subscribed again on the next connection.
    pub fn reset<'t>(&mut self, wanted: impl Iterator<Item = &'t Topic>) {
        self.subscribed.clear();
        self.dirty.clear();
        self.dirty.extend(wanted.cloned());
    }

    /// Topics subscribed in Redis now.
    pub fn len(&self) -> usize {
        self.subscribed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Topic {
        Topic::parse(name).expect("topic")
    }

    #[test]
    fn lazy_and_batched() {
        let mut subs = RedisSubscriptions::default();
        let wanted: HashSet<Topic> = [t("channel:1"), t("channel:2")].into();
        subs.mark(t("channel:1"));
        subs.mark(t("channel:2"));
        subs.mark(t("channel:3")); // gained and lost again before the sync
        let mut plan = subs.plan(|topic| wanted.contains(topic));
        plan.subscribe.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(plan.subscribe, vec![t("channel:1"), t("channel:2")]);
        assert!(plan.unsubscribe.is_empty());
        subs.subscribed(&plan.subscribe);
        assert_eq!(subs.len(), 2);
        assert!(!subs.has_changes());
        subs.mark(t("channel:1"));
        let plan = subs.plan(|topic| topic == &t("channel:2"));
        assert_eq!(plan.unsubscribe, vec![t("channel:1")]);
        subs.unsubscribed(&plan.unsubscribe);
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn reset_resubscribes_everything_wanted() {
        let mut subs = RedisSubscriptions::default();
        subs.mark(t("channel:1"));
        let plan = subs.plan(|_| true);
        subs.subscribed(&plan.subscribe);
        let wanted = [t("channel:1"), t("server:2")];
        subs.reset(wanted.iter());
        assert_eq!(subs.len(), 0);
        let plan = subs.plan(|_| true);
        assert_eq!(plan.subscribe.len(), 2);
    }
}
