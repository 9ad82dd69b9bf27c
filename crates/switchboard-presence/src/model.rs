//! The one presence model every dialect publishes into and reads from: what a device
//! says ([`DeviceState`]), and what the user's presence is after aggregation
//! ([`Presence`]).

use std::fmt;
use std::str::FromStr;

/// Whether someone is available and willing to talk, most available first. The Lync
/// availability numbers (MS-PRES §3.7.5.3) come with each value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Availability {
    Available,
    /// Available, but the device has been idle for a while (machine state only).
    Inactive,
    Busy,
    DoNotDisturb,
    BeRightBack,
    Away,
    Offline,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::Inactive => "inactive",
            Availability::Busy => "busy",
            Availability::DoNotDisturb => "dnd",
            Availability::BeRightBack => "brb",
            Availability::Away => "away",
            Availability::Offline => "offline",
        }
    }

    /// The Lync aggregate availability number (MS-PRES §3.7.5.3).
    pub fn lync_number(self) -> u32 {
        match self {
            Availability::Available => 3500,
            Availability::Inactive => 4500,
            Availability::Busy => 6500,
            Availability::DoNotDisturb => 9500,
            Availability::BeRightBack => 12500,
            Availability::Away => 15500,
            Availability::Offline => 18500,
        }
    }

    /// Someone reachable at all (not offline).
    pub fn is_online(self) -> bool {
        self != Availability::Offline
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an availability: use available, busy, dnd, brb, away or offline")]
pub struct AvailabilityError(pub String);

impl FromStr for Availability {
    type Err = AvailabilityError;
    /// The values a user may set (not `inactive`, which only machines produce).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "available" | "online" => Availability::Available,
            "busy" => Availability::Busy,
            "dnd" | "do-not-disturb" => Availability::DoNotDisturb,
            "brb" | "be-right-back" => Availability::BeRightBack,
            "away" => Availability::Away,
            "offline" | "appear-offline" => Availability::Offline,
            _ => return Err(AvailabilityError(s.into())),
        })
    }
}

/// What someone is doing, beside their availability.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    InACall,
    InAConference,
    InAMeeting,
    Presenting,
    OutOfOffice,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::InACall => "in-a-call",
            Activity::InAConference => "in-a-conference",
            Activity::InAMeeting => "in-a-meeting",
            Activity::Presenting => "presenting",
            Activity::OutOfOffice => "out-of-office",
        }
    }

    pub fn parse(s: &str) -> Option<Activity> {
        [
            Activity::InACall,
            Activity::InAConference,
            Activity::InAMeeting,
            Activity::Presenting,
            Activity::OutOfOffice,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What one device (one publication) says about its user. Serialized (JSON) when an
/// Enterprise pool's front ends share their users' devices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// Names the device: the publication's ETag chain, or a Lync endpoint id.
    pub device: String,
    /// As published: open → available, closed → offline, RPID activities refine it.
    pub availability: Availability,
    /// Activities the device reports (a call, a meeting, presenting...).
    pub activities: Vec<Activity>,
    /// When the user last touched the device, if it reports being idle (RFC 4480 §3.7).
    pub idle_since_ms: Option<i64>,
    pub note: Option<String>,
    /// When the device last published.
    pub updated_ms: i64,
}

impl DeviceState {
    pub fn new(device: impl Into<String>, availability: Availability, updated_ms: i64) -> Self {
        DeviceState {
            device: device.into(),
            availability,
            activities: Vec::new(),
            idle_since_ms: None,
            note: None,
            updated_ms,
        }
    }
}

/// A device's state as the aggregation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum DeviceActivity {
    Active,
    Idle { since_ms: i64 },
    Away,
    Offline,
}

/// Whose words a note is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    Personal,
    OutOfOffice,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Note {
    pub text: String,
    pub kind: NoteKind,
}

/// A calendar meeting going on now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meeting {
    pub from_ms: i64,
    pub to_ms: i64,
    pub subject: Option<String>,
    pub location: Option<String>,
}

/// A user's presence after aggregation: what the owner sees of themselves, and what
/// privacy filtering starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    pub availability: Availability,
    /// Sorted, without repeats.
    pub activities: Vec<Activity>,
    pub note: Option<Note>,
    pub meeting: Option<Meeting>,
    /// End of the out-of-office period going on now.
    pub out_of_office_until_ms: Option<i64>,
    /// True when the availability is one the user set by hand.
    pub manual: bool,
    /// Since when the user has been idle (all their online devices idle).
    pub idle_since_ms: Option<i64>,
    /// When the user was last active (set when offline, or idle).
    pub last_active_ms: Option<i64>,
    pub devices: Vec<(String, DeviceActivity)>,
    /// When the same inputs will give a different result (a meeting starts or ends, a
    /// manual state runs out, an idle device becomes inactive or away).
    #[serde(skip)]
    pub next_change_ms: Option<i64>,
}

impl Presence {
    /// Nothing known: offline.
    pub fn offline(last_active_ms: Option<i64>) -> Presence {
        Presence {
            availability: Availability::Offline,
            activities: Vec::new(),
            note: None,
            meeting: None,
            out_of_office_until_ms: None,
            manual: false,
            idle_since_ms: None,
            last_active_ms,
            devices: Vec::new(),
            next_change_ms: None,
        }
    }
}
