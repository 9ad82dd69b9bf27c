//! An Enterprise pool losing a front end, or its database, for real: front ends are
//! processes of the built binary (front end N on 127.0.0.(N+1)), killed with SIGKILL,
//! stopped with SIGSTOP and resumed, while clients of the project's own (who fail over
//! to the next front end, as a Lync client does down its DNS list) keep using the pool.
//! PostgreSQL is the test server `SWITCHBOARD_TEST_PG_URL` names (a database of each
//! test's own), or, to stop and restart it, a throwaway cluster of the test's own
//! (`scripts/pg-cluster.sh`). Without `SWITCHBOARD_TEST_PG_URL` each test says it was
//! skipped and passes. Every process started here is stopped by pid.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sip_message::HeaderName;
use switchboard_store::testing::{pg_server, PgDatabase};

use crate::presence::{availability, notify_until, publish_state, subscribe};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// One front end process.
struct FrontEnd {
    id: u32,
    addr: SocketAddr,
    /// Its HTTP status endpoint.
    http: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl FrontEnd {
    /// Starts front end `id` on a free port of 127.0.0.(id+1) over `url`, and waits until
    /// it takes connections.
    async fn start(url: &str, id: u32) -> FrontEnd {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, id as u8 + 1);
        let free = || {
            std::net::TcpListener::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (addr, http) = (free(), free());
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(url, id, addr, http, dir).await
    }

    async fn spawn(
        url: &str,
        id: u32,
        addr: SocketAddr,
        http: SocketAddr,
        dir: tempfile::TempDir,
    ) -> FrontEnd {
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(BIN)
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--database", url, "--log-level", "info", "serve"])
            .args(["--front-end", &id.to_string()])
            .args(["--sip-udp", "off", "--sip-tls", "off"])
            .args(["--http", &http.to_string()])
            .args(["--sip-tcp", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let fe = FrontEnd {
            id,
            addr,
            http,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "front end {id} did not start:\n{}",
                fe.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fe
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} front end {}", self.id);
    }

    /// Its `/status`, as JSON.
    async fn status(&self) -> serde_json::Value {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.http).await.unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Waits until this front end's view of the pool (read at its heartbeats) lists
    /// exactly `ids`: which member keeps what is computed from it.
    async fn knows_members(&self, ids: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status().await;
            let known: Vec<u32> = s["pool"]["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as u32)
                        .collect()
                })
                .unwrap_or_default();
            if known == ids {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "front end {} knows {known:?}, not {ids:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        self.signal_quietly("-CONT");
        self.kill();
    }
}

impl FrontEnd {
    fn signal_quietly(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// `pool status --json`'s members: (id, epoch).
fn members(url: &str) -> Vec<(u32, i64)> {
    let out = Command::new(BIN)
        .args(["--database", url, "pool", "status", "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["fe"].as_u64().unwrap() as u32,
                m["epoch"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Waits (at most `limit`) until the pool's members are `ids`; how long it took.
async fn members_become(url: &str, ids: &[u32], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now: Vec<u32> = members(url).iter().map(|m| m.0).collect();
        if now == ids {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "members {now:?}, not {ids:?}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A database of the test's own on the server `SWITCHBOARD_TEST_PG_URL` names; `None`
/// (the test is skipped, and says so) without one.
async fn database() -> Option<PgDatabase> {
    if pg_server().is_none() {
        eprintln!("skipped: pool_faults needs SWITCHBOARD_TEST_PG_URL (a PostgreSQL server)");
        return None;
    }
    Some(PgDatabase::create().await)
}

fn add_users(url: &str, users: &[&str]) {
    for u in users {
        let out = Command::new(BIN)
            .args([
                "--database",
                url,
                "user",
                "add",
                &format!("{u}@example.com"),
            ])
            .args(["--password", &format!("pw-{u}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A user's client that knows every front end, as DNS would list them, and moves to
/// the next when its connection drops (or a front end does not answer).
struct Roaming {
    fes: Vec<SocketAddr>,
    at: usize,
    c: Client,
}

impl Roaming {
    /// Signs in on `fes[at]`.
    async fn sign_in(user: &str, fes: &[SocketAddr], at: usize) -> Roaming {
        let mut c = Client::connect_tcp(fes[at], user).await.unwrap();
        assert_eq!(status(&c.register(Some(600)).await), 200);
        Roaming {
            fes: fes.to_vec(),
            at,
            c,
        }
    }

    /// Whether the connection is gone (waiting up to `d` to see).
    async fn dropped_within(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline && !self.c.closed {
            if let Some(m) = self.c.recv_within(Duration::from_millis(100)).await {
                if m.is_request() {
                    let ok = m.response(200, Some("roaming"));
                    self.c.send(&ok).await;
                    self.c.inbox.push_back(m);
                }
            }
        }
        self.c.closed
    }

    /// Connects to the next front end that takes it and registers there; which one.
    async fn fail_over(&mut self) -> usize {
        let user = self.c.user.clone();
        for step in 1..=self.fes.len() {
            let i = (self.at + step) % self.fes.len();
            let Ok(mut c) = Client::connect_tcp(self.fes[i], &user).await else {
                continue;
            };
            let r = c.register(Some(600)).await;
            if status(&r) == 200 {
                self.c = c;
                self.at = i;
                return i;
            }
        }
        panic!("{user} found no front end to register on");
    }
}

/// Users whose conversation with `with` the front end `fe` keeps (of `ids`), named
/// `prefix0`, `prefix1`, …: the first `n`.
fn users_kept_by(fe: u32, ids: &[u32], with: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| {
            let pair = switchboard_pool::pager_pair(
                &format!("sip:{with}@example.com"),
                &format!("sip:{u}@example.com"),
            );
            switchboard_pool::rendezvous_owner(&pair, ids) == Some(fe)
        })
        .take(n)
        .collect()
}

/// The next MESSAGE `c` gets (answered 200), answering whatever else comes first.
async fn next_message(c: &mut Client) -> sip_message::Message {
    let is_message = |m: &sip_message::Message| m.method() == Some(&sip_message::Method::Message);
    if let Some(i) = c.inbox.iter().position(is_message) {
        return c.inbox.remove(i).unwrap();
    }
    loop {
        let m = c.recv().await.expect("a MESSAGE");
        if m.is_request() {
            let ok = m.response(200, Some("client"));
            c.send(&ok).await;
            if is_message(&m) {
                return m;
            }
        }
    }
}

async fn sql_count(db: &PgDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_front_end_is_reaped_its_watchers_told_its_clients_back_its_sessions_closed() {
    let Some(db) = database().await else { return };
    // carol's conversation with alice (on front ends 2 and 1) is kept by front end 2,
    // the one that dies.
    let carol = users_kept_by(2, &[1, 2], "alice", "carol", 1).remove(0);
    add_users(&db.url, &["alice", "bob", "dave", &carol]);
    let mut fes = Vec::new();
    for id in 1..=3 {
        fes.push(FrontEnd::start(&db.url, id).await);
    }
    members_become(&db.url, &[1, 2, 3], Duration::from_secs(5)).await;
    for f in &fes {
        f.knows_members(&[1, 2, 3]).await;
    }
    let addrs: Vec<SocketAddr> = fes.iter().map(|f| f.addr).collect();
    let mut alice = Roaming::sign_in("alice", &addrs, 0).await;
    let mut bob = Roaming::sign_in("bob", &addrs, 1).await;
    let mut carol_c = Roaming::sign_in(&carol, &addrs, 1).await;
    // alice watches bob and carol, both on front end 2.
    let _s1 = subscribe(&mut alice.c, "bob").await;
    let _s2 = subscribe(&mut alice.c, &carol).await;
    publish_state(&mut bob.c, "open", "").await;
    publish_state(&mut carol_c.c, "open", "").await;
    // bob, on front end 2, watches alice (front end 1).
    publish_state(&mut alice.c, "open", "").await;
    let _s3 = subscribe(&mut bob.c, "alice").await;
    notify_until(&mut bob.c, "alice available", |d| {
        availability(d) == "available"
    })
    .await;
    notify_until(&mut alice.c, "both available", |d| {
        d.contains("sip:bob@example.com") && availability(d) == "available"
    })
    .await;
    // carol writes to alice: a conversation front end 2 keeps.
    let m = carol_c.c.message_to("alice", "before");
    send_challenged(&mut carol_c.c, m).await;
    next_message(&mut alice.c).await;
    assert_eq!(status(&carol_c.c.final_response().await), 200);
    let owner_open =
        "SELECT count(*) FROM cdr_sessions WHERE owner = 'fe-2' AND ended_at_ms IS NULL";
    let deadline = Instant::now() + Duration::from_secs(5);
    while sql_count(&db, owner_open).await != 1 {
        assert!(
            Instant::now() < deadline,
            "front end 2 never recorded the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGKILL front end 2.
    fes[1].kill();
    let killed = Instant::now();
    // bob's client sees its connection drop, signs in on the next front end and
    // subscribes there again.
    assert!(bob.dropped_within(Duration::from_secs(5)).await);
    let now_on = bob.fail_over().await;
    assert_ne!(now_on, 1);
    publish_state(&mut bob.c, "open", "").await;
    // His subscription died with front end 2: he subscribes again where he is now.
    let _s4 = subscribe(&mut bob.c, "alice").await;
    notify_until(&mut bob.c, "alice available again", |d| {
        availability(d) == "available"
    })
    .await;
    let bob_back = killed.elapsed();
    // The pool reaps front end 2 within 5 s of its last heartbeat (its timeout, 4 s, and
    // a reaper's second).
    let detected = members_become(&db.url, &[1, 3], Duration::from_secs(10)).await;
    assert!(
        detected <= Duration::from_secs(7),
        "reaped after {detected:?}"
    );
    // alice (front end 1) sees carol, who did not come back, go offline.
    let n = notify_until(&mut alice.c, "carol offline", |d| {
        d.contains(&format!("sip:{carol}@example.com")) && availability(d) == "offline"
    })
    .await;
    let _ = n;
    let offline_seen = killed.elapsed();
    assert!(offline_seen <= Duration::from_secs(8), "{offline_seen:?}");
    assert!(bob_back <= Duration::from_secs(15), "{bob_back:?}");
    // Its open session is closed, as lost; none is left open, none lost.
    assert_eq!(sql_count(&db, owner_open).await, 0);
    assert_eq!(
        sql_count(
            &db,
            "SELECT count(*) FROM cdr_sessions WHERE owner = 'fe-2' AND end_reason = 'front end lost'"
        )
        .await,
        1
    );
    // No registration points at the dead front end.
    assert_eq!(
        sql_count(&db, "SELECT count(*) FROM pool_bindings WHERE fe_id = 2").await,
        0
    );
    // alice writes to carol while she is away: kept, and delivered once when she is back.
    let m = alice.c.message_to(&carol, "while you were away");
    let r = alice.c.send_authenticated(m).await;
    assert_eq!(
        status(&r),
        202,
        "{r}\nfront end 1:\n{}\nfront end 3:\n{}",
        fes[0].log(),
        fes[2].log()
    );
    let mut carol_back = Roaming::sign_in(&carol, &addrs, 2).await;
    let got = next_message(&mut carol_back.c).await;
    assert_eq!(&got.body[..], b"while you were away");
    assert!(carol_back
        .c
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    // bob, back on another front end, is reached from front end 1.
    let m = alice.c.message_to("bob", "found you");
    send_challenged(&mut alice.c, m).await;
    let got = next_message(&mut bob.c).await;
    assert_eq!(&got.body[..], b"found you");
    eprintln!(
        "front end lost: reaped after {detected:?}, carol offline for watchers after {offline_seen:?}, bob back after {bob_back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_front_end_is_reaped_then_fences_itself_and_rejoins() {
    let Some(db) = database().await else { return };
    // alice on front end 1, bob on 2, which keeps their conversation.
    let bob_name = users_kept_by(2, &[1, 2], "alice", "bob", 1).remove(0);
    add_users(&db.url, &["alice", &bob_name]);
    let fes = [
        FrontEnd::start(&db.url, 1).await,
        FrontEnd::start(&db.url, 2).await,
    ];
    members_become(&db.url, &[1, 2], Duration::from_secs(5)).await;
    for f in &fes {
        f.knows_members(&[1, 2]).await;
    }
    let addrs: Vec<SocketAddr> = fes.iter().map(|f| f.addr).collect();
    let mut bob = Roaming::sign_in(&bob_name, &addrs, 1).await;
    let mut alice = Roaming::sign_in("alice", &addrs, 0).await;
    let old_epoch = members(&db.url).iter().find(|m| m.0 == 2).unwrap().1;
    let m = alice.c.message_to(&bob_name, "before the fence");
    send_challenged(&mut alice.c, m).await;
    next_message(&mut bob.c).await;
    assert_eq!(status(&alice.c.final_response().await), 200);
    let session_of = |epoch: i64| {
        format!("SELECT count(*) FROM cdr_sessions WHERE owner = 'fe-2' AND epoch = {epoch}")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sql_count(&db, &session_of(old_epoch)).await != 1 {
        assert!(
            Instant::now() < deadline,
            "front end 2 never recorded the session (epoch {old_epoch}): {:?}\n{}",
            db.client()
                .await
                .query("SELECT owner, epoch FROM cdr_sessions", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>(),
            fes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Front end 2 hangs (SIGSTOP) past the timeout: the pool reaps it.
    fes[1].signal("-STOP");
    members_become(&db.url, &[1], Duration::from_secs(10)).await;
    // Meanwhile bob refreshes his registration: it waits in front end 2's socket.
    let refresh = bob.c.register_request(Some(600));
    bob.c.send(&refresh).await;
    fes[1].signal("-CONT");
    // Resumed, it learns it was reaped: it closes its client connections...
    assert!(
        bob.dropped_within(Duration::from_secs(10)).await,
        "front end 2 did not fence itself:\n{}",
        fes[1].log()
    );
    // ...and rejoins with a new epoch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_epoch = loop {
        if let Some(m) = members(&db.url).iter().find(|m| m.0 == 2) {
            break m.1;
        }
        assert!(Instant::now() < deadline, "front end 2 never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(new_epoch > old_epoch);
    // Nothing was written under the old epoch (the refresh it read after resuming
    // could not be).
    assert_eq!(
        sql_count(
            &db,
            &format!("SELECT count(*) FROM pool_bindings WHERE epoch = {old_epoch}")
        )
        .await,
        0
    );
    assert!(fes[1].log().contains("fencing"), "{}", fes[1].log());
    // bob signs in again (on front end 2 itself, which serves again) and is reached
    // from front end 1.
    bob.at = 0;
    assert_eq!(bob.fail_over().await, 1);
    let m = alice.c.message_to(&bob_name, "after the fence");
    send_challenged(&mut alice.c, m).await;
    let got = next_message(&mut bob.c).await;
    assert_eq!(&got.body[..], b"after the fence");
    assert_eq!(status(&alice.c.final_response().await), 200);
    // bob answers: front end 2 keeps the pair (whatever front end 1's view of the pool
    // is this second). The conversation went with the fence: the one before it stays
    // closed as the reaper closed it, and this is a new session of the new epoch (which
    // the pool closes if this front end dies later), never one under the reaped epoch.
    let m = bob.c.message_to("alice", "kept by front end 2");
    send_challenged(&mut bob.c, m).await;
    let got = next_message(&mut alice.c).await;
    assert_eq!(&got.body[..], b"kept by front end 2");
    assert_eq!(status(&bob.c.final_response().await), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sql_count(&db, &session_of(new_epoch)).await != 1 {
        assert!(
            Instant::now() < deadline,
            "no session under the new epoch:\n{}",
            fes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sql_count(
            &db,
            "SELECT count(*) FROM cdr_sessions s WHERE ended_at_ms IS NULL AND NOT EXISTS
               (SELECT 1 FROM pool_members m WHERE 'fe-' || m.fe_id = s.owner AND m.epoch = s.epoch)"
        )
        .await,
        0,
        "a session open under a run that is no member"
    );
    assert_eq!(
        sql_count(
            &db,
            &format!(
                "SELECT count(*) FROM cdr_sessions WHERE epoch = {old_epoch}
                  AND end_reason = 'front end lost' AND ended_at_ms IS NOT NULL"
            )
        )
        .await,
        1
    );
}

/// A throwaway cluster of this test's own, which it stops and starts again.
struct OwnCluster {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnCluster {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster.sh")
    }

    fn start() -> OwnCluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(Self::script())
            .args(["start", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        OwnCluster { dir, url }
    }

    fn stop(&self) {
        let ok = Command::new(Self::script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn start_again(&self) {
        let port = self
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let out = Command::new(Self::script())
            .env("PG_PORT", port)
            .args(["start", self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_rides_out_a_database_outage_without_losing_an_acknowledged_message() {
    if pg_server().is_none() {
        eprintln!("skipped: pool_faults needs SWITCHBOARD_TEST_PG_URL (PostgreSQL is installed)");
        return;
    }
    let pg = OwnCluster::start();
    add_users(&pg.url, &["alice", "bob"]);
    let fes = [
        FrontEnd::start(&pg.url, 1).await,
        FrontEnd::start(&pg.url, 2).await,
    ];
    members_become(&pg.url, &[1, 2], Duration::from_secs(5)).await;
    let epochs_before = members(&pg.url);
    let addrs: Vec<SocketAddr> = fes.iter().map(|f| f.addr).collect();
    let mut alice = Roaming::sign_in("alice", &addrs, 0).await;
    let bob = Roaming::sign_in("bob", &addrs, 1).await;
    // bob answers everything he gets, counting MESSAGEs.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bob_task = tokio::spawn(async move {
        let mut bob = bob;
        let mut got = 0u32;
        loop {
            tokio::select! {
                _ = &mut stop_rx => return got,
                m = bob.c.recv_within(Duration::from_millis(200)) => {
                    if let Some(m) = m {
                        if m.is_request() {
                            let ok = m.response(200, Some("bob"));
                            bob.c.send(&ok).await;
                            if m.method() == Some(&sip_message::Method::Message) {
                                got += 1;
                            }
                        }
                    }
                }
            }
        }
    });
    // alice writes to bob five times a second for 18 s; the database goes away from 3 s
    // to 13 s.
    let started = Instant::now();
    let (mut acked, mut unavailable, mut other) = (0u32, 0u32, Vec::new());
    let mut pg_down = false;
    let mut pg_back = false;
    let mut retry_after_seen = false;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(18) {
        if !pg_down && started.elapsed() >= Duration::from_secs(3) {
            pg.stop();
            pg_down = true;
        }
        if !pg_back && started.elapsed() >= Duration::from_secs(13) {
            pg.start_again();
            pg_back = true;
        }
        i += 1;
        let m = alice.c.message_to("bob", &format!("m{i}"));
        alice.c.send(&m).await;
        let mut r = alice.c.final_response().await;
        if status(&r) == 407 {
            let again = alice.c.with_credentials(&m, &r, "pw-alice", "MD5", 1);
            alice.c.send(&again).await;
            r = alice.c.final_response().await;
        }
        match status(&r) {
            200 => acked += 1,
            503 => {
                unavailable += 1;
                retry_after_seen |= r
                    .headers
                    .get(&HeaderName::from_wire("Retry-After"))
                    .is_some();
            }
            s => other.push(s),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(());
    let delivered = bob_task.await.unwrap();
    // Every request got an answer (final_response panics on silence); during the outage
    // the answer was 503 with Retry-After; before and after, 200.
    assert!(unavailable > 0, "the outage was never noticed");
    assert!(retry_after_seen);
    assert!(acked > 20, "acked {acked}");
    assert!(other.is_empty(), "unexpected answers {other:?}");
    assert!(delivered >= acked, "delivered {delivered} < acked {acked}");
    // No front end was reaped or restarted: the same members, the same epochs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(&pg.url), epochs_before);
    // Every acknowledged message is in the CDR (alice's count over her sessions with
    // bob), once the writes held during the outage are through.
    let deadline = Instant::now() + Duration::from_secs(15);
    let counted = loop {
        let client = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await;
        let n: i64 = match client {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                c.query_one(
                    "SELECT COALESCE(SUM(messages), 0)::BIGINT FROM cdr_participants WHERE address = 'sip:alice@example.com'",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1)
            }
            Err(_) => -1,
        };
        if n >= acked as i64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        counted, acked as i64,
        "CDR counts alice's acknowledged messages"
    );
    eprintln!(
        "database outage: {acked} acknowledged, {unavailable} answered 503, {delivered} delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_stopped_cleanly_leaves_at_once() {
    let Some(db) = database().await else { return };
    add_users(&db.url, &["alice", "bob"]);
    let mut fes = [
        FrontEnd::start(&db.url, 1).await,
        FrontEnd::start(&db.url, 2).await,
    ];
    members_become(&db.url, &[1, 2], Duration::from_secs(5)).await;
    // /status says where each stands in the pool.
    let st = fes[1].status().await;
    assert_eq!(st["pool"]["front_end"], 2, "{st}");
    assert_eq!(st["pool"]["in_good_standing"], true, "{st}");
    assert_eq!(st["pool"]["members"], serde_json::json!([1, 2]), "{st}");
    let addrs: Vec<SocketAddr> = fes.iter().map(|f| f.addr).collect();
    let mut alice = Roaming::sign_in("alice", &addrs, 0).await;
    let mut bob = Roaming::sign_in("bob", &addrs, 1).await;
    publish_state(&mut bob.c, "open", "").await;
    let _sub = subscribe(&mut alice.c, "bob").await;
    notify_until(&mut alice.c, "bob available", |d| {
        availability(d) == "available"
    })
    .await;
    // SIGTERM: front end 2 leaves the pool on its way out, without waiting to be reaped.
    fes[1].signal("-TERM");
    let stopped = Instant::now();
    let gone = members_become(&db.url, &[1], Duration::from_secs(3)).await;
    notify_until(&mut alice.c, "bob offline", |d| {
        availability(d) == "offline"
    })
    .await;
    let offline = stopped.elapsed();
    assert!(offline < Duration::from_secs(3), "{offline:?}");
    // Its clients are closed and find the other front end.
    assert!(bob.dropped_within(Duration::from_secs(5)).await);
    assert_eq!(bob.fail_over().await, 0);
    let _ = fes[1].child.wait();
    eprintln!("clean stop: left the pool after {gone:?}, watcher told after {offline:?}");
}
