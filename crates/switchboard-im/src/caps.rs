//! Per-user caps, as Lync's `Set-CsUserServicesConfiguration` sets them: how many group
//! chats one user may organise at a time, and how many session-mode IM sessions one user
//! may have open. Each thing counted costs a client one request and holds state on the
//! server until it ends or idles out, so without a cap one client could make the service
//! hold without end. (The third cap, messages kept for one recipient from one sender, is
//! counted by the store: `OfflineData::store_offline`.)
//!
//! What is open is counted from the parts' own maps (`ImService::open_sessions` adds
//! up sessions, bridges and conference dialogs; `Conferences::group_chat_place` counts
//! conferences), so nothing can drift out of step with them. A request that would open one more first takes a [`Place`]: counted with
//! what is open, under one lock, so two requests racing for a user's last place cannot
//! both have it, while the work that makes it real (a CDR write) runs outside every
//! service lock. The place is given back once what it opened is in the maps.

use std::collections::HashMap;

use parking_lot::Mutex;

/// How long an INVITE let through (`admit_invite`) may hold its place without an outcome
/// from the core: far longer than any INVITE transaction (Timer B, 64·T1 = 32 s), so it
/// only ever clears a place whose outcome was lost.
pub(crate) const PENDING_INVITE_MAX: std::time::Duration = std::time::Duration::from_secs(180);

/// Places being taken, per user.
#[derive(Default)]
pub(crate) struct Places(Mutex<HashMap<String, usize>>);

/// One place being taken; given back when dropped. Declare it before any service lock
/// guard in the same scope, so it drops after them: dropping takes this lock, and
/// [`Places::take`] takes service locks while holding it.
pub(crate) struct Place<'a> {
    places: &'a Places,
    user: String,
}

impl Places {
    /// A place for `user`, unless `open()` (what they have open now) and the places
    /// being taken already reach `max`.
    pub(crate) fn take(
        &self,
        user: &str,
        max: usize,
        open: impl FnOnce() -> usize,
    ) -> Option<Place<'_>> {
        let mut taken = self.0.lock();
        let pending = taken.get(user).copied().unwrap_or(0);
        if open().saturating_add(pending) >= max {
            return None;
        }
        *taken.entry(user.to_owned()).or_default() += 1;
        Some(Place {
            places: self,
            user: user.to_owned(),
        })
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut taken = self.places.0.lock();
        if let Some(n) = taken.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_count_with_what_is_open_and_come_back_when_dropped() {
        let places = Places::default();
        let a = places.take("alice", 2, || 0).expect("first place");
        let b = places.take("alice", 2, || 0).expect("second place");
        assert!(places.take("alice", 2, || 0).is_none(), "both taken");
        assert!(places.take("bob", 2, || 0).is_some(), "per user");
        drop(a);
        assert!(
            places.take("alice", 2, || 1).is_none(),
            "one open, one taken"
        );
        drop(b);
        assert!(places.take("alice", 2, || 1).is_some());
        assert!(
            places.take("alice", 0, || 0).is_none(),
            "a cap of 0 refuses all"
        );
        assert!(places.0.lock().is_empty(), "nothing left behind");
    }
}
