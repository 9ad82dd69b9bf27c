//! # switchboard-core: the domain, and the seams between services and their data
//!
//! What every service speaks in, with no transport, no SQL and no runtime underneath:
//! - **Domain types**: [`Address`] (a user's address of record), contact lists and the
//!   privacy [`Relationship`] a list's owner gives each contact, presence a user set
//!   without a client ([`ManualState`], [`CalendarEntry`], [`ContactCard`]), accounts
//!   and their password-equivalent [`Credentials`], and what the IM service records
//!   (CDR [`SessionRecord`]s, [`OfflineMessage`]s).
//! - **Data traits** ([`data`]): each service's durable state in its own terms —
//!   [`Directory`], [`CdrData`], [`OfflineData`], [`ContactData`], [`PresenceData`] —
//!   async, so a service awaits its data outside its locks, and implemented by the
//!   store crate (SQLite by default, PostgreSQL for a pool). A service holds them as
//!   `Arc<dyn …>` and never names a backend.
//! - **Pool state** ([`pool`]): an Enterprise pool's membership (front ends, epochs,
//!   heartbeats) and where each user's devices are connected, tied to (front end,
//!   epoch) so a dead front end's rows go in one statement.
//! - **Seams** ([`seam`]): how the router and the services talk without naming each
//!   other — the hooks the services implement ([`seam::ImHook`], [`seam::EventHook`]),
//!   the [`seam::Deliverer`] the router implements for requests services originate, and
//!   [`seam::Flow`], where a request came from (a front end and a connection there),
//!   opaque to services.
//! - **[`DataError`]**: what a data trait reports. [`DataError::is_unavailable`] says the
//!   database cannot answer now: services then fail **closed** (503 with Retry-After to
//!   the requester, offline to a watcher), never open.
//!
//! Arrows: this crate depends only on the no-I/O wire crates (sip-message for the
//! seams' messages; Digest and NTLM hashing, for [`Credentials::derive`]). Everything above — store, registrar, services, router,
//! binary — depends on it; it depends on none of them.
#![forbid(unsafe_code)]

mod address;
mod contacts;
pub mod data;
mod error;
mod im;
pub mod pool;
mod presence;
pub mod seam;
mod users;

pub use address::{Address, AddressError};
pub use contacts::{ContactEntry, ContactList, Relationship, RelationshipError};
pub use data::{CdrData, ContactData, Directory, OfflineData, PresenceData};
pub use error::DataError;
pub use im::{Keep, OfflineMessage, ParticipantRecord, Run, SessionFilter, SessionRecord};
pub use presence::{CalendarEntry, CalendarKind, ContactCard, ManualState, StoredPresence};
pub use users::{Credentials, UserRecord};
