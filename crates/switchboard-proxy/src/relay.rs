//! The router's side of a [`Relay`]: a request the IM service holds while it decides,
//! let go on its way or answered by it.
//!
//! The service's call runs as a task of its own, since it lasts until the forking ends
//! (it learns the final status). The request's handling task (for a stream, its reading
//! task) waits only until the request has been relayed or answered, as it does for a
//! request no service looks at, so a connection's requests are still taken in order.
//! The final response of a relayed request waits for the service's call to return: what
//! the service records for it (a counted message, a session ended by BYE) comes before
//! the sender hears, and so before the sender's next request.

use std::future::Future;
use std::sync::Arc;

use sip_message::HeaderName;
use sip_transaction::ServerRequest;
use switchboard_core::seam::{Relay, RelayPort};
use switchboard_registrar::Binding;
use tokio::sync::oneshot;

use crate::routing::Classified;
use crate::Core;

/// Where a request the service lets through goes next.
pub(crate) enum Next {
    /// Routed as if no service had looked (a request in a dialog).
    Route(Box<Classified>),
    /// Forked to these devices of the user `to_aor` (none: 480).
    Fork {
        bindings: Vec<Binding>,
        to_aor: String,
    },
}

/// Hands the final status of a relayed request to the service, and holds the response
/// until the service's call has returned.
pub(crate) struct Settle {
    status: oneshot::Sender<u16>,
    done: oneshot::Receiver<()>,
}

impl Settle {
    /// The final status is `status`: the service hears it, and the caller goes on (to
    /// send the response) once the service's call has returned.
    pub(crate) async fn settled(self, status: u16) {
        // Either end may be gone (a service that returned early): the response goes anyway.
        let _ = self.status.send(status);
        let _ = self.done.await;
    }
}

struct Relaying {
    core: Arc<Core>,
    /// The request, until it is relayed or answered.
    req: Option<ServerRequest>,
    from_aor: String,
    next: Option<Next>,
    /// Dropped once the request has been relayed or answered: its handling task goes on.
    release: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Core {
    /// Hands `req` (from `from_aor`) to the IM service's `call` with a [`Relay`] whose
    /// forwarding goes on as `next` says; returns once the request has been relayed or
    /// answered (see the module header).
    pub(crate) async fn through_service<F, Fut>(
        self: &Arc<Self>,
        req: ServerRequest,
        from_aor: &str,
        next: Next,
        call: F,
    ) where
        F: FnOnce(Relay) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (release, released) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let remote = req.source.remote;
        let relay = Relay::new(Box::new(Relaying {
            core: self.clone(),
            req: Some(req),
            from_aor: from_aor.to_owned(),
            next: Some(next),
            release: Some(release),
            done: Some(done),
        }));
        let service = call(relay);
        // On a task of the transports' (a panic in the service is contained, logged and
        // counted as the crate header of sip-transport says; the relay's Drop answers 500).
        self.layer.transports().spawn_work(
            remote,
            Box::pin(async move {
                service.await;
                let _ = done_tx.send(());
            }),
        );
        // Err: the service dropped the relay; its Drop answered 500.
        let _ = released.await;
    }
}

#[async_trait::async_trait]
impl RelayPort for Relaying {
    async fn forward(mut self: Box<Self>) -> Option<u16> {
        let (Some(req), Some(next), Some(done)) =
            (self.req.take(), self.next.take(), self.done.take())
        else {
            return None;
        };
        let (status, heard) = oneshot::channel();
        let settle = Settle { status, done };
        let from_aor = std::mem::take(&mut self.from_aor);
        let core = self.core.clone();
        match next {
            Next::Route(target) => core.route(req, *target, from_aor, Some(settle)).await,
            Next::Fork { bindings, .. } if bindings.is_empty() => {
                // Not relayed: the service hears no status.
                drop(settle);
                core.respond(&req, 480).await;
            }
            Next::Fork { bindings, to_aor } => {
                core.spawn_forward(req, bindings, from_aor, Some(to_aor), Some(settle))
            }
        }
        // Relayed (its forking runs on) or answered: the handling task goes on.
        drop(self.release.take());
        heard.await.ok()
    }

    async fn respond(mut self: Box<Self>, status: u16, headers: Vec<(String, String)>) {
        let Some(req) = self.req.take() else { return };
        let mut resp = self.core.response(&req.message, status);
        for (name, value) in headers {
            resp.headers.push(HeaderName::from_wire(&name), value);
        }
        req.tx.respond(&resp).await;
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        // Neither relayed nor answered: never leave a transaction unanswered.
        if let Some(req) = self.req.take() {
            tracing::error!(
                method = ?req.message.method(),
                "the IM service returned without relaying or answering; answered 500"
            );
            let core = self.core.clone();
            tokio::spawn(async move { core.respond(&req, 500).await });
        }
    }
}
