//! # sip-message: the SIP wire format, with no I/O
//!
//! Parser and serializer for SIP messages (RFC 3261 §7, §20, §25) as Switchboard needs
//! them: a proxy/registrar that must read everything a client may send and must keep each
//! header's raw text (MS-SIPAE signs values as they appeared).
//!
//! ## Layout
//! - [`parse`]: framing of datagrams and streams (RFC 3261 §18.3, RFC 5626 §4.4.1) and
//!   validation (what makes a message well-formed; the RFC 4475 verdicts).
//! - [`message`]: the model (start line, headers, body), serializer, response builder.
//! - [`header`]: header names with compact forms (§7.3.3) and the ordered raw list.
//! - [`typed`]: typed views parsed on demand (Via, name-addr, CSeq, auth params).
//! - [`uri`]: SIP/SIPS (§19.1), tel (RFC 3966) and other absolute URIs, IPv6 (RFC 5118).
//!
//! Unknown headers and extension methods (`SERVICE`, `BENOTIFY`, `NEGOTIATE`, ...) pass
//! through untouched.
#![forbid(unsafe_code)]

mod cursor;
pub mod error;
pub mod header;
pub mod message;
pub mod parse;
pub mod typed;
pub mod uri;

pub use cursor::{quote, split_commas, unquote};
pub use error::{ParseError, Rejected, RejectedHead};
pub use header::{Header, HeaderName, Headers};
pub use message::{reason_phrase, response_from_headers, Message, Method, StartLine};
pub use parse::{
    frame_stream, parse_datagram, parse_stream_message, read_request_head, Frame, FrameError,
    StreamFramer,
};
pub use typed::{AuthHeader, CSeq, ContactValue, NameAddr, Via, BRANCH_COOKIE};
pub use uri::{Host, Params, Scheme, SipUri, TelUri, Uri};
