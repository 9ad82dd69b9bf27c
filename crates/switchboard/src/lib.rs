//! # switchboard: the server binary's library half
//!
//! Wires the crates below into one process (Standard Edition): configuration
//! ([`config`]), TLS certificates ([`tls`]), the server ([`server::start`]) and its HTTP
//! status endpoints. `main.rs` holds the command line. Tests start servers through
//! [`server::start`] on ephemeral loopback ports.
#![forbid(unsafe_code)]

pub mod config;
mod http;
pub mod server;
pub mod tls;
