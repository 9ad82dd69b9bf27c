//! One LISTEN connection per store, for the caches kept true by notifications
//! (`directory_cache`, `bindings_cache`).
//!
//! A cache may hold answers only while its notifications are certain to arrive: from the
//! moment the connection listens until it is lost. So the [`Follower`] is told both ways,
//! and empties itself on each; the connection is retried with backoff until the store
//! is dropped.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::tls::Link;

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What follows the notifications of some channels.
pub(crate) trait Follower: Send + Sync + 'static {
    /// The listener is up (`true`: notifications will arrive from now on) or lost
    /// (`false`: some may have been missed). Whatever was cached must go either way.
    fn listening(&self, up: bool);
    /// A notification on `channel`, with its payload.
    fn notified(&self, channel: &str, payload: &str);
}

/// Starts listening on `channels` on a connection of its own to the database `config`
/// names, until `follower` is dropped or the returned sender is.
pub(crate) fn start(
    config: tokio_postgres::Config,
    link: Link,
    channels: &'static [&'static str],
    follower: Weak<dyn Follower>,
) -> tokio::sync::watch::Sender<()> {
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(listen(config, link, channels, follower, stopped));
    stop
}

/// Listens until the follower is dropped, reconnecting with backoff.
async fn listen(
    config: tokio_postgres::Config,
    link: Link,
    channels: &'static [&'static str],
    follower: Weak<dyn Follower>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            r = listen_once(&config, &link, channels, &follower) => r,
            _ = stopped.changed() => return,
        };
        // Whatever happened, notifications may have been missed: nothing cached stays.
        match follower.upgrade() {
            Some(f) => f.listening(false),
            None => return,
        }
        match outcome {
            Ok(()) => wait = RETRY_FIRST,
            Err(e) => {
                tracing::warn!(error = %e, "caches off: cannot listen for changes");
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// One listening connection: connects, LISTENs, turns the caches on, and passes every
/// notification on until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    link: &Link,
    channels: &[&str],
    follower: &Weak<dyn Follower>,
) -> Result<(), tokio_postgres::Error> {
    match link {
        Link::Plain => {
            let (client, connection) = config.connect(NoTls).await?;
            listen_on(client, connection, channels, follower).await
        }
        Link::Tls(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            listen_on(client, connection, channels, follower).await
        }
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    channels: &[&str],
    follower: &Weak<dyn Follower>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    let notices = follower.clone();
    // The connection's messages, notifications among them, are read by polling it.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let outcome = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => match notices.upgrade() {
                    Some(f) => f.notified(n.channel(), n.payload()),
                    None => break Ok(()),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let _ = ended_tx.send(outcome);
    });
    let statements: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    if let Err(e) = client.batch_execute(&statements).await {
        driver.abort();
        return Err(e);
    }
    match follower.upgrade() {
        Some(f) => f.listening(true),
        None => return Ok(()),
    }
    // `client` lives as long as this wait: dropping it would close the connection.
    let outcome = (&mut ended).await.unwrap_or(Ok(()));
    drop(client);
    outcome
}
