//! One conformance suite for every store backend: each data trait of switchboard-core,
//! driven only through `Arc<dyn Trait>`, must behave the same on each.
//!
//! The backend comes from `SWITCHBOARD_TEST_STORE` (as Stalwart's store tests pick
//! theirs): `sqlite` (the default) opens a fresh database in a temporary directory per
//! test. A backend this build does not have fails the suite loudly rather than passing
//! it on SQLite.

use std::sync::Arc;

use switchboard_core::{
    Address, CalendarEntry, CalendarKind, CdrData, ContactCard, ContactData, DataError, Directory,
    Keep, ManualState, OfflineData, OfflineMessage, ParticipantRecord, PresenceData, Relationship,
    SessionFilter, SessionRecord,
};

/// The backend under test, with whatever keeps it alive.
struct Backend {
    directory: Arc<dyn Directory>,
    cdr: Arc<dyn CdrData>,
    offline: Arc<dyn OfflineData>,
    contacts: Arc<dyn ContactData>,
    presence: Arc<dyn PresenceData>,
    _dir: tempfile::TempDir,
}

fn backend() -> Backend {
    let which = std::env::var("SWITCHBOARD_TEST_STORE").unwrap_or_else(|_| "sqlite".into());
    match which.as_str() {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let s = Arc::new(switchboard_store::SqliteStore::open(dir.path()).unwrap());
            Backend {
                directory: s.clone(),
                cdr: s.clone(),
                offline: s.clone(),
                contacts: s.clone(),
                presence: s,
                _dir: dir,
            }
        }
        other => panic!("SWITCHBOARD_TEST_STORE={other}: no such store backend in this build"),
    }
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[tokio::test]
async fn directory_accounts_from_birth_to_removal() {
    let b = backend();
    let d = &b.directory;
    let alice = addr("alice@example.com");
    assert_eq!(d.find(&alice).await.unwrap(), None);
    let rec = d.add(&alice, "pw-1", Some("Alice A")).await.unwrap();
    assert_eq!(rec.address, alice);
    assert_eq!(rec.display_name.as_deref(), Some("Alice A"));
    assert!(rec.enabled);
    assert_eq!(
        rec.credentials,
        switchboard_core::Credentials::derive(&alice, "pw-1"),
        "hashes, never the password"
    );
    assert_eq!(d.find(&alice).await.unwrap(), Some(rec.clone()));
    assert!(matches!(
        d.add(&alice, "other", None).await,
        Err(DataError::UserExists(_))
    ));
    d.set_password(&alice, "pw-2").await.unwrap();
    let found = d.find(&alice).await.unwrap().unwrap();
    assert_eq!(
        found.credentials,
        switchboard_core::Credentials::derive(&alice, "pw-2")
    );
    d.set_enabled(&alice, false).await.unwrap();
    assert!(!d.find(&alice).await.unwrap().unwrap().enabled);
    let nobody = addr("nobody@example.com");
    assert!(matches!(
        d.set_password(&nobody, "x").await,
        Err(DataError::NoSuchUser(_))
    ));
    d.remove(&alice).await.unwrap();
    assert_eq!(d.find(&alice).await.unwrap(), None);
    assert!(matches!(
        d.remove(&alice).await,
        Err(DataError::NoSuchUser(_))
    ));
}

#[tokio::test]
async fn directory_domains_lists_and_bulk_upserts() {
    let b = backend();
    let d = &b.directory;
    assert!(d.domains().await.unwrap().is_empty());
    d.add(&addr("zed@b.example"), "pw", None).await.unwrap();
    d.add(&addr("amy@a.example"), "pw", None).await.unwrap();
    assert_eq!(d.domains().await.unwrap(), ["a.example", "b.example"]);
    assert!(d.has_domain("a.example").await.unwrap());
    assert!(!d.has_domain("c.example").await.unwrap());
    let n = d
        .upsert_many(&[
            (addr("amy@a.example"), "new".into(), Some("Amy".into())),
            (addr("bob@a.example"), "pw".into(), None),
        ])
        .await
        .unwrap();
    assert_eq!(n, 2);
    let list: Vec<String> = d
        .list()
        .await
        .unwrap()
        .iter()
        .map(|u| u.address.to_string())
        .collect();
    assert_eq!(list, ["amy@a.example", "bob@a.example", "zed@b.example"]);
    let amy = d.find(&addr("amy@a.example")).await.unwrap().unwrap();
    assert_eq!(amy.display_name.as_deref(), Some("Amy"));
    assert_eq!(
        amy.credentials,
        switchboard_core::Credentials::derive(&amy.address, "new")
    );
}

fn session(id: &str, at: i64, initiator: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        kind: "two-party".into(),
        started_at_ms: at,
        ended_at_ms: None,
        end_reason: None,
        initiator: initiator.into(),
        organiser: None,
        escalated_from: None,
    }
}

fn participant(address: &str, at: i64) -> ParticipantRecord {
    ParticipantRecord {
        address: address.into(),
        device: "dev-1".into(),
        joined_at_ms: at,
        left_at_ms: None,
        messages: 0,
        bytes: 0,
    }
}

#[tokio::test]
async fn cdr_sessions_start_once_grow_and_end_once() {
    let b = backend();
    let c = &b.cdr;
    let s1 = session("s-1", 1_000, "alice@example.com");
    c.start_session(&s1, &[participant("alice@example.com", 1_000)])
        .await
        .unwrap();
    // A replay keeps the first record.
    let mut again = s1.clone();
    again.initiator = "mallory@example.com".into();
    c.start_session(&again, &[]).await.unwrap();
    let (got, parts) = c.session("s-1").await.unwrap().unwrap();
    assert_eq!(got, s1);
    assert_eq!(parts.len(), 1);
    // Participants are keyed by (session, address, device): an update replaces.
    let mut alice = participant("alice@example.com", 1_000);
    alice.messages = 3;
    alice.bytes = 42;
    c.update_participants(&[
        ("s-1".into(), alice.clone()),
        ("s-1".into(), participant("bob@example.com", 1_500)),
    ])
    .await
    .unwrap();
    let (_, parts) = c.session("s-1").await.unwrap().unwrap();
    assert_eq!(parts.len(), 2);
    assert!(parts.contains(&alice), "{parts:?}");
    c.set_escalated_from("s-2", "s-1").await.unwrap(); // no such session: nothing
    c.start_session(
        &session("s-2", 2_000, "bob@example.com"),
        &[participant("bob@example.com", 2_000)],
    )
    .await
    .unwrap();
    c.set_escalated_from("s-2", "s-1").await.unwrap();
    assert_eq!(
        c.session("s-2")
            .await
            .unwrap()
            .unwrap()
            .0
            .escalated_from
            .as_deref(),
        Some("s-1")
    );
    c.end_session("s-1", 3_000, "bye").await.unwrap();
    c.end_session("s-1", 4_000, "timeout").await.unwrap();
    let (ended, parts) = c.session("s-1").await.unwrap().unwrap();
    assert_eq!(ended.ended_at_ms, Some(3_000), "the first end stays");
    assert_eq!(ended.end_reason.as_deref(), Some("bye"));
    assert!(parts.iter().all(|p| p.left_at_ms == Some(3_000)));
    // Only s-2 is still open.
    assert_eq!(c.close_open_sessions(5_000, "restart").await.unwrap(), 1);
    assert_eq!(c.close_open_sessions(6_000, "restart").await.unwrap(), 0);
    let (s2, parts) = c.session("s-2").await.unwrap().unwrap();
    assert_eq!(s2.end_reason.as_deref(), Some("restart"));
    assert!(parts.iter().all(|p| p.left_at_ms == Some(5_000)));
    assert_eq!(c.session("s-9").await.unwrap(), None);
}

#[tokio::test]
async fn cdr_sessions_are_listed_oldest_first_by_filter() {
    let b = backend();
    let c = &b.cdr;
    for (id, at, who) in [
        ("b", 2_000, "bob"),
        ("a", 1_000, "alice"),
        ("c", 3_000, "alice"),
    ] {
        let who = format!("{who}@example.com");
        c.start_session(&session(id, at, &who), &[participant(&who, at)])
            .await
            .unwrap();
    }
    let ids = |v: Vec<SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(c.sessions(&SessionFilter::default()).await.unwrap()),
        ["a", "b", "c"]
    );
    let f = SessionFilter {
        since_ms: Some(2_000),
        ..Default::default()
    };
    assert_eq!(ids(c.sessions(&f).await.unwrap()), ["b", "c"]);
    let f = SessionFilter {
        participant: Some("alice@example.com".into()),
        ..Default::default()
    };
    assert_eq!(ids(c.sessions(&f).await.unwrap()), ["a", "c"]);
    let f = SessionFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(c.sessions(&f).await.unwrap()), ["a"]);
}

fn offline(to: &str, from: &str, at: i64) -> OfflineMessage {
    OfflineMessage {
        id: 0,
        recipient: to.into(),
        sender: from.into(),
        content_type: "text/plain".into(),
        body: format!("from {from} at {at}").into_bytes(),
        received_at_ms: at,
        session_id: None,
    }
}

#[tokio::test]
async fn offline_messages_are_capped_per_sender_and_per_mailbox() {
    let b = backend();
    let o = &b.offline;
    let bob = "bob@example.com";
    for at in 1..=2 {
        assert_eq!(
            o.store_offline(&offline(bob, "alice@example.com", at), 3, 2)
                .await
                .unwrap(),
            Keep::Kept
        );
    }
    assert_eq!(
        o.store_offline(&offline(bob, "alice@example.com", 3), 3, 2)
            .await
            .unwrap(),
        Keep::SenderFull
    );
    assert_eq!(
        o.store_offline(&offline(bob, "carol@example.com", 4), 3, 2)
            .await
            .unwrap(),
        Keep::Kept,
        "another sender still can"
    );
    assert_eq!(
        o.store_offline(&offline(bob, "dave@example.com", 5), 3, 2)
            .await
            .unwrap(),
        Keep::MailboxFull
    );
    let waiting = o.offline_for(bob).await.unwrap();
    let at: Vec<i64> = waiting.iter().map(|m| m.received_at_ms).collect();
    assert_eq!(at, [1, 2, 4], "oldest first");
    assert_eq!(waiting[2].body, b"from carol@example.com at 4");
    assert!(o.offline_for("alice@example.com").await.unwrap().is_empty());
    o.delete_offline(waiting[0].id).await.unwrap();
    assert_eq!(o.offline_for(bob).await.unwrap().len(), 2);
    assert_eq!(o.expire_offline(3).await.unwrap(), 1);
    let left = o.offline_for(bob).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].received_at_ms, 4);
}

#[tokio::test]
async fn contact_lists_groups_and_relationships() {
    let b = backend();
    let c = &b.contacts;
    let me = "alice@example.com";
    let empty = c.contact_list(me).await.unwrap();
    assert_eq!(empty.version, 0);
    assert!(empty.contacts.is_empty());
    let e = c
        .add_contact(
            me,
            "bob@example.com",
            Some("Team"),
            None,
            Relationship::Colleagues,
            10,
        )
        .await
        .unwrap();
    assert_eq!(e.relationship, Relationship::Colleagues);
    assert_eq!(e.groups, ["Team"]);
    assert!(e.listed);
    let v1 = c.contact_list(me).await.unwrap().version;
    assert!(v1 > 0);
    assert_eq!(
        c.relationship(me, "bob@example.com").await.unwrap(),
        Some(Relationship::Colleagues)
    );
    assert_eq!(c.relationship(me, "carol@example.com").await.unwrap(), None);
    // Blocking someone not on the list keeps them off it.
    c.set_relationship(
        me,
        "mallory@example.com",
        Relationship::Blocked,
        Relationship::Colleagues,
        20,
    )
    .await
    .unwrap();
    let list = c.contact_list(me).await.unwrap();
    assert!(list.version > v1);
    let mallory = list
        .contacts
        .iter()
        .find(|e| e.contact == "mallory@example.com")
        .unwrap();
    assert_eq!(mallory.relationship, Relationship::Blocked);
    assert!(!mallory.listed);
    // Back to the default: the unlisted entry goes.
    c.set_relationship(
        me,
        "mallory@example.com",
        Relationship::Colleagues,
        Relationship::Colleagues,
        30,
    )
    .await
    .unwrap();
    assert_eq!(
        c.relationship(me, "mallory@example.com").await.unwrap(),
        None
    );
    // Groups.
    let team = c.contact_groups(me).await.unwrap()[0].0;
    let friends = c.add_group(me, "Friends", 40).await.unwrap();
    assert_eq!(
        c.add_group(me, "Friends", 41).await.unwrap(),
        friends,
        "same name, same group"
    );
    assert!(c
        .rename_group(me, friends, "Close friends", 42)
        .await
        .unwrap());
    assert!(!c.rename_group(me, 999_999, "x", 43).await.unwrap());
    c.set_contact_groups(me, "bob@example.com", &[team, friends], 44)
        .await
        .unwrap();
    let bob = c
        .contact_list(me)
        .await
        .unwrap()
        .contacts
        .into_iter()
        .find(|e| e.contact == "bob@example.com")
        .unwrap();
    let mut groups = bob.groups.clone();
    groups.sort();
    assert_eq!(groups, ["Close friends", "Team"]);
    assert!(c.delete_group(me, friends, 45).await.unwrap());
    assert!(!c.delete_group(me, friends, 46).await.unwrap());
    assert_eq!(
        c.contact_groups(me).await.unwrap(),
        [(team, "Team".to_owned())]
    );
    assert!(c.remove_contact(me, "bob@example.com", 50).await.unwrap());
    assert!(!c.remove_contact(me, "bob@example.com", 51).await.unwrap());
    assert!(c.contact_list(me).await.unwrap().contacts.is_empty());
    // Another owner's list is another list.
    assert_eq!(c.contact_list("bob@example.com").await.unwrap().version, 0);
}

#[tokio::test]
async fn presence_state_without_a_client_and_its_change_log() {
    let b = backend();
    let p = &b.presence;
    let me = "alice@example.com";
    let start = p.latest_change().await.unwrap();
    let loaded = p.load(me, 1_000).await.unwrap();
    assert_eq!(loaded, Default::default());
    let manual = ManualState {
        availability: "busy".into(),
        note: Some("heads down".into()),
        until_ms: None,
        set_at_ms: 1_000,
    };
    p.set_manual(me, &manual).await.unwrap();
    let meeting = CalendarEntry {
        kind: CalendarKind::Meeting,
        from_ms: 2_000,
        to_ms: 3_000,
        subject: Some("Planning".into()),
        location: Some("Room 1".into()),
        note: None,
    };
    p.add_calendar_entry(me, &meeting, 1_000).await.unwrap();
    let card = ContactCard {
        title: Some("Engineer".into()),
        email: Some("alice@example.com".into()),
        work_phone: None,
        personal_phone: Some("+1 555 0100".into()),
    };
    p.set_card(me, &card, 1_000).await.unwrap();
    p.set_last_active(me, 1_500).await.unwrap();
    let loaded = p.load(me, 1_600).await.unwrap();
    assert_eq!(loaded.manual, Some(manual));
    assert_eq!(loaded.calendar, [meeting]);
    assert_eq!(loaded.card, card);
    assert_eq!(loaded.last_active_ms, Some(1_500));
    // A meeting that has ended is not loaded.
    assert!(p.load(me, 3_001).await.unwrap().calendar.is_empty());
    p.set_last_active_many(&[(me.into(), 1_700), ("bob@example.com".into(), 1_800)])
        .await
        .unwrap();
    assert_eq!(
        p.load("bob@example.com", 1_900)
            .await
            .unwrap()
            .last_active_ms,
        Some(1_800)
    );
    assert!(p.clear_manual(me, 2_000).await.unwrap());
    assert!(!p.clear_manual(me, 2_001).await.unwrap());
    assert_eq!(p.load(me, 2_002).await.unwrap().manual, None);
    // Every change that watchers see is in the log, once per address.
    let (next, changed) = p.changes_since(start).await.unwrap();
    assert!(next > start);
    assert_eq!(changed, [me.to_owned()]);
    assert_eq!(p.latest_change().await.unwrap(), next);
    let (same, none) = p.changes_since(next).await.unwrap();
    assert_eq!((same, none.len()), (next, 0));
    p.prune(i64::MAX).await.unwrap();
}
