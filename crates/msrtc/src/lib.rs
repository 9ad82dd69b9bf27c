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
//! - [`provisioning`]: `vnd-microsoft-provisioning-v2` server configuration (MS-SIP §2.2.2.4).
//!
//! Availability numbers (MS-PRES §3.7.5.3): the ranges below, the value inside a range
//! being the client's (3500 available, 6500 busy, 9500 do not disturb, 12500 be right
//! back, 15500 away, 18500 offline).
#![forbid(unsafe_code)]

pub mod categories;
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

/// The number written for a band (the middle value Lync clients publish).
pub fn number(b: Band) -> u32 {
    match b {
        Band::Available => 3500,
        Band::Idle => 4500,
        Band::Busy => 6500,
        Band::BusyIdle => 7500,
        Band::DoNotDisturb => 9500,
        Band::BeRightBack => 12500,
        Band::Away => 15500,
        Band::Offline => 18500,
    }
}

/// RFC 3339 in UTC, seconds, as the documents write times.
pub fn fmt_time(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
            if n != 0 {
                assert_eq!(band(number(b)), b);
            }
        }
    }

    #[test]
    fn times() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_704_067_200_000), "2024-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_795_000_000_123), "2026-11-18T11:06:40Z");
    }
}
