//! An Enterprise pool's shared state on PostgreSQL (`switchboard_core::pool`): joining,
//! heartbeats, the reaper and fencing, and registrations tied to (front end, epoch).
//! Each test makes a database of its own on the server `SWITCHBOARD_TEST_PG_URL` names;
//! without one (SQLite runs) they pass without a word, and `scripts/test.sh` runs them
//! on its PostgreSQL cluster.

use std::time::Duration;

use switchboard_core::pool::{cdr_owner, MemberLoad, Membership, OwnBinding, PoolBinding};
use switchboard_core::{DataError, ParticipantRecord, Run, SessionRecord};
use switchboard_store::testing::{pg_server, PgDatabase};
use switchboard_store::{Data, PoolData};

struct Pool {
    data: Data,
    _db: PgDatabase,
}

impl Pool {
    fn pool(&self) -> &PoolData {
        self.data.pool.as_ref().expect("PostgreSQL has pool data")
    }
}

async fn pool() -> Option<Pool> {
    pg_server()?;
    let db = PgDatabase::create().await;
    let data = switchboard_store::data::open(Some(&db.url), std::path::Path::new("unused"))
        .await
        .unwrap();
    Some(Pool { data, _db: db })
}

fn device(connection: u64, contact: &str) -> OwnBinding {
    OwnBinding {
        connection,
        contact: format!("<{contact}>"),
        expires_in: 600,
        lync: false,
    }
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn members_join_with_growing_epochs_and_a_live_id_is_refused() {
    let Some(p) = pool().await else { return };
    let m = &p.pool().membership;
    let one = m.join(1, "127.0.0.2:5060", LONG).await.unwrap();
    let two = m.join(2, "127.0.0.3:5060", LONG).await.unwrap();
    assert!(two.epoch > one.epoch);
    let members = m.members().await.unwrap();
    assert_eq!(
        members.iter().map(|r| (r.fe, r.epoch)).collect::<Vec<_>>(),
        [(1, one.epoch), (2, two.epoch)]
    );
    assert_eq!(members[0].sip_addr, "127.0.0.2:5060");
    assert!(members[0].heartbeat_age_ms < 5_000);
    // Front end 1 is alive: a second process with its id is refused, and says why.
    match m.join(1, "127.0.0.9:5060", LONG).await {
        Err(DataError::MemberAlive(why)) => {
            assert!(why.contains("127.0.0.2:5060"), "{why}");
            assert!(why.contains("--front-end"), "{why}");
        }
        other => panic!("a live id must be refused: {other:?}"),
    }
    assert!(m.heartbeat(one, MemberLoad::default()).await.unwrap());
    // The heartbeat carries the load that `pool status` shows.
    let load = MemberLoad {
        connections: 7,
        registered: 5,
        subscriptions: 3,
    };
    assert!(m.heartbeat(two, load).await.unwrap());
    let members = m.members().await.unwrap();
    assert_eq!(members[1].load, load);
    // The secret is made once and is the same for every caller.
    let secret = m.pool_secret().await.unwrap();
    assert_eq!(m.pool_secret().await.unwrap(), secret);
    assert_ne!(secret, [0u8; 32]);
}

#[tokio::test]
async fn registrations_are_replaced_per_member_and_found_from_anywhere() {
    let Some(p) = pool().await else { return };
    let (m, loc) = (&p.pool().membership, &p.pool().location);
    let one = m.join(1, "127.0.0.2:5060", LONG).await.unwrap();
    let two = m.join(2, "127.0.0.3:5060", LONG).await.unwrap();
    let alice = "sip:alice@example.com".to_owned();
    loc.set_bindings(
        one,
        &[(
            alice.clone(),
            vec![device(11, "sip:a@10.0.0.1"), device(12, "sip:a@10.0.0.2")],
        )],
    )
    .await
    .unwrap();
    loc.set_bindings(
        two,
        &[(
            alice.clone(),
            vec![OwnBinding {
                lync: true,
                ..device(21, "sip:a@10.0.0.3")
            }],
        )],
    )
    .await
    .unwrap();
    let found = loc.bindings(&alice).await.unwrap();
    let seen: Vec<(u32, u64, bool, &str)> = found
        .iter()
        .map(|b| (b.fe, b.connection, b.lync, b.fe_addr.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 11, false, "127.0.0.2:5060"),
            (1, 12, false, "127.0.0.2:5060"),
            (2, 21, true, "127.0.0.3:5060")
        ]
    );
    assert!(found.iter().all(|b| (599..=600).contains(&b.expires_in)));
    assert_eq!(found[0].epoch, one.epoch);
    // Front end 1's set replaces only its own rows.
    loc.set_bindings(one, &[(alice.clone(), vec![device(13, "sip:a@10.0.0.4")])])
        .await
        .unwrap();
    let conns: Vec<u64> = loc
        .bindings(&alice)
        .await
        .unwrap()
        .iter()
        .map(|b| b.connection)
        .collect();
    assert_eq!(conns, [13, 21]);
    // An expired registration is not found (0 s: expires at once).
    loc.set_bindings(
        two,
        &[(
            alice.clone(),
            vec![OwnBinding {
                expires_in: 0,
                ..device(22, "sip:a@10.0.0.5")
            }],
        )],
    )
    .await
    .unwrap();
    let found: Vec<PoolBinding> = loc.bindings(&alice).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].connection, 13);
    // Many users in one call; an empty list removes.
    let updates: Vec<(String, Vec<OwnBinding>)> = (0..300)
        .map(|i| (format!("sip:u{i}@example.com"), vec![device(i, "sip:u@h")]))
        .chain([(alice.clone(), vec![])])
        .collect();
    loc.set_bindings(one, &updates).await.unwrap();
    assert!(loc.bindings(&alice).await.unwrap().is_empty());
    assert_eq!(
        loc.bindings("sip:u299@example.com").await.unwrap()[0].connection,
        299
    );
}

#[tokio::test]
async fn a_silent_member_is_reaped_once_with_its_rows_and_sessions_and_is_fenced() {
    let Some(p) = pool().await else { return };
    let (m, loc, cdr) = (&p.pool().membership, &p.pool().location, &p.data.cdr);
    let dead = m.join(1, "127.0.0.2:5060", LONG).await.unwrap();
    let live = m.join(2, "127.0.0.3:5060", LONG).await.unwrap();
    loc.set_bindings(
        dead,
        &[
            ("sip:bob@example.com".into(), vec![device(1, "sip:b@h")]),
            ("sip:carol@example.com".into(), vec![device(2, "sip:c@h")]),
        ],
    )
    .await
    .unwrap();
    loc.set_bindings(
        live,
        &[("sip:bob@example.com".into(), vec![device(3, "sip:b@h2")])],
    )
    .await
    .unwrap();
    // A session front end 1 started, and one of front end 2's.
    let run = |m: Membership| Run {
        owner: cdr_owner(m.fe),
        epoch: m.epoch,
    };
    let session = |id: &str| SessionRecord {
        id: id.into(),
        kind: "two-party".into(),
        started_at_ms: 1_000,
        ended_at_ms: None,
        end_reason: None,
        initiator: "sip:bob@example.com".into(),
        organiser: None,
        escalated_from: None,
    };
    let who = ParticipantRecord {
        address: "sip:bob@example.com".into(),
        device: String::new(),
        joined_at_ms: 1_000,
        left_at_ms: None,
        messages: 1,
        bytes: 5,
    };
    cdr.start_session(&run(dead), &session("s-dead"), std::slice::from_ref(&who))
        .await
        .unwrap();
    cdr.start_session(&run(live), &session("s-live"), std::slice::from_ref(&who))
        .await
        .unwrap();

    // Nobody is stale yet.
    assert!(m
        .reap(Duration::from_secs(5), "front end lost", 2_000)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(m.heartbeat(live, MemberLoad::default()).await.unwrap());
    // Two reapers at once: exactly one gets front end 1.
    let stale = Duration::from_millis(500);
    let (a, b) = tokio::join!(
        m.reap(stale, "front end lost", 2_000),
        m.reap(stale, "front end lost", 2_000)
    );
    let mut reaped = a.unwrap();
    reaped.extend(b.unwrap());
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!((reaped[0].fe, reaped[0].epoch), (1, dead.epoch));
    assert_eq!(
        reaped[0].users,
        ["sip:bob@example.com", "sip:carol@example.com"]
    );
    assert_eq!(reaped[0].sessions_closed, 1);
    // Its rows went with it; front end 2's stayed.
    assert!(loc
        .bindings("sip:carol@example.com")
        .await
        .unwrap()
        .is_empty());
    let bob: Vec<u32> = loc
        .bindings("sip:bob@example.com")
        .await
        .unwrap()
        .iter()
        .map(|b| b.fe)
        .collect();
    assert_eq!(bob, [2]);
    let (s, ps) = cdr.session("s-dead").await.unwrap().unwrap();
    assert_eq!(s.end_reason.as_deref(), Some("front end lost"));
    assert_eq!(s.ended_at_ms, Some(2_000));
    assert_eq!(ps[0].left_at_ms, Some(2_000));
    let (s, _) = cdr.session("s-live").await.unwrap().unwrap();
    assert_eq!(s.ended_at_ms, None, "a live front end's session stays open");
    // The reaped front end wakes up: its heartbeat says it is gone, and it can write
    // nothing under its old epoch.
    assert!(!m.heartbeat(dead, MemberLoad::default()).await.unwrap());
    match loc
        .set_bindings(
            dead,
            &[("sip:dave@example.com".into(), vec![device(9, "sip:d@h")])],
        )
        .await
    {
        Err(DataError::NotMember { fe: 1, epoch }) => assert_eq!(epoch, dead.epoch),
        other => panic!("a fenced front end must not write: {other:?}"),
    }
    assert!(loc
        .bindings("sip:dave@example.com")
        .await
        .unwrap()
        .is_empty());
    // It rejoins with a new epoch.
    let again = m.join(1, "127.0.0.2:5060", LONG).await.unwrap();
    assert!(again.epoch > live.epoch);
}

#[tokio::test]
async fn a_restart_replaces_the_old_rows_and_leaving_takes_them_away() {
    let Some(p) = pool().await else { return };
    let (m, loc) = (&p.pool().membership, &p.pool().location);
    let first = m.join(3, "127.0.0.4:5060", LONG).await.unwrap();
    loc.set_bindings(
        first,
        &[("sip:eve@example.com".into(), vec![device(1, "sip:e@h")])],
    )
    .await
    .unwrap();
    // Restarted with the same id once the old heartbeat is stale (here: at once).
    let second = m.join(3, "127.0.0.4:5060", Duration::ZERO).await.unwrap();
    assert!(second.epoch > first.epoch);
    assert!(loc
        .bindings("sip:eve@example.com")
        .await
        .unwrap()
        .is_empty());
    assert!(!m.heartbeat(first, MemberLoad::default()).await.unwrap());
    loc.set_bindings(
        second,
        &[("sip:eve@example.com".into(), vec![device(2, "sip:e@h")])],
    )
    .await
    .unwrap();
    m.leave(second, "server shutdown", 5_000).await.unwrap();
    assert!(m.members().await.unwrap().is_empty());
    assert!(loc
        .bindings("sip:eve@example.com")
        .await
        .unwrap()
        .is_empty());
}
