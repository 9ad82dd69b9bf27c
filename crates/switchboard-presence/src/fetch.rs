//! Reading presentities from the data traits, never under a lock, and failing closed.
//!
//! A request says which presentities it needs ([`PresenceService::with_presentities`]):
//! those not held are read with the state lock released, then the request runs under the
//! lock with them at hand, and [`PresenceService::ensure`] (or [`ensure`], for a part
//! given the presentities, as the notifier is) puts in the table only those it uses. Two requests that read the same user meanwhile do not make two presentities: the
//! first to take the lock puts its copy in, the other finds it held and drops its own
//! (a copy just read holds no watcher and no publication, so nothing is lost or doubled).
//!
//! A copy read before a change the change log reports, and put in the table after the
//! follower looked for it there, would hold the old state for good. So every read is
//! registered while under way ([`Reads`]); the follower marks the reads of each changed
//! user, and a marked copy is read again instead of being used. Deciding that and putting
//! the copy in happen under one lock, and the follower marks before it looks in the table,
//! so either the read sees the mark or the follower sees the presentity (and reloads it).
//!
//! Every [`DataError`] a request meets becomes one answer, [`unavailable`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_core::seam::ServiceAnswer;
use switchboard_core::{Address, ContactList, DataError, StoredPresence};
use tokio::task::JoinSet;

use crate::caps::{self, Known};
use crate::{
    bare, listed_uris, presentity, AggregationRules, PresenceService, Presentities, Presentity,
    State,
};

/// How long a client waits before asking again when the data cannot be read: a database
/// failing over or restarting is back within seconds.
const RETRY_AFTER_SECS: u32 = 10;

/// Presentities read at once for one request (a list subscription names up to
/// `max_list_entries_per_user` users): enough to overlap the reads, few enough to leave
/// the blocking pool to others.
const CONCURRENT_READS: usize = 8;

/// The answer to a request that needs data the store cannot give now, whatever its
/// reason: 503 with Retry-After (RFC 3261 §21.5.4). Never a guess from partial data.
pub(crate) fn unavailable(e: &DataError) -> ServiceAnswer {
    tracing::warn!(error = %e, "presence data cannot be read or written: request refused");
    caps::retry_later("presence data unavailable", RETRY_AFTER_SECS)
}

/// What the data holds about one user: what a presentity is built from.
#[derive(Default)]
pub(crate) struct UserData {
    pub(crate) stored: StoredPresence,
    pub(crate) contacts: ContactList,
    pub(crate) groups: Vec<(i64, String)>,
    pub(crate) display_name: Option<String>,
}

/// Reads of presentities under way, by address: how many, and how many changes the
/// change log reported for the address since the first of them began.
#[derive(Default)]
pub(crate) struct Reads(Mutex<HashMap<String, (u32, u64)>>);

impl Reads {
    /// Registers a read of `aor` about to begin.
    pub(crate) fn start(&self, aor: &str) -> Ticket<'_> {
        let mut reads = self.0.lock();
        let entry = reads.entry(aor.to_owned()).or_default();
        entry.0 += 1;
        Ticket {
            reads: self,
            aor: aor.to_owned(),
            generation: entry.1,
        }
    }

    /// The change log says `aor` changed: reads of it under way may predate the change.
    pub(crate) fn changed(&self, aor: &str) {
        if let Some(entry) = self.0.lock().get_mut(aor) {
            entry.1 += 1;
        }
    }
}

/// One read under way; ends when dropped.
pub(crate) struct Ticket<'a> {
    reads: &'a Reads,
    aor: String,
    generation: u64,
}

impl Ticket<'_> {
    /// No change to the user was reported since this read began. Asked under the state
    /// lock, right before what was read is used.
    pub(crate) fn fresh(&self) -> bool {
        self.reads
            .0
            .lock()
            .get(&self.aor)
            .is_some_and(|entry| entry.1 == self.generation)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut reads = self.reads.0.lock();
        if let Some(entry) = reads.get_mut(&self.aor) {
            entry.0 -= 1;
            if entry.0 == 0 {
                reads.remove(&self.aor);
            }
        }
    }
}

/// Presentities read for one request and not in the table yet, each with its read.
#[derive(Default)]
pub(crate) struct Fetched<'a>(HashMap<String, (Ticket<'a>, Presentity)>);

impl PresenceService {
    /// Everything stored about `aor` at `now`; an error when any of it cannot be read
    /// (a presentity is built from whole reads only).
    pub(crate) async fn read_user(&self, aor: &str, now: i64) -> Result<UserData, DataError> {
        let addr = bare(aor);
        let mut stored = self.presence.load(addr, now).await?;
        // This front end's own devices are the ones it holds, not what it last wrote.
        if let Some(pool) = &self.pool {
            let me = (pool.member)().fe;
            stored.pool_devices.retain(|(fe, _)| *fe != me);
        }
        let contacts = self.contacts.contact_list(addr).await?;
        let groups = self.contacts.contact_groups(addr).await?;
        let display_name = match Address::parse(addr) {
            Ok(a) => self.directory.find(&a).await?.and_then(|u| u.display_name),
            Err(_) => None,
        };
        Ok(UserData {
            stored,
            contacts,
            groups,
            display_name,
        })
    }

    /// Reads the presentities of `aors`, a few at a time, each registered as a read
    /// under way; the first failure ends it (the reads still going are dropped).
    async fn read_presentities<'a>(
        &'a self,
        aors: Vec<String>,
    ) -> Result<Vec<(String, Ticket<'a>, Presentity)>, DataError> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| DataError::Unavailable("the presence service is stopping".into()))?;
        let mut todo = aors.into_iter();
        let mut tickets: HashMap<String, Ticket<'a>> = HashMap::new();
        let mut reading = JoinSet::new();
        let mut out = Vec::new();
        loop {
            while reading.len() < CONCURRENT_READS {
                let Some(aor) = todo.next() else { break };
                tickets.insert(aor.clone(), self.reads.start(&aor));
                let svc = me.clone();
                reading.spawn(async move {
                    let now = svc.now_ms();
                    let read = svc.read_user(&aor, now).await;
                    (aor, now, read)
                });
            }
            let Some(done) = reading.join_next().await else {
                return Ok(out);
            };
            let (aor, now, read) =
                done.map_err(|e| DataError::Backend(format!("a presence read failed: {e}")))?;
            let p = presentity(read?, &self.config.rules, now);
            let ticket = tickets.remove(&aor).expect("registered when spawned");
            out.push((aor, ticket, p));
        }
    }

    /// Runs `apply` under the state lock with every presentity of `aors` at hand (held,
    /// or in the [`Fetched`] it is given for [`PresenceService::ensure`]). Those not held
    /// are read first with the lock released; a copy whose user changed while it was
    /// read is read again. An error when any cannot be read: nothing is applied then.
    pub(crate) async fn with_presentities<R>(
        &self,
        aors: &[String],
        apply: impl FnOnce(&mut State, &mut Fetched<'_>) -> R,
    ) -> Result<R, DataError> {
        let mut fetched = Fetched::default();
        loop {
            let missing: Vec<String> = {
                let mut st = self.state.lock();
                fetched.0.retain(|_, (ticket, _)| ticket.fresh());
                let missing: Vec<String> = aors
                    .iter()
                    .filter(|a| {
                        !st.presentities.contains_key(a.as_str()) && !fetched.0.contains_key(*a)
                    })
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(apply(&mut st, &mut fetched));
                }
                missing
            };
            for (aor, ticket, p) in self.read_presentities(missing).await? {
                fetched.0.insert(aor, (ticket, p));
            }
        }
    }

    /// `aor`'s presentity, put in the table from `fetched` if it is not held (see
    /// [`ensure`]).
    pub(crate) fn ensure<'s>(
        &self,
        st: &'s mut State,
        fetched: &mut Fetched<'_>,
        aor: &str,
    ) -> &'s mut Presentity {
        ensure(
            &mut st.presentities,
            fetched,
            aor,
            &self.config.rules,
            self.now_ms(),
        )
    }

    /// Reads `aor` again and puts what was read in place of what is held, keeping its
    /// publications and subscriptions. On failure the presentity is marked unreadable:
    /// its watchers see it offline until a read succeeds.
    pub(crate) async fn try_reload(&self, aor: &str) -> Result<(), DataError> {
        loop {
            let has_lists = match self.state.lock().presentities.get(aor) {
                None => return Ok(()),
                Some(p) => !p.lists.is_empty(),
            };
            let ticket = self.reads.start(aor);
            let (fresh, known) = match self.read_again(aor, has_lists).await {
                Ok(x) => x,
                Err(e) => {
                    self.set_unreadable(aor);
                    return Err(e);
                }
            };
            // The users the list now names that are not held are read too, outside the
            // lock, so the list subscriptions can watch them.
            let applied = self
                .with_presentities(&known.users(), |st, fetched| {
                    // A list subscription that began meanwhile needs the entries resolved.
                    let lists_now = st
                        .presentities
                        .get(aor)
                        .is_some_and(|p| !p.lists.is_empty());
                    (ticket.fresh() && (has_lists || !lists_now))
                        .then(|| self.swap_in(st, fetched, aor, fresh, &known))
                })
                .await;
            match applied {
                Ok(Some(())) => return Ok(()),
                // The change log reported another change while this read was under way,
                // or the user's first list subscription began: read again.
                Ok(None) => continue,
                Err(e) => {
                    self.set_unreadable(aor);
                    return Err(e);
                }
            }
        }
    }

    /// A fresh presentity for `aor`, and (for an owner with list subscriptions) which
    /// entries of the list now read are users.
    async fn read_again(
        &self,
        aor: &str,
        has_lists: bool,
    ) -> Result<(Presentity, Known), DataError> {
        let now = self.now_ms();
        let data = self.read_user(aor, now).await?;
        let known = if has_lists {
            self.known_users(&listed_uris(&data.contacts)).await?
        } else {
            Known::default()
        };
        Ok((presentity(data, &self.config.rules, now), known))
    }

    /// Puts `fresh` in place of `aor`'s presentity, with its publications and
    /// subscriptions, and tells whoever it changes something for.
    fn swap_in(
        &self,
        st: &mut State,
        fetched: &mut Fetched<'_>,
        aor: &str,
        mut fresh: Presentity,
        known: &Known,
    ) {
        let Some((key, old)) = st.presentities.remove_entry(aor) else {
            return;
        };
        // With the publications comes the old aggregate, so reaggregate notices the change.
        fresh.publications = old.publications;
        fresh.watchers = old.watchers;
        fresh.winfo = old.winfo;
        fresh.lists = old.lists;
        fresh.lync = old.lync;
        fresh.list_entries = old.list_entries;
        // What watchers may see changed with the relationships, or when it is known
        // again after a failed read (they were shown offline meanwhile).
        let audiences_changed = fresh.contacts != old.contacts || old.unreadable;
        st.presentities.insert(key, fresh);
        st.reaggregate(aor, &self.config.rules, self.now_ms());
        if audiences_changed {
            // Relationships changed what each watcher may see, the watcher list's
            // pending/active states, and the user's own list subscriptions.
            let p = &st.presentities[aor];
            let ids: Vec<u64> = p.watchers.iter().chain(p.winfo.iter()).copied().collect();
            let lists = p.lists.clone();
            for id in ids {
                st.notifier.changed(&mut st.presentities, id, Some(aor));
            }
            for id in lists {
                st.notifier
                    .list_membership_changed(&mut st.presentities, fetched, id, known);
            }
        }
    }

    /// A read of `aor` failed: until one succeeds, its watchers see it offline.
    fn set_unreadable(&self, aor: &str) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(p) = st.presentities.get_mut(aor) else {
            return;
        };
        if std::mem::replace(&mut p.unreadable, true) {
            return;
        }
        let watchers = p.watchers.clone();
        for id in watchers {
            st.notifier.changed(&mut st.presentities, id, Some(aor));
        }
    }
}

/// `aor`'s presentity, put in `ps` from `fetched` if it is not held. A request names
/// what it needs before the lock is taken; one that did not find it here gets a
/// presentity shown offline to every watcher, read by housekeeping later (never a read
/// under the lock, never a default relationship).
pub(crate) fn ensure<'p>(
    ps: &'p mut Presentities,
    fetched: &mut Fetched<'_>,
    aor: &str,
    rules: &AggregationRules,
    now: i64,
) -> &'p mut Presentity {
    if !ps.contains_key(aor) {
        let p = match fetched.0.remove(aor) {
            Some((_ticket, p)) => p,
            None => {
                debug_assert!(false, "presentity {aor} not read before it was needed");
                tracing::error!(
                    aor,
                    "presentity not read before it was needed: offline to watchers until read"
                );
                let mut p = crate::unknown_presentity(rules, now);
                p.unreadable = true;
                p
            }
        };
        ps.insert(Arc::from(aor), p);
    }
    ps.get_mut(aor).expect("inserted above")
}
