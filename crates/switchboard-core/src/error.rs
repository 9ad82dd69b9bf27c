//! What a data trait reports, in terms a service can act on without knowing the backend.

/// Why the data behind a service could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The database cannot answer now (connection lost, locked, failing over): the
    /// request may succeed later. Services fail closed: 503 with Retry-After.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("database schema version {found} is newer than this program knows ({known}); upgrade switchboard")]
    SchemaTooNew { found: i64, known: i64 },
    /// A pool front end wrote under a membership that is gone (it was reaped, or
    /// restarted elsewhere): it must fence itself and rejoin.
    #[error("front end {fe} (epoch {epoch}) is no longer a member of the pool")]
    NotMember { fe: u32, epoch: i64 },
    /// A front end id that another live process holds (its heartbeat is fresh).
    #[error("{0}")]
    MemberAlive(String),
    /// Anything else the backend reported: not transient (a constraint, corruption, a
    /// bug). Services fail closed on it too.
    #[error("database error: {0}")]
    Backend(String),
}

impl DataError {
    /// The database could not be reached or could not answer in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DataError::Unavailable(_))
    }
}
