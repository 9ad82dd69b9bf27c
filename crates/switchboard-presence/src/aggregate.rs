//! Aggregation of a user's presence over all their devices, their hand-set state and
//! their calendar. The rules, applied in this order:
//!
//! - **A1 devices**: each device counts with the availability it published; a device that
//!   published *available* and has been idle for `inactive_after` shows *inactive*, and
//!   after `away_after` *away*. A device that published *closed*/offline is offline.
//! - **A2 most available wins**: the user's machine availability is that of the most
//!   available online device (available > inactive > busy > dnd > brb > away).
//! - **A3 in a call**: a call (or conference, or presentation) on *any* online device
//!   shows: at least busy with *in a call* (*in a conference*), do-not-disturb with
//!   *presenting*; an availability already less available (dnd, ...) stays.
//! - **A4 calendar**: a meeting going on now makes an otherwise available (or inactive)
//!   user busy *in a meeting*; it never brings an offline user online.
//! - **A5 by hand**: an availability the user set by hand (with its note) wins over all
//!   machine state until its `until` time passes or it is cleared; activities from
//!   devices and calendar are then not shown (the user chose what to say).
//! - **A6 all gone**: no online device and nothing set by hand → offline, with the time
//!   the user was last active.
//! - **A7 out of office**: an out-of-office period going on now is shown beside any
//!   availability, and its note replaces the personal note while it lasts.
//! - **A8 note**: otherwise the note is the hand-set one, else the newest device note.

use switchboard_core::{CalendarKind, StoredPresence};

use crate::model::{
    Activity, Availability, DeviceActivity, DeviceState, Meeting, Note, NoteKind, Presence,
};

/// The configurable times of rule A1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregationRules {
    pub inactive_after_ms: i64,
    pub away_after_ms: i64,
}

impl Default for AggregationRules {
    fn default() -> Self {
        // The Lync client's defaults: inactive after 5 minutes, away after 5 more.
        AggregationRules {
            inactive_after_ms: 5 * 60_000,
            away_after_ms: 10 * 60_000,
        }
    }
}

fn earliest(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |x| x.min(b)))
}

/// Rule A1 for one device: its availability now, and when that changes next.
fn device_now(
    d: &DeviceState,
    rules: &AggregationRules,
    now: i64,
) -> (Availability, DeviceActivity, Option<i64>) {
    match (d.availability, d.idle_since_ms) {
        (Availability::Offline, _) => (Availability::Offline, DeviceActivity::Offline, None),
        (Availability::Available, Some(since)) => {
            let idle = now - since;
            if idle >= rules.away_after_ms {
                (Availability::Away, DeviceActivity::Away, None)
            } else if idle >= rules.inactive_after_ms {
                (
                    Availability::Inactive,
                    DeviceActivity::Idle { since_ms: since },
                    Some(since + rules.away_after_ms),
                )
            } else {
                (
                    Availability::Available,
                    DeviceActivity::Idle { since_ms: since },
                    Some(since + rules.inactive_after_ms),
                )
            }
        }
        (a, Some(since)) => (a, DeviceActivity::Idle { since_ms: since }, None),
        (Availability::Away, None) => (Availability::Away, DeviceActivity::Away, None),
        (a, None) => (a, DeviceActivity::Active, None),
    }
}

/// Applies rules A1–A8 to the devices and the stored state at `now_ms`.
pub fn aggregate(
    devices: &[DeviceState],
    stored: &StoredPresence,
    rules: &AggregationRules,
    now_ms: i64,
) -> Presence {
    let now = now_ms;
    let mut p = Presence::offline(stored.last_active_ms);
    let mut next: Option<i64> = None;

    // A1, A2.
    let mut best = Availability::Offline;
    let mut device_activities: Vec<Activity> = Vec::new();
    let mut all_idle_since: Option<i64> = None;
    let mut any_active = false;
    let mut newest_note: Option<(i64, &str)> = None;
    for d in devices {
        let (avail, state, change) = device_now(d, rules, now);
        if let Some(c) = change {
            next = earliest(next, c);
        }
        p.devices.push((d.device.clone(), state));
        if avail == Availability::Offline {
            continue;
        }
        best = best.min(avail);
        device_activities.extend(
            d.activities
                .iter()
                .copied()
                .filter(|a| *a != Activity::OutOfOffice),
        );
        match d.idle_since_ms {
            Some(s) => all_idle_since = Some(all_idle_since.map_or(s, |x: i64| x.max(s))),
            None => any_active = true,
        }
        if let Some(n) = d.note.as_deref().filter(|n| !n.is_empty()) {
            if newest_note.is_none_or(|(t, _)| d.updated_ms > t) {
                newest_note = Some((d.updated_ms, n));
            }
        }
        p.last_active_ms = Some(
            p.last_active_ms
                .unwrap_or(0)
                .max(d.idle_since_ms.unwrap_or(d.updated_ms)),
        );
    }
    let mut availability = best;
    let mut activities: Vec<Activity> = Vec::new();

    if availability.is_online() {
        // A3.
        if device_activities.contains(&Activity::Presenting) {
            availability = Availability::DoNotDisturb;
            activities.push(Activity::Presenting);
        }
        for a in [Activity::InACall, Activity::InAConference] {
            if device_activities.contains(&a) {
                if availability < Availability::Busy || availability > Availability::DoNotDisturb {
                    availability = Availability::Busy;
                }
                activities.push(a);
            }
        }
        if device_activities.contains(&Activity::InAMeeting) && availability <= Availability::Busy {
            availability = Availability::Busy;
            activities.push(Activity::InAMeeting);
        }
        if !any_active {
            p.idle_since_ms = all_idle_since;
        }
    }

    // A4 (and A7's period): the calendar.
    let mut oof: Option<(i64, Option<&str>)> = None;
    for e in &stored.calendar {
        if e.from_ms > now {
            next = earliest(next, e.from_ms);
            continue;
        }
        if e.to_ms <= now {
            continue;
        }
        next = earliest(next, e.to_ms);
        match e.kind {
            CalendarKind::Meeting => {
                if p.meeting.is_none() {
                    p.meeting = Some(Meeting {
                        from_ms: e.from_ms,
                        to_ms: e.to_ms,
                        subject: e.subject.clone(),
                        location: e.location.clone(),
                    });
                }
            }
            CalendarKind::OutOfOffice => {
                if oof.is_none_or(|(to, _)| e.to_ms > to) {
                    oof = Some((e.to_ms, e.note.as_deref()));
                }
            }
        }
    }
    if p.meeting.is_some() && availability <= Availability::Inactive {
        availability = Availability::Busy;
        activities.push(Activity::InAMeeting);
    }

    // A5.
    let mut note = newest_note.map(|(_, n)| n.to_owned());
    if let Some(m) = stored.manual.as_ref() {
        let live = m.until_ms.is_none_or(|u| u > now);
        if let (true, Ok(a)) = (live, m.availability.parse::<Availability>()) {
            if let Some(u) = m.until_ms {
                next = earliest(next, u);
            }
            availability = a;
            activities.clear();
            p.manual = true;
            p.idle_since_ms = None;
            if let Some(n) = m.note.as_ref().filter(|n| !n.is_empty()) {
                note = Some(n.clone());
            }
        }
    }

    // A6: `p` started offline with the stored last-active time; devices moved it on.
    p.availability = availability;
    if !availability.is_online() && !p.manual {
        activities.clear();
    }

    // A7, A8.
    p.note = note.map(|text| Note {
        text,
        kind: NoteKind::Personal,
    });
    if let Some((until, oof_note)) = oof {
        activities.push(Activity::OutOfOffice);
        p.out_of_office_until_ms = Some(until);
        if let Some(n) = oof_note.filter(|n| !n.is_empty()) {
            p.note = Some(Note {
                text: n.to_owned(),
                kind: NoteKind::OutOfOffice,
            });
        }
    }
    activities.sort();
    activities.dedup();
    p.activities = activities;
    p.next_change_ms = next;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{CalendarEntry, ManualState};
    use Activity::*;
    use Availability::*;

    const MIN: i64 = 60_000;
    const NOW: i64 = 1_000 * MIN;

    fn dev(name: &str, a: Availability) -> DeviceState {
        DeviceState::new(name, a, NOW - MIN)
    }
    fn idle(mut d: DeviceState, minutes: i64) -> DeviceState {
        d.idle_since_ms = Some(NOW - minutes * MIN);
        d
    }
    fn with(mut d: DeviceState, a: Activity) -> DeviceState {
        d.activities.push(a);
        d
    }
    fn manual(a: &str, until: Option<i64>) -> Option<ManualState> {
        Some(ManualState {
            availability: a.into(),
            note: Some("set by hand".into()),
            until_ms: until,
            set_at_ms: NOW - 2 * MIN,
        })
    }
    fn meeting(from: i64, to: i64) -> CalendarEntry {
        CalendarEntry {
            kind: CalendarKind::Meeting,
            from_ms: from,
            to_ms: to,
            subject: Some("Planning".into()),
            location: Some("Room 1".into()),
            note: None,
        }
    }
    fn oof() -> CalendarEntry {
        CalendarEntry {
            kind: CalendarKind::OutOfOffice,
            from_ms: NOW - 60 * MIN,
            to_ms: NOW + 60 * MIN,
            subject: None,
            location: None,
            note: Some("On leave".into()),
        }
    }

    /// The aggregation rules as a table: devices, stored state → availability, activities.
    #[test]
    fn rules_table() {
        struct Row {
            rule: &'static str,
            devices: Vec<DeviceState>,
            manual: Option<ManualState>,
            calendar: Vec<CalendarEntry>,
            want: Availability,
            activities: Vec<Activity>,
        }
        let row = |rule, devices, manual, calendar, want, activities| Row {
            rule,
            devices,
            manual,
            calendar,
            want,
            activities,
        };
        let in_meeting = vec![meeting(NOW - 10 * MIN, NOW + 20 * MIN)];
        let rows = vec![
            row(
                "A6 nothing published",
                vec![],
                None,
                vec![],
                Offline,
                vec![],
            ),
            row(
                "A1 one device open",
                vec![dev("a", Available)],
                None,
                vec![],
                Available,
                vec![],
            ),
            row(
                "A1 closed is offline",
                vec![dev("a", Offline)],
                None,
                vec![],
                Offline,
                vec![],
            ),
            row(
                "A1 idle < inactive",
                vec![idle(dev("a", Available), 2)],
                None,
                vec![],
                Available,
                vec![],
            ),
            row(
                "A1 idle → inactive",
                vec![idle(dev("a", Available), 6)],
                None,
                vec![],
                Inactive,
                vec![],
            ),
            row(
                "A1 idle → away",
                vec![idle(dev("a", Available), 11)],
                None,
                vec![],
                Away,
                vec![],
            ),
            row(
                "A1 busy stays busy when idle",
                vec![idle(dev("a", Busy), 30)],
                None,
                vec![],
                Busy,
                vec![],
            ),
            row(
                "A2 most available wins",
                vec![dev("a", Away), dev("b", Busy)],
                None,
                vec![],
                Busy,
                vec![],
            ),
            row(
                "A2 active beats idle",
                vec![idle(dev("a", Available), 11), dev("b", Available)],
                None,
                vec![],
                Available,
                vec![],
            ),
            row(
                "A2 offline device ignored",
                vec![dev("a", Offline), dev("b", BeRightBack)],
                None,
                vec![],
                BeRightBack,
                vec![],
            ),
            row(
                "A3 call on any device",
                vec![dev("a", Available), with(dev("b", Available), InACall)],
                None,
                vec![],
                Busy,
                vec![InACall],
            ),
            row(
                "A3 call keeps dnd",
                vec![with(dev("a", DoNotDisturb), InACall)],
                None,
                vec![],
                DoNotDisturb,
                vec![InACall],
            ),
            row(
                "A3 call from away device",
                vec![with(dev("a", Away), InACall)],
                None,
                vec![],
                Busy,
                vec![InACall],
            ),
            row(
                "A3 presenting is dnd",
                vec![with(dev("a", Available), Presenting)],
                None,
                vec![],
                DoNotDisturb,
                vec![Presenting],
            ),
            row(
                "A3 conference",
                vec![with(dev("a", Available), InAConference)],
                None,
                vec![],
                Busy,
                vec![InAConference],
            ),
            row(
                "A4 meeting while available",
                vec![dev("a", Available)],
                None,
                in_meeting.clone(),
                Busy,
                vec![InAMeeting],
            ),
            row(
                "A4 meeting while inactive",
                vec![idle(dev("a", Available), 6)],
                None,
                in_meeting.clone(),
                Busy,
                vec![InAMeeting],
            ),
            row(
                "A4 meeting keeps away",
                vec![dev("a", Away)],
                None,
                in_meeting.clone(),
                Away,
                vec![],
            ),
            row(
                "A4 meeting never brings online",
                vec![],
                None,
                in_meeting.clone(),
                Offline,
                vec![],
            ),
            row(
                "A4 future meeting",
                vec![dev("a", Available)],
                None,
                vec![meeting(NOW + MIN, NOW + 2 * MIN)],
                Available,
                vec![],
            ),
            row(
                "A4 past meeting",
                vec![dev("a", Available)],
                None,
                vec![meeting(NOW - 2 * MIN, NOW - MIN)],
                Available,
                vec![],
            ),
            row(
                "A5 by hand wins",
                vec![dev("a", Available)],
                manual("dnd", None),
                vec![],
                DoNotDisturb,
                vec![],
            ),
            row(
                "A5 by hand hides call",
                vec![with(dev("a", Available), InACall)],
                manual("brb", None),
                vec![],
                BeRightBack,
                vec![],
            ),
            row(
                "A5 by hand without devices",
                vec![],
                manual("busy", None),
                vec![],
                Busy,
                vec![],
            ),
            row(
                "A5 appear offline",
                vec![dev("a", Available)],
                manual("offline", None),
                vec![],
                Offline,
                vec![],
            ),
            row(
                "A5 expired by-hand state",
                vec![dev("a", Available)],
                manual("busy", Some(NOW - 1)),
                vec![],
                Available,
                vec![],
            ),
            row(
                "A5 hides meeting",
                vec![dev("a", Available)],
                manual("available", None),
                in_meeting.clone(),
                Available,
                vec![],
            ),
            row(
                "A7 oof beside available",
                vec![dev("a", Available)],
                None,
                vec![oof()],
                Available,
                vec![OutOfOffice],
            ),
            row(
                "A7 oof beside offline",
                vec![],
                None,
                vec![oof()],
                Offline,
                vec![OutOfOffice],
            ),
            row(
                "A7 oof beside meeting",
                vec![dev("a", Available)],
                None,
                vec![oof(), meeting(NOW - MIN, NOW + MIN)],
                Busy,
                vec![InAMeeting, OutOfOffice],
            ),
        ];
        let rules = AggregationRules::default();
        for r in rows {
            let stored = StoredPresence {
                manual: r.manual,
                calendar: r.calendar,
                ..Default::default()
            };
            let p = aggregate(&r.devices, &stored, &rules, NOW);
            assert_eq!(
                (p.availability, p.activities.clone()),
                (r.want, r.activities),
                "{}",
                r.rule
            );
        }
    }

    #[test]
    fn notes_last_active_and_next_change() {
        let rules = AggregationRules::default();
        // A8: newest device note, replaced by a hand-set note, replaced by the OOF note.
        let mut a = dev("a", Available);
        a.note = Some("old".into());
        let mut b = dev("b", Busy);
        b.note = Some("new".into());
        b.updated_ms = NOW;
        let mut stored = StoredPresence::default();
        let p = aggregate(&[a.clone(), b.clone()], &stored, &rules, NOW);
        assert_eq!(p.note.unwrap().text, "new");
        stored.manual = manual("busy", Some(NOW + 5 * MIN));
        let p = aggregate(&[a.clone(), b.clone()], &stored, &rules, NOW);
        assert_eq!(p.note.as_ref().unwrap().text, "set by hand");
        assert!(p.manual);
        assert_eq!(
            p.next_change_ms,
            Some(NOW + 5 * MIN),
            "the by-hand state runs out"
        );
        stored.calendar.push(oof());
        let p = aggregate(&[a, b], &stored, &rules, NOW);
        assert_eq!(p.note.as_ref().unwrap().kind, NoteKind::OutOfOffice);
        assert_eq!(p.out_of_office_until_ms, Some(NOW + 60 * MIN));

        // A6: gone devices leave the stored last-active time.
        let stored = StoredPresence {
            last_active_ms: Some(NOW - 30 * MIN),
            ..Default::default()
        };
        let p = aggregate(&[], &stored, &rules, NOW);
        assert_eq!(p.last_active_ms, Some(NOW - 30 * MIN));
        // A1: an idle device changes at the inactive threshold; all-idle shows since when.
        let d = idle(dev("a", Available), 2);
        let p = aggregate(&[d], &StoredPresence::default(), &rules, NOW);
        assert_eq!(
            p.next_change_ms,
            Some(NOW - 2 * MIN + rules.inactive_after_ms)
        );
        assert_eq!(p.idle_since_ms, Some(NOW - 2 * MIN));
        assert_eq!(p.last_active_ms, Some(NOW - 2 * MIN));
        // A4: a meeting later changes things when it starts.
        let stored = StoredPresence {
            calendar: vec![meeting(NOW + 3 * MIN, NOW + 9 * MIN)],
            ..Default::default()
        };
        let p = aggregate(&[dev("a", Available)], &stored, &rules, NOW);
        assert_eq!(p.next_change_ms, Some(NOW + 3 * MIN));
    }
}
