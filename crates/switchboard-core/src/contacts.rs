//! Contact lists and the privacy relationship a list's owner gives each contact (the
//! Lync privacy model, MS-PRES §3.7.4: containers 100–32000 by relationship).

use std::fmt;
use std::str::FromStr;

/// How much of a user's presence a watcher may see (the Lync privacy model), least to
/// most. The owner of a contact list sets it per contact.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Relationship {
    /// Sees the user as offline, and nothing else.
    Blocked,
    /// Availability only.
    External,
    /// Adds activity, note, calendar free/busy, contact card (the default inside one
    /// organisation).
    Colleagues,
    /// Adds meeting subject and location.
    Workgroup,
    /// Adds the personal phone.
    Friends,
}

impl Relationship {
    pub const ALL: [Relationship; 5] = [
        Relationship::Blocked,
        Relationship::External,
        Relationship::Colleagues,
        Relationship::Workgroup,
        Relationship::Friends,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Relationship::Blocked => "blocked",
            Relationship::External => "external",
            Relationship::Colleagues => "colleagues",
            Relationship::Workgroup => "workgroup",
            Relationship::Friends => "friends",
        }
    }
}

impl fmt::Display for Relationship {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a relationship: use blocked, external, colleagues, workgroup or friends")]
pub struct RelationshipError(pub String);

impl FromStr for Relationship {
    type Err = RelationshipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        Relationship::ALL
            .into_iter()
            .find(|r| r.as_str() == t || (t == "friends-and-family" && *r == Relationship::Friends))
            .ok_or_else(|| RelationshipError(s.into()))
    }
}

/// One entry of a contact list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContactEntry {
    /// `user@domain`.
    pub contact: String,
    pub relationship: Relationship,
    /// Names of the groups it is in (possibly none).
    pub groups: Vec<String>,
    pub added_at_ms: i64,
    /// On the list the owner sees. `false`: the owner only gave this user a relationship
    /// (blocked them, or put them in a container) without adding them as a contact.
    #[serde(default = "listed_by_default")]
    pub listed: bool,
}

fn listed_by_default() -> bool {
    true
}

/// A contact list: its groups and contacts, and a version bumped by every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContactList {
    pub version: i64,
    pub groups: Vec<String>,
    pub contacts: Vec<ContactEntry>,
}
