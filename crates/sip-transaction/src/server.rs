//! Server transactions (RFC 3261 §17.2, RFC 6026 §8).

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sip_message::Message;
use sip_transport::{Source, Target};
use tokio::sync::Notify;

use crate::{TransactionLayer, TxKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

pub(crate) struct ServerTx {
    key: TxKey,
    is_invite: bool,
    reliable: bool,
    target: Target,
    state: Mutex<(Phase, Option<Bytes>)>,
    acked: Notify,
    /// A provisional response went out: the client has stopped retransmitting the
    /// INVITE, so only Timer G can recover a lost final response.
    provisional_sent: std::sync::atomic::AtomicBool,
}

impl ServerTx {
    pub(crate) fn new(key: TxKey, is_invite: bool, reliable: bool, target: Target) -> Self {
        let phase = if is_invite {
            Phase::Proceeding
        } else {
            Phase::Trying
        };
        ServerTx {
            key,
            is_invite,
            reliable,
            target,
            state: Mutex::new((phase, None)),
            acked: Notify::new(),
            provisional_sent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An ACK matched this INVITE transaction: true if absorbed here (§17.2.1: ACK for a
    /// non-2xx final response).
    pub(crate) fn on_ack(&self) -> bool {
        let mut st = self.state.lock();
        match st.0 {
            Phase::Completed => {
                st.0 = Phase::Confirmed;
                self.acked.notify_one();
                true
            }
            Phase::Confirmed => true,
            _ => false,
        }
    }

    /// A retransmitted request: resend the last response, if any (§17.2.1, §17.2.2).
    pub(crate) async fn on_retransmission(&self, layer: &TransactionLayer) {
        let last = {
            let st = self.state.lock();
            match st.0 {
                Phase::Proceeding | Phase::Completed => st.1.clone(),
                _ => None,
            }
        };
        if let Some(bytes) = last {
            let _ = layer.inner.transports.send(self.target, bytes).await;
        }
    }
}

/// A request delivered to the transaction user, with the transaction that answers it.
pub struct ServerRequest {
    pub message: Message,
    pub source: Source,
    pub tx: ServerTxHandle,
}

/// The TU's handle on a server transaction.
#[derive(Clone)]
pub struct ServerTxHandle {
    pub(crate) tx: Arc<ServerTx>,
    pub(crate) layer: TransactionLayer,
}

impl ServerTxHandle {
    /// True once a final response was sent.
    pub fn is_final(&self) -> bool {
        !matches!(self.tx.state.lock().0, Phase::Trying | Phase::Proceeding)
    }

    /// Where this transaction's responses go.
    pub fn target(&self) -> Target {
        self.tx.target
    }

    /// Sends a response through the transaction. Responses after the final one are
    /// dropped (§17.2.1), except 2xx retransmissions in the Accepted state (RFC 6026).
    pub async fn respond(&self, response: &Message) {
        let status = response.status().unwrap_or(500);
        let bytes = self.layer.inner.wire(&self.tx.target, response);
        {
            let mut st = self.tx.state.lock();
            match st.0 {
                Phase::Trying | Phase::Proceeding => {}
                Phase::Accepted if (200..300).contains(&status) => {}
                _ => return,
            }
            st.1 = Some(bytes.clone());
            st.0 = match (status, self.tx.is_invite) {
                (100..=199, _) => Phase::Proceeding,
                (200..=299, true) => Phase::Accepted,
                _ => Phase::Completed,
            };
        }
        if let Err(e) = self
            .layer
            .inner
            .transports
            .send(self.tx.target, bytes.clone())
            .await
        {
            tracing::debug!(error = %e, status, "could not send response");
        }
        if status >= 200 {
            self.after_final(status, bytes);
        } else {
            self.tx
                .provisional_sent
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn after_final(&self, status: u16, bytes: Bytes) {
        let tx = self.tx.clone();
        let layer = self.layer.clone();
        let timers = layer.inner.timers;
        if !(tx.is_invite && status >= 300) {
            // Timer J (non-INVITE, §17.2.2) or RFC 6026 Timer L (INVITE 2xx): one fixed
            // duration, so a FIFO queue swept by one task replaces a timer task per
            // transaction (tens of thousands live at once under load).
            // A challenge (401/407) to a non-INVITE is answered as a stateless UAS would
            // (RFC 3261 §8.2.7 names issuing challenges as what stateless UAS behaviour is
            // for): a retransmission gets a fresh, equivalent challenge. Keeping it for
            // Timer J would hold half of all live transactions for nothing.
            let challenge = !tx.is_invite && matches!(status, 401 | 407);
            if (tx.reliable && !tx.is_invite) || challenge {
                terminate(&layer, &tx);
            } else {
                let due = tokio::time::Instant::now() + timers.t1 * 64;
                layer.inner.linger.lock().push_back((due, tx));
            }
            return;
        }
        // §17.2.1: Timer G retransmits over UDP until ACK; Timer H gives up. A final
        // response sent before any provisional one is not retransmitted: the client is
        // still retransmitting its INVITE (Timer A), and each copy gets the response
        // again from this transaction, so nothing is lost. That keeps challenges and
        // refusals to unauthenticated, possibly spoofed, INVITEs at one answer per
        // request: no reflector.
        let retransmit = !tx.reliable
            && tx
                .provisional_sent
                .load(std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timers.t1 * 64;
            let mut interval = timers.t1;
            loop {
                let wait = if !retransmit {
                    deadline
                } else {
                    (tokio::time::Instant::now() + interval).min(deadline)
                };
                tokio::select! {
                    _ = tx.acked.notified() => break,
                    _ = tokio::time::sleep_until(wait) => {}
                }
                if tx.state.lock().0 != Phase::Completed {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!("Timer H fired: no ACK for a final response");
                    break;
                }
                let _ = layer.inner.transports.send(tx.target, bytes.clone()).await;
                interval = (interval * 2).min(timers.t2);
            }
            // Timer I absorbs ACK retransmissions.
            if !tx.reliable {
                tokio::time::sleep(timers.t4).await;
            }
            terminate(&layer, &tx);
        });
    }
}

/// Ends a server transaction: later copies of its request are new requests.
fn terminate(layer: &TransactionLayer, tx: &Arc<ServerTx>) {
    tx.state.lock().0 = Phase::Terminated;
    layer
        .inner
        .server
        .remove_if(&tx.key, |t| Arc::ptr_eq(t, tx));
}

/// Sweeps the queue of lingering transactions (Timer J / L) as their deadlines pass.
pub(crate) async fn sweep_lingering(layer: std::sync::Weak<crate::Inner>) {
    loop {
        let next = {
            let Some(inner) = layer.upgrade() else { return };
            let now = tokio::time::Instant::now();
            let mut expired = Vec::new();
            let next = {
                let mut q = inner.linger.lock();
                while q.front().is_some_and(|(due, _)| *due <= now) {
                    if let Some((_, tx)) = q.pop_front() {
                        expired.push(tx);
                    }
                }
                q.front().map(|(due, _)| *due)
            };
            let layer = TransactionLayer { inner };
            for tx in &expired {
                terminate(&layer, tx);
            }
            next
        };
        match next {
            Some(due) => tokio::time::sleep_until(due).await,
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}
