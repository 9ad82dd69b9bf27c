//! The membership loop against an in-memory pool on Tokio's paused clock: fencing,
//! rejoining, and when the reaper may run. (The PostgreSQL side is tested by the store's
//! `tests/pool.rs`; the whole pool by the binary's pool tests.)

use std::collections::HashMap;

use async_trait::async_trait;

use super::*;

#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    members: HashMap<u32, (i64, Instant)>,
    next_epoch: i64,
    /// Every call fails (the database is down).
    down: bool,
    /// When the reaper ran.
    reaps: Vec<Instant>,
}

#[async_trait]
impl MembershipData for Fake {
    async fn join(&self, fe: u32, _: &str, alive: Duration) -> Result<Membership, DataError> {
        let mut s = self.state.lock();
        if s.down {
            return Err(DataError::Unavailable("down".into()));
        }
        if let Some((_, at)) = s.members.get(&fe) {
            if at.elapsed() < alive {
                return Err(DataError::MemberAlive(format!("front end {fe} is alive")));
            }
        }
        s.next_epoch += 1;
        let epoch = s.next_epoch;
        s.members.insert(fe, (epoch, Instant::now()));
        Ok(Membership { fe, epoch })
    }
    async fn heartbeat(&self, m: Membership, _: MemberLoad) -> Result<bool, DataError> {
        let mut s = self.state.lock();
        if s.down {
            return Err(DataError::Unavailable("down".into()));
        }
        match s.members.get_mut(&m.fe) {
            Some((epoch, at)) if *epoch == m.epoch => {
                *at = Instant::now();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn reap(&self, stale: Duration, _: &str, _: i64) -> Result<Vec<ReapedMember>, DataError> {
        let mut s = self.state.lock();
        if s.down {
            return Err(DataError::Unavailable("down".into()));
        }
        s.reaps.push(Instant::now());
        let dead: Vec<(u32, i64)> = s
            .members
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > stale)
            .map(|(fe, (epoch, _))| (*fe, *epoch))
            .collect();
        for (fe, _) in &dead {
            s.members.remove(fe);
        }
        Ok(dead
            .into_iter()
            .map(|(fe, epoch)| ReapedMember {
                fe,
                epoch,
                users: vec![],
                sessions_closed: 0,
            })
            .collect())
    }
    async fn leave(&self, m: Membership, _: &str, _: i64) -> Result<(), DataError> {
        self.state.lock().members.remove(&m.fe);
        Ok(())
    }
    async fn members(&self) -> Result<Vec<MemberRecord>, DataError> {
        let s = self.state.lock();
        if s.down {
            return Err(DataError::Unavailable("down".into()));
        }
        let mut v: Vec<MemberRecord> = s
            .members
            .iter()
            .map(|(fe, (epoch, at))| MemberRecord {
                fe: *fe,
                epoch: *epoch,
                sip_addr: format!("127.0.0.{}:5060", fe + 1),
                joined_at_ms: 0,
                heartbeat_at_ms: 0,
                heartbeat_age_ms: at.elapsed().as_millis() as i64,
                load: MemberLoad::default(),
            })
            .collect();
        v.sort_by_key(|m| m.fe);
        Ok(v)
    }
    async fn pool_secret(&self) -> Result<[u8; 32], DataError> {
        Ok([7; 32])
    }
}

fn config(fe: u32) -> PoolConfig {
    PoolConfig::new(fe, format!("127.0.0.{}:5060", fe + 1).parse().unwrap())
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<PoolEvent>) -> PoolEvent {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an event within a minute")
        .expect("the loop runs")
}

#[tokio::test(start_paused = true)]
async fn a_reaped_member_fences_itself_and_rejoins_with_a_new_epoch() {
    let data = Arc::new(Fake::default());
    let pool = Pool::join(config(1), data.clone()).await.unwrap();
    let first = pool.member();
    let mut events = pool.run(MemberLoad::default);
    // Another front end's reaper removed us (we were stopped, say).
    data.state.lock().members.remove(&1);
    loop {
        match next_event(&mut events).await {
            PoolEvent::Fenced { old } => {
                assert_eq!(old, first);
                break;
            }
            PoolEvent::Members(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let PoolEvent::Rejoined { new } = next_event(&mut events).await else {
        panic!("a rejoin follows the fence")
    };
    assert!(new.epoch > first.epoch);
    assert_eq!(pool.member(), new);
    // Tokens of the old epoch no longer open.
    let old_token = pool.flow_token(1, first.epoch, 9, "call");
    assert_eq!(pool.open_flow_token(&old_token, "call"), None);
}

#[tokio::test(start_paused = true)]
async fn the_reaper_waits_for_a_whole_timeout_of_good_heartbeats_even_after_an_outage() {
    let data = Arc::new(Fake::default());
    let pool = Pool::join(config(1), data.clone()).await.unwrap();
    let mut events = pool.run(MemberLoad::default);
    let joined = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let first_reap = data
        .state
        .lock()
        .reaps
        .first()
        .copied()
        .expect("the reaper ran");
    assert!(
        first_reap.duration_since(joined) >= config(1).dead_after,
        "not before a timeout of heartbeats: {:?}",
        first_reap.duration_since(joined)
    );
    // Front end 2 joins; then the database is down for ten seconds for everyone.
    let other = data.join(2, "x", Duration::ZERO).await.unwrap();
    data.state.lock().down = true;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!pool.in_good_standing());
    let back = Instant::now();
    data.state.lock().reaps.clear();
    data.state.lock().down = false;
    // Front end 2 heartbeats again two seconds after the database is back: it must not
    // have been reaped in between, although its heartbeat was 12 s old.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(data.heartbeat(other, MemberLoad::default()).await.unwrap());
    assert!(
        data.state.lock().reaps.is_empty(),
        "no reap right after an outage"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reap = data
        .state
        .lock()
        .reaps
        .first()
        .copied()
        .expect("reaping resumes");
    assert!(reap.duration_since(back) >= config(1).dead_after);
    assert!(pool.in_good_standing());
    // Now front end 2 falls silent and is reaped by us within the timeout and a beat.
    let silent = Instant::now();
    let reaped = loop {
        match next_event(&mut events).await {
            PoolEvent::Reaped(r) => break r,
            _ => continue,
        }
    };
    assert_eq!((reaped.fe, reaped.epoch), (2, other.epoch));
    assert!(
        silent.elapsed() <= config(1).dead_after + Duration::from_secs(2),
        "{:?}",
        silent.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_process_with_a_live_id_waits_then_is_refused() {
    let data = Arc::new(Fake::default());
    let pool = Pool::join(config(1), data.clone()).await.unwrap();
    let _events = pool.run(MemberLoad::default);
    let started = Instant::now();
    match Pool::join(config(1), data.clone()).await {
        Err(PoolError::Data(DataError::MemberAlive(why))) => assert!(why.contains("1")),
        other => panic!("must be refused: {:?}", other.map(|p| p.member())),
    }
    assert!(started.elapsed() >= config(1).dead_after);
    // A restart after a crash (the old process silent) gets in once its row is stale.
    drop(_events);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = Pool::join(config(1), data.clone()).await.unwrap();
    assert!(again.member().epoch > pool.member().epoch);
    assert!(matches!(
        Pool::join(config(0), data).await,
        Err(PoolError::BadId)
    ));
}

#[tokio::test(start_paused = true)]
async fn flow_tokens_open_only_for_this_epoch_and_call() {
    let data = Arc::new(Fake::default());
    let pool = Pool::join(config(3), data).await.unwrap();
    let m = pool.member();
    let t = pool.flow_token(m.fe, m.epoch, 42, "abc@host");
    assert_eq!(pool.open_flow_token(&t, "abc@host"), Some(42));
    assert_eq!(pool.open_flow_token(&t, "other@host"), None);
    let forged = t.replace(".42.", ".43.");
    assert_eq!(pool.open_flow_token(&forged, "abc@host"), None);
    let other_fe = pool.flow_token(2, m.epoch, 42, "abc@host");
    assert_eq!(pool.open_flow_token(&other_fe, "abc@host"), None);
    assert_eq!(pool.open_flow_token("garbage", "abc@host"), None);
    assert_eq!(pool.open_flow_token("3.1.2.00.extra", "abc@host"), None);
}

/// A live member's heartbeat is up to an interval old when read, and the view up to an
/// interval old when used: such a member still keeps what it keeps. One that has been
/// silent for most of the timeout is passed over before it is reaped.
#[tokio::test(start_paused = true)]
async fn a_member_is_passed_over_as_keeper_only_when_nearly_dead() {
    let data = Arc::new(Fake::default());
    let pool = Pool::join(config(1), data.clone()).await.unwrap();
    // Front end 2 joins and then says nothing more (its process hangs).
    data.join(2, "x", Duration::ZERO).await.unwrap();
    let _events = pool.run(MemberLoad::default);
    // 2.5 s of silence: as busy front ends see a live one at worst.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pool.keeper_among("pair", &[2]).map(|k| k.0), Some(2));
    // 3.6 s: most of the 4 s timeout; passed over, the pair goes to a live member.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pool.keeper_among("pair", &[2]).map(|k| k.0), Some(1));
}
