//! Presence across the front ends of an Enterprise pool (see switchboard-pool).
//!
//! Each front end keeps the publications of the devices connected to it, as a
//! standalone server does. What they say (their `DeviceState`s) is also written to the
//! pool's table, one row per user and front end, whenever it changes; the write appends
//! to the presence change log every front end follows (every 250 ms), so each front end
//! holding that user (it has watchers of them) reads the user again — the other front
//! ends' devices come with the user's stored state — aggregates, and notifies its own
//! watchers, each filtered by their relationship. That is one read per interested front
//! end per change, not a message per watcher; no front end sends another's NOTIFYs.
//!
//! When a front end dies, the reaper's transaction deletes its rows and appends their
//! users to the same log: the others see those devices gone.
//!
//! **Why the change log rather than a watcher index and pokes** (the design note's
//! §4.3: a `subscription(presentity, fe)` index and one internal request per interested
//! front end). The log already exists, is written in the same transaction as the
//! change, and every front end already follows it (the CLI's edits reach watchers that
//! way), so:
//! - nothing is lost between a change and its notice: a poke sent while its target
//!   restarts, or reconnects its pool link, is gone, while the log is read from the
//!   position the front end reached;
//! - no index to keep true across crashes (rows for watchers a dead front end held, or a
//!   subscription that moved), and no front end ever deletes another's subscriptions
//!   (OpenSIPS #2170);
//! - it costs one read of the log every 250 ms per front end, whatever the load, plus one
//!   read of each changed user a front end holds: what the pokes would have cost, with
//!   the same one-per-front-end fan-out, never one per watcher (Kamailio #4252).
//!
//! The log's sequence number is the per-presentity version: a front end applies a
//! user's state as read after the entry that announced it, so an older state never
//! replaces a newer one. The price is latency (up to a quarter second more than a
//! poke) and the log's growth, which housekeeping prunes.
//!
//! Writes leave the state lock as a batch (`State::pool_dirty`), written by one task;
//! one that fails while the database is away is kept and tried again, unless a newer
//! state of that user replaced it meanwhile.

use std::sync::Weak;
use std::time::Duration;

use switchboard_core::DataError;

use crate::PresenceService;

/// How often the writer looks for changes to write.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// Writes what changed to the pool while the service lives.
pub(crate) async fn write_devices(svc: Weak<PresenceService>) {
    let mut tick = tokio::time::interval(WRITE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(svc) = svc.upgrade() else { return };
        let Some(pool) = &svc.pool else { return };
        let batch = take_dirty(&svc);
        if batch.is_empty() {
            continue;
        }
        let member = (pool.member)();
        match pool.data.set_devices(member, &batch, svc.now_ms()).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, users = batch.len(), "presence not written to the pool");
                if e.is_unavailable() {
                    requeue(&svc, batch);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else if matches!(e, DataError::NotMember { .. }) {
                    // Fenced: this front end's clients reconnect and publish again.
                }
            }
        }
    }
}

/// Keeps a batch that was not written for the next try, unless a newer state of a user
/// took its place meanwhile.
fn requeue(svc: &PresenceService, batch: Vec<(String, Option<String>)>) {
    let mut st = svc.state.lock();
    if let Some(dirty) = &mut st.pool_dirty {
        for (addr, devices) in batch {
            dirty.entry(addr).or_insert(devices);
        }
    }
}

/// What is waiting to be written (taken).
fn take_dirty(svc: &PresenceService) -> Vec<(String, Option<String>)> {
    let mut st = svc.state.lock();
    match &mut st.pool_dirty {
        Some(dirty) => dirty.drain().collect(),
        None => Vec::new(),
    }
}
