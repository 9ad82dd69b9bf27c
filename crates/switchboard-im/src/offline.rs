//! Offline messages: a MESSAGE to a known user with no device signed in is kept
//! (RFC 3428 §7: 202 Accepted), bounded per user, per sender and in age, and delivered
//! in order, once (deleted only after a device accepted it), when the user next
//! registers. What the service itself could not deliver (group chat traffic, bridged
//! messages, command replies) is kept the same way.
//!
//! Owns the [`OfflineData`] handle, the bounds, and the set of users whose stored
//! messages are being delivered now.
//!
//! Lock rule: one lock (`delivering`), held only to add or remove a user, never across
//! an await; every data call and delivery is awaited with no lock held.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::seam::{Deliverer, Delivery, ServiceAnswer};
use switchboard_core::{Keep, OfflineData, OfflineMessage};

use crate::{data_unavailable, refused, ImConfig};

/// The offline store of the IM service (see the module header).
pub(crate) struct Offline {
    data: Arc<dyn OfflineData>,
    deliverer: Arc<dyn Deliverer>,
    max_per_user: usize,
    max_per_sender: usize,
    max_age: Duration,
    /// AoRs whose stored messages are being delivered now.
    delivering: Mutex<HashSet<String>>,
}

impl Offline {
    pub(crate) fn new(
        data: Arc<dyn OfflineData>,
        deliverer: Arc<dyn Deliverer>,
        config: &ImConfig,
    ) -> Offline {
        Offline {
            data,
            deliverer,
            max_per_user: config.offline_max_per_user,
            max_per_sender: config.offline_max_per_sender,
            max_age: config.offline_max_age,
            delivering: Mutex::new(HashSet::new()),
        }
    }

    /// Keeps a user's own MESSAGE for its offline recipient: `Ok` when kept (the caller
    /// answers 202), else the answer refusing it (480 over a bound, 503 when the data
    /// cannot answer).
    pub(crate) async fn keep(&self, m: &OfflineMessage) -> Result<(), ServiceAnswer> {
        match self
            .data
            .store_offline(m, self.max_per_user, self.max_per_sender)
            .await
        {
            Ok(Keep::Kept) => Ok(()),
            Ok(Keep::SenderFull) => {
                let max = self.max_per_sender;
                tracing::info!(
                    to = m.recipient,
                    from = m.sender,
                    max,
                    "mailbox full for this sender; message refused"
                );
                Err(refused(
                    480,
                    &format!(
                        "the recipient's mailbox is full for messages from this sender (limit {max})"
                    ),
                ))
            }
            Ok(Keep::MailboxFull) => {
                let max = self.max_per_user;
                tracing::info!(to = m.recipient, max, "mailbox full; message refused");
                Err(refused(
                    480,
                    &format!("the recipient's mailbox is full (limit {max})"),
                ))
            }
            Err(e) => Err(data_unavailable(&e)),
        }
    }

    /// Delivers `d`; a recipient no device took it for gets it as an offline message
    /// (of CDR session `session_id`).
    pub(crate) async fn deliver_or_keep(&self, d: Delivery, session_id: Option<String>) {
        let status = self.deliverer.deliver(d.clone()).await;
        if (200..300).contains(&status) {
            return;
        }
        let kept = OfflineMessage {
            id: 0,
            recipient: d.to.clone(),
            sender: d.from.clone(),
            content_type: d.content_type.clone(),
            body: d.body.to_vec(),
            received_at_ms: d.sent_at_ms,
            session_id,
        };
        // The same bounds as a user's own MESSAGE to someone offline: the sender here
        // (a Lync user bridged, a group chat, the service) cannot fill the mailbox.
        match self
            .data
            .store_offline(&kept, self.max_per_user, self.max_per_sender)
            .await
        {
            Ok(Keep::Kept) => {}
            Ok(full) => {
                tracing::info!(to = %d.to, from = %d.from, ?full, "undelivered message not kept")
            }
            Err(e) => tracing::error!(error = %e, "cannot keep an undelivered message"),
        }
    }

    /// Delivers what is kept for `aor` (it just registered), in order, deleting each
    /// message once a device accepted it; stops at the first one not accepted.
    pub(crate) async fn deliver_stored(self: Arc<Self>, aor: String) {
        if !self.delivering.lock().insert(aor.clone()) {
            return;
        }
        match self.data.offline_for(&aor).await {
            Ok(waiting) => {
                for m in waiting {
                    let status = self
                        .deliverer
                        .deliver(Delivery {
                            from: m.sender.clone(),
                            to: m.recipient.clone(),
                            content_type: m.content_type.clone(),
                            body: Bytes::from(m.body.clone()),
                            sent_at_ms: m.received_at_ms,
                            from_display: None,
                            extra_headers: Vec::new(),
                        })
                        .await;
                    if !(200..300).contains(&status) {
                        // Kept for the next registration; order is preserved.
                        tracing::info!(aor, status, "stored message not accepted; kept");
                        break;
                    }
                    if let Err(e) = self.data.delete_offline(m.id).await {
                        tracing::error!(error = %e, "cannot delete a delivered message");
                        break;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read stored messages"),
        }
        self.delivering.lock().remove(&aor);
    }

    /// Drops kept messages older than the age bound (`now_ms` is the present).
    pub(crate) async fn expire(&self, now_ms: i64) {
        let max_age = self.max_age.as_millis() as i64;
        if let Err(e) = self.data.expire_offline(now_ms - max_age).await {
            tracing::error!(error = %e, "cannot expire offline messages");
        }
    }
}
