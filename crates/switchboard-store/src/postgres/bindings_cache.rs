//! The pool's registrations, cached per address of record and kept true by
//! LISTEN/NOTIFY, as the user directory's are (`directory_cache`).
//!
//! Every request for a user asks where the user's devices are connected; a round trip
//! each was one PostgreSQL read per MESSAGE. A trigger on `pool_bindings` (migration
//! 11) notifies the address of record of every committed change on channel
//! [`CHANNEL`], whoever made it: a front end's registrar, the reaper's cascade, an
//! operator. Each notice drops that address's entry only, so registrations elsewhere
//! (thousands a second) do not empty the cache for everyone.
//!
//! - **Never stale by a race**: a miss leaves a mark with a fresh ticket; a notice
//!   removes entry and mark alike, and the database's answer is kept only if its mark
//!   is still there. An answer read before a change cannot outlive that change's notice.
//! - **Expiry without a notice**: rows carry their lifetime; a cached binding past it is
//!   left out of the answer, as the database's `expires_at > now()` leaves it out.
//! - **No listener, no cache**: while the listening connection is down nothing is
//!   cached and every lookup asks the database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_core::pool::PoolBinding;

/// The channel the `pool_bindings` trigger notifies on (payload: the address of record).
pub(crate) const CHANNEL: &str = "switchboard_pool_bindings";
/// Entries beyond which the cache starts afresh (a bound on memory).
const MAX_ENTRIES: usize = 200_000;

enum Entry {
    /// A lookup is asking the database under this ticket.
    Asking(u64),
    /// The bindings as read at `at`.
    Known { at: Instant, rows: Vec<PoolBinding> },
}

#[derive(Default)]
struct State {
    live: bool,
    next_ticket: u64,
    entries: HashMap<String, Entry>,
}

/// The cache, shared by the store's clones (its listener is the store's, `listener`).
#[derive(Default)]
pub(crate) struct BindingsCache {
    state: Mutex<State>,
}

/// What a lookup saw before asking the database: where its answer may be cached.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(Option<u64>);

impl BindingsCache {
    /// The cached bindings of `aor` still in force, or the ticket under which the
    /// database's answer may be cached.
    pub(crate) fn bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, Ticket> {
        let mut s = self.state.lock();
        if !s.live {
            return Err(Ticket(None));
        }
        if let Some(Entry::Known { at, rows }) = s.entries.get(aor) {
            let age = at.elapsed();
            return Ok(rows.iter().filter_map(|r| still_in_force(r, age)).collect());
        }
        s.next_ticket += 1;
        let ticket = s.next_ticket;
        if s.entries.len() >= MAX_ENTRIES {
            s.entries.clear();
        }
        s.entries.insert(aor.to_owned(), Entry::Asking(ticket));
        Err(Ticket(Some(ticket)))
    }

    /// Keeps the database's answer for `aor`, read at `at`, unless a notice for `aor`
    /// (or the listener's loss) came since the ticket was given.
    pub(crate) fn remember(&self, ticket: Ticket, aor: &str, at: Instant, rows: &[PoolBinding]) {
        let Some(ticket) = ticket.0 else { return };
        let mut s = self.state.lock();
        if matches!(s.entries.get(aor), Some(Entry::Asking(t)) if *t == ticket) {
            s.entries.insert(
                aor.to_owned(),
                Entry::Known {
                    at,
                    rows: rows.to_vec(),
                },
            );
        }
    }

    /// A notice: the bindings of `aor` changed.
    pub(crate) fn changed(&self, aor: &str) {
        self.state.lock().entries.remove(aor);
    }

    /// Everything cached goes (a member's registrations went all at once).
    pub(crate) fn forget_all(&self) {
        self.state.lock().entries.clear();
    }

    /// The listener is up or lost: either way nothing cached stays.
    pub(crate) fn listening(&self, up: bool) {
        let mut s = self.state.lock();
        s.entries.clear();
        s.live = up;
    }

    /// Whether the cache is in use (the listener is up), for tests.
    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.state.lock().live
    }

    /// Whether an answer for `aor` is cached, for tests.
    #[cfg(test)]
    pub(crate) fn holds(&self, aor: &str) -> bool {
        matches!(
            self.state.lock().entries.get(aor),
            Some(Entry::Known { .. })
        )
    }
}

/// `row` as it stands `age` after it was read, if it has not expired since.
fn still_in_force(row: &PoolBinding, age: Duration) -> Option<PoolBinding> {
    let left = u64::from(row.expires_in).checked_sub(age.as_secs())?;
    (left > 0).then(|| PoolBinding {
        expires_in: left as u32,
        ..row.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PostgresStore;
    use crate::testing::{eventually, pg_server, PgDatabase};
    use switchboard_core::pool::{MembershipData, OwnBinding, PoolLocationData};

    fn device(connection: u64, expires_in: u32) -> OwnBinding {
        OwnBinding {
            connection,
            contact: format!("<sip:bob@10.0.0.{connection}>"),
            expires_in,
            lync: false,
        }
    }

    /// Runs with a test server only (`SWITCHBOARD_TEST_PG_URL`, as scripts/test.sh sets).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_are_cached_and_dropped_by_each_change_wherever_it_was_made() {
        if pg_server().is_none() {
            eprintln!("no PostgreSQL test server: skipped");
            return;
        }
        let db = PgDatabase::create().await;
        let one = PostgresStore::connect(&db.url).await.unwrap();
        let two = PostgresStore::connect(&db.url).await.unwrap();
        eventually("both listen", async || {
            one.caches.bindings.is_live() && two.caches.bindings.is_live()
        })
        .await;
        let fe1 = one
            .join(1, "127.0.0.2:5060", Duration::from_secs(30))
            .await
            .unwrap();
        let bob = "sip:bob@example.com";

        // Front end 2 reads (nothing), then caches the miss.
        assert!(two.bindings(bob).await.unwrap().is_empty());
        assert!(two.caches.bindings.holds(bob), "a miss is cached too");
        // Front end 1 registers bob: its own cache sees it at once, front end 2's once
        // the notice arrives, and bob's entry alone goes.
        let carol = "sip:carol@example.com";
        assert!(two.bindings(carol).await.unwrap().is_empty());
        one.set_bindings(fe1, &[(bob.into(), vec![device(1, 600)])])
            .await
            .unwrap();
        assert_eq!(one.bindings(bob).await.unwrap().len(), 1);
        eventually("front end 2 sees the change", async || {
            !two.caches.bindings.holds(bob)
        })
        .await;
        assert!(two.caches.bindings.holds(carol), "only bob's entry went");
        let seen = two.bindings(bob).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].fe, seen[0].connection), (1, 1));
        assert!(two.caches.bindings.holds(bob));
        // The uncached read always asks the database.
        assert_eq!(two.fresh_bindings(bob).await.unwrap(), seen);

        // An answer asked while a notice came in is not kept: it may predate the change.
        let dave = "sip:dave@example.com";
        let Err(ticket) = two.caches.bindings.bindings(dave) else {
            panic!("dave is not cached yet")
        };
        two.caches.bindings.changed(dave);
        two.caches
            .bindings
            .remember(ticket, dave, Instant::now(), &[]);
        assert!(!two.caches.bindings.holds(dave), "a stale answer was kept");

        // A cached binding past its lifetime is left out, as the database leaves it out.
        let row = seen[0].clone();
        let Err(ticket) = two.caches.bindings.bindings(dave) else {
            panic!("dave is not cached")
        };
        let long_ago = Instant::now() - Duration::from_secs(700);
        two.caches
            .bindings
            .remember(ticket, dave, long_ago, std::slice::from_ref(&row));
        assert!(two.bindings(dave).await.unwrap().is_empty());

        // The member goes (a reap or a leave, by cascade): every front end's entry goes.
        one.leave(fe1, "test", 0).await.unwrap();
        eventually("front end 2 sees bob gone", async || {
            two.bindings(bob).await.unwrap().is_empty()
        })
        .await;
        assert!(one.bindings(bob).await.unwrap().is_empty());

        // Without a listener nothing is cached.
        two.caches.bindings.listening(false);
        assert!(two.bindings(carol).await.unwrap().is_empty());
        assert!(!two.caches.bindings.holds(carol));
    }
}
