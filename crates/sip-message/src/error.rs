//! Parse errors, with the SIP status a server should answer them with.

use crate::header::Headers;

/// Why a message (or one header value) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// Human-readable reason; safe to put in a reason phrase or Warning header.
    pub reason: String,
    /// Status to answer a request with (400, 505, 413, ...).
    pub status: u16,
}

impl ParseError {
    pub(crate) fn syntax(reason: impl Into<String>) -> Self {
        ParseError {
            reason: reason.into(),
            status: 400,
        }
    }
    pub(crate) fn with_status(status: u16, reason: impl Into<String>) -> Self {
        ParseError {
            reason: reason.into(),
            status,
        }
    }
}

/// A message that was framed but failed validation. When it was a request, `head` carries
/// what is needed to answer it (RFC 3261 §8.2: even a bad request gets a response when the
/// Via, From, To, Call-ID and CSeq can be read).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    pub error: ParseError,
    pub head: Option<RejectedHead>,
}

/// The parts of a rejected request that a response needs.
#[derive(Debug, Clone)]
pub struct RejectedHead {
    /// The request method as written, `None` for a response.
    pub method: Option<String>,
    pub headers: Headers,
}
