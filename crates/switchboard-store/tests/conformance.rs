//! One conformance suite for every store backend: each data trait of switchboard-core,
//! driven only through `Arc<dyn Trait>`, must behave the same on each.
//!
//! The backend comes from `SWITCHBOARD_TEST_STORE` (as Stalwart's store tests pick
//! theirs):
//! - `sqlite` (the default) opens a fresh database in a temporary directory per test;
//! - `postgres` creates a fresh database per test on the server `SWITCHBOARD_TEST_PG_URL`
//!   names (`postgres://postgres@127.0.0.1:PORT/postgres`, as `scripts/pg-cluster.sh
//!   start` prints), with an ICU collation so that sorting by locale instead of by bytes
//!   shows, and drops it afterwards.
//!
//! A backend this build does not have fails the suite loudly rather than passing it on
//! SQLite. The `postgres_*` tests are PostgreSQL's own (migrations, failures); those that
//! need a server pass without a word on SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::{
    Address, CalendarEntry, CalendarKind, ContactCard, DataError, Directory, Keep, ManualState,
    OfflineData, OfflineMessage, ParticipantRecord, PresenceData, Relationship, Run, SessionFilter,
    SessionRecord,
};
use switchboard_store::postgres::{self, PostgresStore};
use switchboard_store::testing::{eventually, PgDatabase};
use switchboard_store::Data;

/// The backend under test, opened as every caller opens it ([`Data`]: each trait as
/// `Arc<dyn Trait>`), with whatever keeps it alive.
struct Backend {
    data: Data,
    /// Dropped last: the database goes after the store using it.
    database: Database,
}

impl std::ops::Deref for Backend {
    type Target = Data;
    fn deref(&self) -> &Data {
        &self.data
    }
}

enum Database {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Database {
    /// The URL and data directory the opener takes for this database.
    fn url_and_dir(&self) -> (Option<&str>, &std::path::Path) {
        match self {
            Database::Sqlite(dir) => (None, dir.path()),
            Database::Postgres(db) => (Some(&db.url), std::path::Path::new("unused")),
        }
    }

    async fn open(&self) -> Data {
        let (url, dir) = self.url_and_dir();
        let data = switchboard_store::data::open(url, dir).await.unwrap();
        let sqlite = matches!(data.backend, switchboard_store::Backend::Sqlite(_));
        assert_eq!(
            sqlite,
            matches!(self, Database::Sqlite(_)),
            "the backend asked for"
        );
        data
    }
}

fn which() -> String {
    std::env::var("SWITCHBOARD_TEST_STORE").unwrap_or_else(|_| "sqlite".into())
}

async fn backend() -> Backend {
    let database = match which().as_str() {
        "sqlite" => Database::Sqlite(tempfile::tempdir().unwrap()),
        "postgres" => Database::Postgres(PgDatabase::create().await),
        other => panic!("SWITCHBOARD_TEST_STORE={other}: no such store backend in this build"),
    };
    Backend {
        data: database.open().await,
        database,
    }
}

impl Backend {
    /// The directory as another process (the CLI) sees the same database: a store of its
    /// own.
    async fn another_directory(&self) -> Arc<dyn Directory> {
        self.database.open().await.directory
    }
}

/// A fresh empty database on the test server (shared with the binary's CLI tests);
/// `None` when the suite runs on another backend.
async fn for_postgres_tests() -> Option<PgDatabase> {
    match which().as_str() {
        "postgres" => Some(PgDatabase::create().await),
        _ => None,
    }
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[tokio::test]
async fn directory_accounts_from_birth_to_removal() {
    let b = backend().await;
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
    let b = backend().await;
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
    let b = backend().await;
    let c = &b.cdr;
    let run = c.begin_run(Run::STANDALONE, 500).await.unwrap();
    let s1 = session("s-1", 1_000, "alice@example.com");
    c.start_session(&run, &s1, &[participant("alice@example.com", 1_000)])
        .await
        .unwrap();
    // A replay keeps the first record.
    let mut again = s1.clone();
    again.initiator = "mallory@example.com".into();
    c.start_session(&run, &again, &[]).await.unwrap();
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
        &run,
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
    // Only s-2 is still open; this run's own sessions stay open, the next run closes it.
    assert_eq!(
        c.close_open_sessions(&run, 4_500, "restart").await.unwrap(),
        0
    );
    let next = c.begin_run(Run::STANDALONE, 4_900).await.unwrap();
    assert_eq!(
        c.close_open_sessions(&next, 5_000, "restart")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.close_open_sessions(&next, 6_000, "restart")
            .await
            .unwrap(),
        0
    );
    let (s2, parts) = c.session("s-2").await.unwrap().unwrap();
    assert_eq!(s2.end_reason.as_deref(), Some("restart"));
    assert!(parts.iter().all(|p| p.left_at_ms == Some(5_000)));
    assert_eq!(c.session("s-9").await.unwrap(), None);
}

/// Several starts in one call (the CDR writer's group commit): all recorded, each with its
/// participants, idempotent as one start is, and owned by the run that wrote them.
#[tokio::test]
async fn cdr_sessions_start_together() {
    let b = backend().await;
    let c = &b.cdr;
    let run = c.begin_run(Run::STANDALONE, 500).await.unwrap();
    let batch: Vec<(SessionRecord, Vec<ParticipantRecord>)> = (0..40)
        .map(|i| {
            let who = format!("u{i}@example.com");
            (
                session(&format!("g-{i}"), 1_000 + i, &who),
                vec![
                    participant(&who, 1_000 + i),
                    participant("bob@example.com", 1_000 + i),
                ],
            )
        })
        .collect();
    c.start_sessions(&run, &batch).await.unwrap();
    // Replayed with one new session among them: the old keep their first record.
    let mut replay = batch[..3].to_vec();
    replay[0].0.initiator = "mallory@example.com".into();
    replay.push((session("g-new", 9_000, "carol@example.com"), vec![]));
    c.start_sessions(&run, &replay).await.unwrap();
    for (s, parts) in &batch {
        let (got, got_parts) = c.session(&s.id).await.unwrap().unwrap();
        assert_eq!(&got, s);
        assert_eq!(got_parts.len(), parts.len(), "{}", s.id);
    }
    assert!(c.session("g-new").await.unwrap().is_some());
    c.start_sessions(&run, &[]).await.unwrap();
    let next = c.begin_run(Run::STANDALONE, 9_500).await.unwrap();
    assert_eq!(
        c.close_open_sessions(&next, 10_000, "restart")
            .await
            .unwrap(),
        41,
        "the earlier run's sessions, all of them"
    );
}

/// A restarted server closes what its own earlier runs left open, and nothing else:
/// not another server's live sessions (the pool), not its own current run's.
#[tokio::test]
async fn a_run_closes_only_its_owners_earlier_sessions() {
    let b = backend().await;
    let c = &b.cdr;
    let fe1 = c.begin_run("fe-1", 100).await.unwrap();
    let fe2 = c.begin_run("fe-2", 200).await.unwrap();
    assert!(fe2.epoch > fe1.epoch, "epochs grow across owners");
    let open = |id: &str| session(id, 1_000, "alice@example.com");
    c.start_session(
        &fe1,
        &open("fe1-old"),
        &[participant("alice@example.com", 1_000)],
    )
    .await
    .unwrap();
    c.start_session(
        &fe2,
        &open("fe2-live"),
        &[participant("bob@example.com", 1_000)],
    )
    .await
    .unwrap();
    // fe-1 restarts: its old session is closed, fe-2's is not.
    let fe1_again = c.begin_run("fe-1", 300).await.unwrap();
    assert!(fe1_again.epoch > fe2.epoch);
    c.start_session(&fe1_again, &open("fe1-new"), &[])
        .await
        .unwrap();
    assert_eq!(
        c.close_open_sessions(&fe1_again, 2_000, "server restart")
            .await
            .unwrap(),
        1
    );
    let ended =
        |id: &'static str| async move { c.session(id).await.unwrap().unwrap().0.end_reason };
    assert_eq!(ended("fe1-old").await.as_deref(), Some("server restart"));
    assert_eq!(
        ended("fe2-live").await,
        None,
        "another server's session stays open"
    );
    assert_eq!(
        ended("fe1-new").await,
        None,
        "this run's own session stays open"
    );
    let (_, parts) = c.session("fe2-live").await.unwrap().unwrap();
    assert!(parts.iter().all(|p| p.left_at_ms.is_none()));
}

#[tokio::test]
async fn cdr_sessions_are_listed_oldest_first_by_filter() {
    let b = backend().await;
    let c = &b.cdr;
    let run = c.begin_run(Run::STANDALONE, 500).await.unwrap();
    for (id, at, who) in [
        ("b", 2_000, "bob"),
        ("a", 1_000, "alice"),
        ("c", 3_000, "alice"),
    ] {
        let who = format!("{who}@example.com");
        c.start_session(&run, &session(id, at, &who), &[participant(&who, at)])
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
    let b = backend().await;
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
    let b = backend().await;
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
    let b = backend().await;
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

#[tokio::test]
async fn directory_sees_writes_made_by_another_process() {
    let b = backend().await;
    let server = &b.directory;
    let cli = b.another_directory().await;
    let alice = addr("alice@example.com");
    // A miss, cached where lookups are cached: what follows must replace it.
    assert_eq!(server.find(&alice).await.unwrap(), None);
    cli.add(&alice, "pw-1", None).await.unwrap();
    eventually("added", async || {
        server.find(&alice).await.unwrap().is_some()
    })
    .await;
    assert!(server.has_domain("example.com").await.unwrap());
    cli.set_password(&alice, "pw-2").await.unwrap();
    let new = switchboard_core::Credentials::derive(&alice, "pw-2");
    eventually("the new password", async || {
        server.find(&alice).await.unwrap().unwrap().credentials == new
    })
    .await;
    cli.set_enabled(&alice, false).await.unwrap();
    eventually("disabled", async || {
        !server.find(&alice).await.unwrap().unwrap().enabled
    })
    .await;
    cli.remove(&alice).await.unwrap();
    eventually("removed", async || {
        server.find(&alice).await.unwrap().is_none()
    })
    .await;
    assert!(server.domains().await.unwrap().is_empty());
}

#[tokio::test]
async fn listings_sort_by_bytes_not_by_locale() {
    let b = backend().await;
    // By bytes: '-' (2D) < '.' (2E) < '_' (5F) < 'b'; a locale puts '_' first or
    // ignores the punctuation.
    let names = ["ab", "a_b", "a.b", "a-b"];
    let run = b.cdr.begin_run(Run::STANDALONE, 500).await.unwrap();
    for n in names {
        b.directory
            .add(&addr(&format!("{n}@x.example")), "pw", None)
            .await
            .unwrap();
        b.contacts
            .add_contact(
                "owner@x.example",
                &format!("{n}@x.example"),
                None,
                None,
                Relationship::Colleagues,
                1,
            )
            .await
            .unwrap();
        b.cdr
            .start_session(&run, &session(n, 1_000, "owner@x.example"), &[])
            .await
            .unwrap();
    }
    let users: Vec<String> = b
        .directory
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.address.user)
        .collect();
    assert_eq!(users, ["a-b", "a.b", "a_b", "ab"]);
    let contacts: Vec<String> = b
        .contacts
        .contact_list("owner@x.example")
        .await
        .unwrap()
        .contacts
        .into_iter()
        .map(|c| c.contact)
        .collect();
    assert_eq!(
        contacts,
        [
            "a-b@x.example",
            "a.b@x.example",
            "a_b@x.example",
            "ab@x.example"
        ]
    );
    let ids: Vec<String> = b
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["a-b", "a.b", "a_b", "ab"], "same start: by id");
}

/// How many rows `schema_migrations` has, and the highest version among them.
async fn migrations_recorded(db: &PgDatabase) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT COUNT(*), COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn postgres_migrations_are_idempotent() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let known = postgres::SCHEMA_VERSION;
    assert_eq!(postgres::migrate(&db.url).await.unwrap(), known);
    assert_eq!(migrations_recorded(&db).await, (known, known));
    // Connecting migrates too, and finds nothing left to do, twice.
    for _ in 0..2 {
        let store = PostgresStore::connect(&db.url).await.unwrap();
        store
            .add(&addr("alice@example.com"), "pw", None)
            .await
            .map(|_| ())
            .or_else(|e| match e {
                DataError::UserExists(_) => Ok(()),
                e => Err(e),
            })
            .unwrap();
    }
    assert_eq!(postgres::migrate(&db.url).await.unwrap(), known);
    assert_eq!(migrations_recorded(&db).await, (known, known));
}

#[tokio::test]
async fn postgres_a_newer_schema_is_refused() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let known = postgres::SCHEMA_VERSION;
    postgres::migrate(&db.url).await.unwrap();
    db.client()
        .await
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)",
            &[&(known + 1)],
        )
        .await
        .unwrap();
    let too_new = DataError::SchemaTooNew {
        found: known + 1,
        known,
    };
    assert_eq!(
        PostgresStore::connect(&db.url).await.err(),
        Some(too_new.clone())
    );
    assert_eq!(postgres::migrate(&db.url).await, Err(too_new));
}

#[tokio::test]
async fn postgres_the_opener_migrates_and_reports_versions() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let known = postgres::SCHEMA_VERSION;
    let unused = std::path::Path::new("unused");
    let migrate = || switchboard_store::data::migrate(Some(&db.url), unused);
    assert_eq!(migrate().await, Ok((0, known)));
    assert_eq!(migrate().await, Ok((known, known)));
    assert_eq!(migrations_recorded(&db).await, (known, known));
    let data = switchboard_store::data::open(Some(&db.url), unused)
        .await
        .unwrap();
    assert!(matches!(
        data.backend,
        switchboard_store::Backend::Postgres(_)
    ));
    assert!(!unused.exists(), "no data directory is made for PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_connects_migrate_once() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await.map(|_| ()) })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let known = postgres::SCHEMA_VERSION;
    assert_eq!(migrations_recorded(&db).await, (known, known));
}

#[tokio::test]
async fn postgres_unreachable_is_unavailable_promptly() {
    // Nothing listens: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Something listens and never answers (a hung server): the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [closed, silent_port] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/db?connect_timeout=1");
        let t = Instant::now();
        let connected = PostgresStore::connect(&url).await;
        assert!(
            matches!(connected, Err(DataError::Unavailable(_))),
            "port {port}: {:?}",
            connected.err()
        );
        let migrated = postgres::migrate(&url).await;
        assert!(
            matches!(migrated, Err(DataError::Unavailable(_))),
            "{migrated:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    }
    drop(silent);
}

#[tokio::test]
async fn postgres_a_store_outlives_its_connections() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let alice = addr("alice@example.com");
    store.add(&alice, "pw", None).await.unwrap();
    // The administrator ends every session of the database (57P01), as a restart or a
    // failover does.
    let killed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed > 0);
    // At most one call fails, as unavailable; then the store has connected again.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let found = store.find(&alice).await;
        let done = matches!(found, Ok(Some(_)));
        answers.push(found);
        if done {
            break;
        }
    }
    assert!(matches!(answers.last(), Some(Ok(Some(_)))), "{answers:?}");
    assert!(answers.len() <= 2, "{answers:?}");
    assert!(
        answers[..answers.len() - 1]
            .iter()
            .all(|a| matches!(a, Err(DataError::Unavailable(_)))),
        "{answers:?}"
    );
}

#[tokio::test]
async fn postgres_a_read_only_server_is_unavailable_until_writable_again() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let alice = addr("alice@example.com");
    store.add(&alice, "pw", None).await.unwrap();
    // A failover in miniature: the sessions end, and the server they come back to takes
    // no writes (a standby: 25006).
    db.set_read_only(true).await;
    let bob = addr("bob@example.com");
    for _ in 0..2 {
        let added = store.add(&bob, "pw", None).await;
        assert!(matches!(added, Err(DataError::Unavailable(_))), "{added:?}");
    }
    assert!(
        store.find(&alice).await.unwrap().is_some(),
        "reads still work"
    );
    // The primary is writable again: the sessions that found it read-only were retired,
    // so the store soon writes again instead of failing for ever.
    db.set_read_only(false).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let added = store.add(&bob, "pw", None).await;
        let done = added.is_ok();
        answers.push(added);
        if done {
            break;
        }
    }
    assert!(matches!(answers.last(), Some(Ok(_))), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mailbox_caps_hold_across_servers() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let servers = [
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
    ];
    let sends: Vec<_> = (0..24)
        .map(|i| {
            let s = servers[i % 2].clone();
            tokio::spawn(async move {
                let from = format!("sender{}@example.com", i % 3);
                s.store_offline(&offline("bob@example.com", &from, i as i64), 5, 100)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut kept = 0;
    for send in sends {
        if send.await.unwrap() == Keep::Kept {
            kept += 1;
        }
    }
    assert_eq!(kept, 5);
    assert_eq!(
        servers[0]
            .offline_for("bob@example.com")
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_followers_miss_no_change() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let follower = PostgresStore::connect(&db.url).await.unwrap();
    let writers = [
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
    ];
    let total = 60;
    let writes: Vec<_> = (0..total)
        .map(|i| {
            let w = writers[i % 2].clone();
            tokio::spawn(async move {
                let m = ManualState {
                    availability: "busy".into(),
                    note: None,
                    until_ms: None,
                    set_at_ms: i as i64,
                };
                w.set_manual(&format!("user{i}@example.com"), &m)
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Follow the log while it is written, as a running server does.
    let mut seen = std::collections::BTreeSet::new();
    let mut at = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < total && Instant::now() < deadline {
        let (next, changed) = follower.changes_since(at).await.unwrap();
        at = next;
        seen.extend(changed);
    }
    for w in writes {
        w.await.unwrap();
    }
    // A change drawn before one already read but committed after it would be behind
    // `at` now, and never come.
    let (_, rest) = follower.changes_since(at).await.unwrap();
    seen.extend(rest);
    assert_eq!(seen.len(), total, "every change reached the follower");
}

/// TLS when the URL asks for it, with the server's certificate verified: trusted through
/// `sslrootcert` it connects (and the session is encrypted); not trusted, it is refused.
/// Needs the test cluster's authority (`SWITCHBOARD_TEST_PG_CA`, as scripts/test.sh sets
/// from scripts/pg-cluster.sh); passes without a word otherwise.
#[tokio::test]
async fn postgres_tls_when_asked_and_only_to_a_trusted_server() {
    let Some(db) = for_postgres_tests().await else {
        return;
    };
    let Some(ca) = std::env::var("SWITCHBOARD_TEST_PG_CA")
        .ok()
        .filter(|c| !c.is_empty())
    else {
        eprintln!("SWITCHBOARD_TEST_PG_CA not set: skipped");
        return;
    };
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let trusted = format!("{}{sep}sslmode=verify-full&sslrootcert={ca}", db.url);
    let store = PostgresStore::connect(&trusted).await.unwrap();
    let alice = addr("alice@example.com");
    store.add(&alice, "pw", None).await.unwrap();
    assert!(store.find(&alice).await.unwrap().is_some());
    let encrypted: i64 = db
        .client()
        .await
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
              WHERE ssl AND datname = current_database() AND application_name = 'switchboard'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the store's sessions are encrypted");
    // The same server, checked against the system's trust store (no sslrootcert), which
    // does not know the cluster's throwaway authority: refused, never used unverified.
    let untrusted = format!("{}{sep}sslmode=require&connect_timeout=2", db.url);
    let refused = PostgresStore::connect(&untrusted).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        why.contains("certificate"),
        "an untrusted server was used: {why:?}"
    );
}
