//! # msrtc: the documents of the Lync dialect
//!
//! Lync / Skype for Business clients speak SIP, but their presence, contact lists and
//! settings travel in Microsoft XML documents rather than PIDF and XCAP. This crate reads
//! and writes those documents; it knows nothing of sockets, users or storage (the
//! presence service maps them onto its one presence model).
//!
//! - [`publish`]: MS-PRES §2.2.2.3 category publications (SERVICE
//!   `application/msrtc-category-publish+xml`), the `WrongDelta` fault, batched category
//!   subscriptions (§2.2.2.4, `application/msrtc-adrl-categorylist+xml`), container
//!   members (§2.2.2.5) and subscriber acknowledgements;
//! - [`categories`]: what watchers receive (`application/msrtc-event-categories+xml`,
//!   §2.2.2.1: `state`, `note`, `contactCard`) and the owner's roaming data
//!   (`application/vnd-microsoft-roaming-self+xml`, §2.2.2.2);
//! - [`contacts`]: the server-stored contact list (`vnd-microsoft-roaming-contacts`,
//!   MS-SIP §2.2.2) with its deltas, and the SOAP edits clients send over SERVICE;
//! - [`provisioning`]: `vnd-microsoft-provisioning-v2` server configuration (MS-SIP §2.2.2.4);
//! - [`cccp`]: C3P conference control (MS-CONFBAS), the conference document with its
//!   `msci` extensions, `ms-conf-invite` invitations and IM MCU delivery reports.
//!
//! Availability numbers (MS-PRES §3.7.5.3): read by [`band`]; clients write the middle
//! of a band (3500 available, 6500 busy, 9500 do not disturb, 12500 be right back, 15500
//! away, 18500 offline).
#![forbid(unsafe_code)]

pub mod categories;
pub mod cccp;
pub mod contacts;
pub mod provisioning;
pub mod publish;
pub mod tree;

pub use tree::{escape, Element};

/// Why a document was refused (the request is answered 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsrtcError {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("unexpected document: {0}")]
    Unexpected(String),
}

/// The bands of the availability scale (MS-PRES §3.7.5.3, Lync 2013 ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    Available,
    /// Available but idle (4500–5999).
    Idle,
    Busy,
    /// Busy but idle (7500–8999).
    BusyIdle,
    DoNotDisturb,
    BeRightBack,
    Away,
    Offline,
}

/// The band an availability number falls in; below 3000 is "no information" (offline).
pub fn band(availability: u32) -> Band {
    match availability {
        3000..=4499 => Band::Available,
        4500..=5999 => Band::Idle,
        6000..=7499 => Band::Busy,
        7500..=8999 => Band::BusyIdle,
        9000..=11999 => Band::DoNotDisturb,
        12000..=14999 => Band::BeRightBack,
        15000..=17999 => Band::Away,
        _ => Band::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cover_the_scale() {
        for (n, b) in [
            (0, Band::Offline),
            (3500, Band::Available),
            (4500, Band::Idle),
            (6500, Band::Busy),
            (7500, Band::BusyIdle),
            (9500, Band::DoNotDisturb),
            (12500, Band::BeRightBack),
            (15500, Band::Away),
            (18500, Band::Offline),
        ] {
            assert_eq!(band(n), b, "{n}");
        }
    }
}
