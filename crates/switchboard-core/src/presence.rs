//! Presence a user set without a client: manual availability and note, calendar
//! entries, the contact card, and when they were last active.

/// Availability the user set by hand (a token the presence service parses).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManualState {
    pub availability: String,
    pub note: Option<String>,
    /// Until when it holds (absent: until cleared).
    pub until_ms: Option<i64>,
    pub set_at_ms: i64,
}

/// What a calendar entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalendarKind {
    Meeting,
    OutOfOffice,
}

impl CalendarKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CalendarKind::Meeting => "meeting",
            CalendarKind::OutOfOffice => "out-of-office",
        }
    }
}

/// A meeting or an out-of-office period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CalendarEntry {
    pub kind: CalendarKind,
    pub from_ms: i64,
    pub to_ms: i64,
    pub subject: Option<String>,
    pub location: Option<String>,
    pub note: Option<String>,
}

/// Contact-card fields beyond the display name (kept in the user directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContactCard {
    pub title: Option<String>,
    pub email: Option<String>,
    pub work_phone: Option<String>,
    pub personal_phone: Option<String>,
}

/// Everything stored about one user's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPresence {
    pub manual: Option<ManualState>,
    /// Entries that have not ended yet, by start time.
    pub calendar: Vec<CalendarEntry>,
    pub card: ContactCard,
    pub last_active_ms: Option<i64>,
    /// In an Enterprise pool: the devices this user has on each front end, as that
    /// front end wrote them (`crate::pool::PoolPresenceData`): `(front end, devices)`,
    /// the devices as the presence service's JSON. Empty outside a pool.
    pub pool_devices: Vec<(u32, String)>,
}
