//! Per-user and server-wide bounds on what the service holds in memory (the Lync
//! `MaxContacts` / `MaxSubscriptions` idea): publications per user, entries of a user's
//! resource lists, presentities held. Also the resolution of list entries against the
//! user directory, so that only users who exist get a presentity.

use std::collections::{HashMap, HashSet};

use switchboard_core::seam::ServiceAnswer;
use switchboard_core::{Address, DataError};

use crate::{bare, PresenceService, Presentities, Presentity, State};

/// List entries that name users the directory knows, each with its canonical form
/// (`sip:user@domain`, lower case). Canonical forms map to themselves, so "is this
/// resource a known user" is one lookup. Resolved outside the presence lock.
#[derive(Default)]
pub(crate) struct Known(HashMap<String, String>);

impl Known {
    /// Whether `resource` (as kept in a list, i.e. canonical when known) is a user.
    pub(crate) fn contains(&self, resource: &str) -> bool {
        self.0.contains_key(resource)
    }

    /// The users named, each once, in canonical form: the presentities a list of these
    /// entries watches.
    pub(crate) fn users(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(named, canonical)| named == canonical)
            .map(|(_, canonical)| canonical.clone())
            .collect()
    }

    /// The entries as a list keeps them: known users in canonical form (one presentity
    /// per user, whatever the spelling), the rest as named; without repeats, in order.
    pub(crate) fn entries<'a>(&self, raw: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in raw {
            let e = self.0.get(r).map(String::as_str).unwrap_or(r);
            if seen.insert(e) {
                out.push(e.to_owned());
            }
        }
        out
    }
}

/// How many distinct entries a list names, as written.
pub(crate) fn distinct<'a>(raw: impl IntoIterator<Item = &'a str>) -> usize {
    raw.into_iter().collect::<HashSet<_>>().len()
}

pub(crate) fn with_warning(status: u16, text: &str) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers
        .push(("Warning".into(), format!("399 switchboard \"{text}\"")));
    a
}

/// 503 with Retry-After (RFC 3261 §21.5.4) and a Warning saying why.
pub(crate) fn retry_later(text: &str, secs: u32) -> ServiceAnswer {
    let mut a = with_warning(503, text);
    a.headers.push(("Retry-After".into(), secs.to_string()));
    a
}

/// The answer when the server holds as many presentities as it may.
pub(crate) fn full_answer() -> ServiceAnswer {
    retry_later("presence service at its limit of presentities", 60)
}

/// Distinct entries of all of `owner`'s lists if a list now naming `old` named `new`.
pub(crate) fn entries_after(owner: &Presentity, old: &[String], new: &[String]) -> usize {
    let new_set: HashSet<&str> = new.iter().map(String::as_str).collect();
    let mut n = owner.list_entries.len();
    for r in old {
        if owner.list_entries.get(r.as_str()) == Some(&1) && !new_set.contains(r.as_str()) {
            n -= 1;
        }
    }
    n + new
        .iter()
        .filter(|r| !owner.list_entries.contains_key(r.as_str()))
        .count()
}

/// Counts a list's entries (without repeats) against its owner.
pub(crate) fn add_entries(owner: &mut Presentity, entries: &[String]) {
    for e in entries {
        *owner.list_entries.entry(e.clone()).or_default() += 1;
    }
}

/// A list's entries no longer count against its owner.
pub(crate) fn drop_entries(owner: &mut Presentity, entries: &[String]) {
    for e in entries {
        if let Some(n) = owner.list_entries.get_mut(e.as_str()) {
            *n -= 1;
            if *n == 0 {
                owner.list_entries.remove(e.as_str());
            }
        }
    }
}

impl PresenceService {
    /// Which of `raw` name users the directory knows. Asked outside the presence lock
    /// (no data call under a lock); an error when the directory cannot say.
    pub(crate) async fn known_users(&self, raw: &[String]) -> Result<Known, DataError> {
        let mut known = HashMap::new();
        for r in raw {
            if known.contains_key(r) {
                continue;
            }
            let Ok(addr) = Address::parse(bare(r)) else {
                continue;
            };
            if self.directory.find(&addr).await?.is_some() {
                let canonical = format!("sip:{addr}");
                known.insert(r.to_owned(), canonical.clone());
                known.insert(canonical.clone(), canonical);
            }
        }
        Ok(Known(known))
    }

    /// Whether holding `needed` more presentities would pass `max_presentities`.
    pub(crate) fn full(&self, st: &State, needed: usize) -> bool {
        full(&st.presentities, needed, self.config.max_presentities)
    }
}

/// Whether holding `needed` more presentities than `ps` would pass `max`.
pub(crate) fn full(ps: &Presentities, needed: usize, max: usize) -> bool {
    needed > 0 && ps.len() + needed > max
}

/// Presentities that watching `entries` (known users only) would add.
pub(crate) fn new_presentities(ps: &Presentities, entries: &[String], known: &Known) -> usize {
    entries
        .iter()
        .filter(|r| known.contains(r) && !ps.contains_key(r.as_str()))
        .count()
}
