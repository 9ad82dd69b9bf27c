//! Pager-mode conversations (RFC 3428): MESSAGEs between the same two users form one
//! two-party session, kept here, by the pair, until it has been idle for `pager_idle`.
//! Its own lock; nothing here waits on anything.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{count, sweep, Conversation, Rows};

/// The open pager conversations, by (lower AoR, higher AoR).
#[derive(Default)]
pub(crate) struct Pager {
    conversations: Mutex<HashMap<(String, String), Conversation>>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Pager {
    /// The CDR session id of the pair's open conversation.
    pub(crate) fn id(&self, a: &str, b: &str) -> Option<String> {
        self.conversations
            .lock()
            .get(&pair(a, b))
            .map(|c| c.id.clone())
    }

    pub(crate) fn has(&self, a: &str, b: &str) -> bool {
        self.conversations.lock().contains_key(&pair(a, b))
    }

    /// Keeps `conv` as the pair's conversation, unless the pair already has one: then
    /// `conv` comes back (the caller ends it).
    pub(crate) fn keep(&self, a: &str, b: &str, conv: Conversation) -> Option<Conversation> {
        let mut convs = self.conversations.lock();
        let key = pair(a, b);
        if convs.contains_key(&key) {
            return Some(conv);
        }
        convs.insert(key, conv);
        None
    }

    /// Counts a message from `from` to `to` in their conversation, made by `begin` when
    /// there is none. Returns the session id.
    pub(crate) fn count(
        &self,
        from: &str,
        to: &str,
        device: String,
        bytes: usize,
        begin: impl FnOnce() -> Conversation,
    ) -> String {
        let mut convs = self.conversations.lock();
        let conv = convs.entry(pair(from, to)).or_insert_with(begin);
        count(conv, from, device, bytes);
        conv.id.clone()
    }

    /// Ends the conversations idle for `idle` (their final rows into `ended`) and
    /// collects the others' changed counters into `dirty`.
    pub(crate) fn sweep(
        &self,
        now: Instant,
        idle: Duration,
        ended: &mut Vec<(String, Rows)>,
        dirty: &mut Rows,
    ) {
        sweep(&mut self.conversations.lock(), now, idle, ended, dirty);
    }

    /// Every open conversation, taken out (a stop).
    pub(crate) fn drain(&self) -> Vec<Conversation> {
        self.conversations.lock().drain().map(|(_, c)| c).collect()
    }
}
