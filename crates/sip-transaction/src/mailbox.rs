//! A small unbounded multi-producer, single-consumer queue.
//!
//! Why not `tokio::sync::mpsc`: every channel allocates a block of 32 slots up front, and
//! a forwarded request makes three of them (several KiB, ~10 % of a relayed MESSAGE's CPU
//! in a profile). Transactions carry a handful of messages at most; this queue allocates
//! only as items arrive.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    notify: Notify,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
}

/// Creates a connected sender and receiver.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`; gives it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(item);
        }
        self.shared.queue.lock().push_back(item);
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.notify.notify_one();
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.shared.queue.lock().pop_front() {
                return Some(item);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return self.shared.queue.lock().pop_front();
            }
            // notify_one stores a permit when nobody waits, so a send between the checks
            // above and this await is not lost.
            self.shared.notify.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_senders_go() {
        let (tx, mut rx) = mailbox();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        drop(tx2);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn send_fails_without_receiver() {
        let (tx, rx) = mailbox::<u8>();
        drop(rx);
        assert_eq!(tx.send(1), Err(1));
    }
}
