//! What the IM service records: call detail records (never message content) and the
//! messages kept for users who were offline.

/// One run of a server: which server (its owner id: a front end's id in a pool,
/// [`Run::STANDALONE`] for a Standard Edition) and which start of it (an epoch greater
/// than any run's before it). Sessions are recorded with the run that started them, so
/// a restarted server closes what *its own* earlier runs left open, never another
/// server's live sessions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub owner: String,
    pub epoch: i64,
}

impl Run {
    /// The owner id of a server that is not part of a pool.
    pub const STANDALONE: &'static str = "standalone";
}

/// One IM session as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    /// `two-party` or `conference`.
    pub kind: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub initiator: String,
    pub organiser: Option<String>,
    pub escalated_from: Option<String>,
}

/// One participant of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParticipantRecord {
    pub address: String,
    pub device: String,
    pub joined_at_ms: i64,
    pub left_at_ms: Option<i64>,
    pub messages: i64,
    pub bytes: i64,
}

/// A message waiting for its recipient to sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    pub id: i64,
    pub recipient: String,
    pub sender: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub received_at_ms: i64,
    pub session_id: Option<String>,
}

/// What became of a message offered for keeping (`store_offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Kept,
    /// The recipient has as many messages waiting as anyone may leave them.
    MailboxFull,
    /// The recipient has as many messages waiting from this sender as one sender may
    /// leave (others can still leave theirs).
    SenderFull,
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub since_ms: Option<i64>,
    /// Sessions this address took part in.
    pub participant: Option<String>,
    pub limit: Option<usize>,
}
