//! # switchboard-registrar: who is signed in, and where
//!
//! The location service behind REGISTER (RFC 3261 §10.3): for each address of record
//! (AoR) the set of bindings (a user signed in on several devices has several), each
//! with its contact, expiry, Call-ID/CSeq ordering, `+sip.instance`/`reg-id` (RFC 5626
//! §6) and GRUUs (RFC 5627), and the *flow* it registered over, so requests go back over
//! that same connection. The flow is the core's [`switchboard_core::seam::Flow`] (the
//! router turns the transport's source into it), so this crate never sees a transport.
//!
//! Arrows: depends on sip-message (REGISTER, Contact) and switchboard-core (the flow);
//! the router (switchboard-proxy) depends on it.
//!
//! Authentication is not done here; the caller passes an already authenticated AoR.
//! Bindings are soft state kept in memory: clients refresh them, and after a restart they
//! register again.
#![forbid(unsafe_code)]

mod location;

pub use location::{
    instance_of, Binding, Location, RegisterError, RegisterOutcome, RegistrarConfig,
};
