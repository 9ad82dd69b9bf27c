//! The user directory's lookup cache on PostgreSQL, kept true by LISTEN/NOTIFY.
//!
//! Every SIP request looks its sender (and often its recipient) up; a round trip each
//! would make the database the bottleneck of every front end. So lookups are cached in
//! memory, and a trigger on `users` (migration 8) sends a notification on channel
//! [`CHANNEL`] with every committed change, whoever made it: the CLI, another front end,
//! this process. One connection of our own LISTENs and empties the cache on each.
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
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use switchboard_core::{Address, UserRecord};
use tokio_postgres::{AsyncMessage, NoTls};

use super::tls::Link;

/// The channel the `users` trigger notifies on.
const CHANNEL: &str = "switchboard_users";
/// Entries beyond which the cache starts afresh (a bound on memory, not an eviction
/// policy: a directory this large is refilled by lookups).
const MAX_ENTRIES: usize = 200_000;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

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

/// The cache, shared by the store's clones; its listener task ends when the last clone
/// is dropped.
pub(crate) struct DirectoryCache {
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::watch::Sender<()>,
}

/// What a lookup saw before asking the database: where its answer may be cached.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(Option<u64>);

impl DirectoryCache {
    /// Starts the listener on a connection of its own to the database `config` names.
    pub(crate) fn start(config: tokio_postgres::Config, link: Link) -> DirectoryCache {
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = tokio::sync::watch::channel(());
        tokio::spawn(listen(config, link, Arc::downgrade(&state), stopped));
        DirectoryCache { state, _stop: stop }
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

    /// Whether the cache is in use (the listener is up), for tests and status.
    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.state.lock().live
    }
}

/// Listens for changes until the cache is dropped, reconnecting with backoff.
async fn listen(
    config: tokio_postgres::Config,
    link: Link,
    state: std::sync::Weak<Mutex<State>>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            r = listen_once(&config, &link, &state) => r,
            _ = stopped.changed() => return,
        };
        // Whatever happened, notifications may have been missed: nothing cached stays.
        match state.upgrade() {
            Some(s) => {
                let mut s = s.lock();
                s.live = false;
                s.clear();
            }
            None => return,
        }
        match outcome {
            Ok(()) => wait = RETRY_FIRST,
            Err(e) => {
                tracing::warn!(error = %e, "user directory cache off: cannot listen for changes");
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// One listening connection: connects, LISTENs, turns the cache on, and empties it on
/// every notification until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    link: &Link,
    state: &std::sync::Weak<Mutex<State>>,
) -> Result<(), tokio_postgres::Error> {
    match link {
        Link::Plain => {
            let (client, connection) = config.connect(NoTls).await?;
            listen_on(client, connection, state).await
        }
        Link::Tls(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            listen_on(client, connection, state).await
        }
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    state: &std::sync::Weak<Mutex<State>>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    let notices = state.clone();
    // The connection's messages, notifications among them, are read by polling it.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let outcome = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(_))) => match notices.upgrade() {
                    Some(s) => s.lock().clear(),
                    None => break Ok(()),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let _ = ended_tx.send(outcome);
    });
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    if let Some(s) = state.upgrade() {
        let mut s = s.lock();
        s.clear();
        s.live = true;
    }
    // `client` lives as long as this wait: dropping it would close the connection.
    let outcome = (&mut ended).await.unwrap_or(Ok(()));
    drop(client);
    outcome
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
        eventually("the listener is up", async || server.users.is_live()).await;

        // Another writer's change is seen once its notice arrives; the answer is cached.
        assert_eq!(server.find(&alice).await.unwrap(), None);
        assert!(
            matches!(server.users.user(&alice), Ok(None)),
            "a miss is cached too"
        );
        cli.add(&alice, "pw", None).await.unwrap();
        eventually("the new user is seen", async || {
            server.find(&alice).await.unwrap().is_some()
        })
        .await;
        assert!(matches!(server.users.user(&alice), Ok(Some(_))));
        assert!(server.has_domain("example.com").await.unwrap());
        assert_eq!(server.users.domain("example.com").ok(), Some(true));
        cli.set_enabled(&alice, false).await.unwrap();
        eventually("the user is seen disabled", async || {
            server
                .find(&alice)
                .await
                .unwrap()
                .is_some_and(|u| !u.enabled)
        })
        .await;

        // An answer asked while a notice came in is not cached: it may predate the change.
        let bob = Address::parse("bob@example.com").unwrap();
        let Err(ticket) = server.users.user(&bob) else {
            panic!("bob is not cached yet")
        };
        server.users.changed();
        server.users.remember_user(ticket, &bob, &None);
        assert!(server.users.user(&bob).is_err(), "a stale answer was kept");

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
        eventually("the cache is off", async || !server.users.is_live()).await;
        assert!(
            server.users.user(&alice).is_err(),
            "nothing cached while off"
        );
        eventually("the listener is back", async || server.users.is_live()).await;
        assert!(server.find(&alice).await.unwrap().is_some());
        assert!(matches!(server.users.user(&alice), Ok(Some(_))));
    }
}
