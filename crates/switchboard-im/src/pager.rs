//! Pager-mode conversations (RFC 3428): MESSAGEs between the same two users form one
//! two-party session, kept here, by the pair, until it has been idle for `pager_idle`.
//! Starting one writes its CDR row through the [`CdrLog`] the caller passes in.
//!
//! Lock rule: one lock (`conversations`), held only to read or change the map, never
//! across an await or a call into another part; the CDR start a new conversation needs
//! is awaited with the lock released, and the map is checked again after it.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::cdr::{new_session, CdrLog};
use crate::{count, now_ms, sweep, Conversation, Rows};

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

    fn has(&self, a: &str, b: &str) -> bool {
        self.conversations.lock().contains_key(&pair(a, b))
    }

    /// Keeps `conv` as the pair's conversation, unless the pair already has one: then
    /// `conv` comes back (the caller ends it).
    fn keep(&self, a: &str, b: &str, conv: Conversation) -> Option<Conversation> {
        let mut convs = self.conversations.lock();
        let key = pair(a, b);
        if convs.contains_key(&key) {
            return Some(conv);
        }
        convs.insert(key, conv);
        None
    }

    /// Counts a message from `from` to `to` in their conversation, starting one (its
    /// start queued on `cdr`) if needed. Returns the session id.
    pub(crate) fn record(
        &self,
        cdr: &CdrLog,
        from: &str,
        to: &str,
        device: String,
        bytes: usize,
    ) -> String {
        let mut convs = self.conversations.lock();
        let conv = convs.entry(pair(from, to)).or_insert_with(|| {
            cdr.begin_two_party(from, &[(from, String::new()), (to, String::new())])
        });
        count(conv, from, device, bytes);
        conv.id.clone()
    }

    /// Makes sure the pair has an open conversation; `false` when a new one cannot be
    /// recorded now (the CDR is failing or backed up): then the message is refused rather
    /// than relayed unrecorded, so the IM service is never bypassed.
    pub(crate) async fn ensure(&self, cdr: &CdrLog, from: &str, to: &str) -> bool {
        if self.has(from, to) {
            return true;
        }
        if !cdr.accepting() {
            return false;
        }
        let parts = [(from, String::new()), (to, String::new())];
        let (conv, start) = new_session("two-party", from, None, None, &parts);
        // Written before the first message goes anywhere.
        if let Err(e) = cdr.write_now(start).await {
            tracing::error!(error = %e, from, to, "cannot record a new conversation; message refused");
            return false;
        }
        if let Some(conv) = self.keep(from, to, conv) {
            // Another message of the pair started one meanwhile: that one holds the chat.
            cdr.finish(&conv.id, conv.records(None, false), now_ms(), "superseded");
        }
        true
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
