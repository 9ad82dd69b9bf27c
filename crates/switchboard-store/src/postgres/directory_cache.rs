//! The user directory's lookup cache on PostgreSQL, kept true by LISTEN/NOTIFY.
//!
//! Every SIP request looks its sender (and often its recipient) up; a round trip each
//! would make the database the bottleneck of every front end. So lookups are cached in
//! memory, and a trigger on `users` (migrations 8 and 12) sends a notification on channel
//! [`CHANNEL`] naming the user of every committed change, whoever made it: the CLI,
//! another front end, this process. The store's listener (`listener`) drops that user's
//! entry (and their domain's) on each; one change does not empty the cache for all.
//!
//! - **Seen within a moment**: a change is seen once its notification arrives (after
//!   the writer's commit, typically within milliseconds), not at the very next request
//!   as with no cache.
//! - **Never stale for long, never stale by a race**: a lookup answered by the database
//!   is cached only if no notification arrived while it was asked (a generation
//!   counter), so a value read before a change cannot outlive that change's notice.
//! - **No listener, no cache**: until the LISTEN connection is up, and from the moment
//!   it fails until it is back (retried with backoff), nothing is cached and every
//!   lookup asks the database, as without a cache. A notification lost with a
//!   connection can therefore never leave a stale entry behind.

use std::collections::HashMap;

use parking_lot::Mutex;
use switchboard_core::{Address, UserRecord};

/// The channel the `users` trigger notifies on.
pub(crate) const CHANNEL: &str = "switchboard_users";
/// Entries beyond which the cache starts afresh (a bound on memory, not an eviction
/// policy: a directory this large is refilled by lookups).
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
struct State {
    /// Whether the listener is connected and listening: only then is anything cached.
    live: bool,
    /// Moves on every notification (and on every loss of the listener).
    generation: u64,
    users: HashMap<Address, Option<UserRecord>>,
    domains: HashMap<String, bool>,
}

impl State {
    fn clear(&mut self) {
        self.generation += 1;
        self.users.clear();
        self.domains.clear();
    }
}

/// The cache, shared by the store's clones (its listener is the store's, `listener`).
#[derive(Default)]
pub(crate) struct DirectoryCache {
    state: Mutex<State>,
}

/// What a lookup saw before asking the database: where its answer may be cached.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(Option<u64>);

impl DirectoryCache {
    /// The listener is up or lost: either way nothing cached stays.
    pub(crate) fn listening(&self, up: bool) {
        let mut s = self.state.lock();
        s.clear();
        s.live = up;
    }

    /// A cached lookup, or the ticket under which the database's answer may be cached.
    pub(crate) fn user(&self, address: &Address) -> Result<Option<UserRecord>, Ticket> {
        let s = self.state.lock();
        match s.users.get(address) {
            Some(hit) if s.live => Ok(hit.clone()),
            _ => Err(Ticket(s.live.then_some(s.generation))),
        }
    }

    pub(crate) fn remember_user(
        &self,
        ticket: Ticket,
        address: &Address,
        user: &Option<UserRecord>,
    ) {
        let mut s = self.state.lock();
        if s.live && ticket.0 == Some(s.generation) {
            if s.users.len() >= MAX_ENTRIES {
                s.users.clear();
            }
            s.users.insert(address.clone(), user.clone());
        }
    }

    pub(crate) fn domain(&self, domain: &str) -> Result<bool, Ticket> {
        let s = self.state.lock();
        match s.domains.get(domain) {
            Some(hit) if s.live => Ok(*hit),
            _ => Err(Ticket(s.live.then_some(s.generation))),
        }
    }

    pub(crate) fn remember_domain(&self, ticket: Ticket, domain: &str, served: bool) {
        let mut s = self.state.lock();
        if s.live && ticket.0 == Some(s.generation) {
            if s.domains.len() >= MAX_ENTRIES {
                s.domains.clear();
            }
            s.domains.insert(domain.to_owned(), served);
        }
    }

    /// A change this store made itself: forgotten at once, not only when its
    /// notification comes back.
    pub(crate) fn changed(&self) {
        self.state.lock().clear();
    }

    /// A notice: the user `payload` names changed (migration 12), or, with a payload
    /// that names nobody, anything may have. Answers being asked now are not kept
    /// either way (the generation moves).
    pub(crate) fn notified(&self, payload: &str) {
        let mut s = self.state.lock();
        match Address::parse(payload) {
            Ok(user) => {
                s.generation += 1;
                s.domains.remove(&user.domain);
                s.users.remove(&user);
            }
            Err(_) => s.clear(),
        }
    }

    /// Whether the cache is in use (the listener is up), for tests and status.
    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.state.lock().live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PostgresStore;
    use crate::testing::{eventually, pg_server, PgDatabase};
    use switchboard_core::Directory;

    /// Runs with a test server only (`SWITCHBOARD_TEST_PG_URL`, as scripts/test.sh sets).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_are_cached_follow_other_writers_and_stop_without_a_listener() {
        if pg_server().is_none() {
            eprintln!("no PostgreSQL test server: skipped");
            return;
        }
        let db = PgDatabase::create().await;
        let server = PostgresStore::connect(&db.url).await.unwrap();
        let cli = PostgresStore::connect(&db.url).await.unwrap();
        let alice = Address::parse("alice@example.com").unwrap();
        eventually("the listener is up", async || server.caches.users.is_live()).await;

        // Another writer's change is seen once its notice arrives; the answer is cached.
        assert_eq!(server.find(&alice).await.unwrap(), None);
        assert!(
            matches!(server.caches.users.user(&alice), Ok(None)),
            "a miss is cached too"
        );
        cli.add(&alice, "pw", None).await.unwrap();
        eventually("the new user is seen", async || {
            server.find(&alice).await.unwrap().is_some()
        })
        .await;
        assert!(matches!(server.caches.users.user(&alice), Ok(Some(_))));
        assert!(server.has_domain("example.com").await.unwrap());
        assert_eq!(server.caches.users.domain("example.com").ok(), Some(true));
        cli.set_enabled(&alice, false).await.unwrap();
        eventually("the user is seen disabled", async || {
            server
                .find(&alice)
                .await
                .unwrap()
                .is_some_and(|u| !u.enabled)
        })
        .await;

        // A notice names its user: another user's change leaves alice's entry alone.
        assert!(matches!(server.caches.users.user(&alice), Ok(Some(_))));
        let carol = Address::parse("carol@example.com").unwrap();
        assert_eq!(server.find(&carol).await.unwrap(), None);
        cli.add(&carol, "pw", None).await.unwrap();
        eventually("carol is seen", async || {
            server.find(&carol).await.unwrap().is_some()
        })
        .await;
        assert!(
            matches!(server.caches.users.user(&alice), Ok(Some(_))),
            "alice's entry went with carol's change"
        );

        // An answer asked while a notice came in is not cached: it may predate the change.
        let bob = Address::parse("bob@example.com").unwrap();
        let Err(ticket) = server.caches.users.user(&bob) else {
            panic!("bob is not cached yet")
        };
        server.caches.users.changed();
        server.caches.users.remember_user(ticket, &bob, &None);
        assert!(
            server.caches.users.user(&bob).is_err(),
            "a stale answer was kept"
        );

        // The listener's connection ends (a restart, a failover): nothing is cached until
        // it listens again, then lookups are cached again.
        let killed: i64 = db
            .client()
            .await
            .query_one(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE datname = current_database() AND query LIKE 'LISTEN %'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 2, "one listener per store");
        eventually("the cache is off", async || !server.caches.users.is_live()).await;
        assert!(
            server.caches.users.user(&alice).is_err(),
            "nothing cached while off"
        );
        eventually("the listener is back", async || {
            server.caches.users.is_live()
        })
        .await;
        assert!(server.find(&alice).await.unwrap().is_some());
        assert!(matches!(server.caches.users.user(&alice), Ok(Some(_))));
    }
}
