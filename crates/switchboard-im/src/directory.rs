//! What the IM service needs of the user directory: display names for notices and
//! rosters, and whether an address someone typed (`/invite carol@example.com`, a
//! REFER's target) is a user. Looked up at the service's async entry points, outside
//! every lock, and kept in memory, so rendering a roster or a notice under a lock never
//! waits on the directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_core::{Address, Directory};

/// Names older than this are looked up again when next needed.
const FRESH_FOR: Duration = Duration::from_secs(300);
/// Names kept at most (beyond it the memory starts over: names are only a nicety).
const MAX_NAMES: usize = 50_000;

pub(crate) struct Names {
    users: Arc<dyn Directory>,
    /// By AoR (`sip:user@domain`): the display name (if any) and when it was read.
    known: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl Names {
    pub(crate) fn new(users: Arc<dyn Directory>) -> Names {
        Names {
            users,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the names of `aors` not known (or no longer fresh). A directory that cannot
    /// answer leaves them as they were: names are shown, never relied on.
    pub(crate) async fn learn(&self, aors: &[&str]) {
        let now = Instant::now();
        let missing: Vec<&str> = {
            let known = self.known.lock();
            aors.iter()
                .copied()
                .filter(|a| {
                    known
                        .get(*a)
                        .is_none_or(|(_, at)| now.duration_since(*at) >= FRESH_FOR)
                })
                .collect()
        };
        for aor in missing {
            let Ok(address) = Address::parse(aor) else {
                continue;
            };
            if let Ok(user) = self.users.find(&address).await {
                self.remember(aor, user.and_then(|u| u.display_name));
            }
        }
    }

    fn remember(&self, aor: &str, name: Option<String>) {
        let mut known = self.known.lock();
        if known.len() >= MAX_NAMES {
            known.clear();
        }
        known.insert(aor.to_owned(), (name, Instant::now()));
    }

    /// The display name of `aor`, or its user part.
    pub(crate) fn display(&self, aor: &str) -> String {
        if let Some((Some(name), _)) = self.known.lock().get(aor) {
            return name.clone();
        }
        let addr = aor.strip_prefix("sip:").unwrap_or(aor);
        addr.split('@').next().unwrap_or(addr).to_owned()
    }

    /// A known, enabled user's AoR from what someone typed, or why not.
    pub(crate) async fn user(&self, typed: &str) -> Result<String, String> {
        let a = Address::parse(typed).map_err(|e| e.to_string())?;
        match self.users.find(&a).await {
            Ok(Some(u)) if u.enabled => {
                let aor = format!("sip:{a}");
                self.remember(&aor, u.display_name);
                Ok(aor)
            }
            Ok(_) => Err(format!("there is no user {a}")),
            Err(e) => Err(format!("the user directory is unavailable ({e})")),
        }
    }

    /// For a chat command `/invite WHO`, whether WHO is a user (`None` for any other text).
    pub(crate) async fn invitee_of(&self, command: Option<&str>) -> Option<Result<String, String>> {
        let mut words = command?.split_whitespace();
        match (words.next(), words.next()) {
            (Some("/invite"), Some(target)) => Some(self.user(target).await),
            _ => None,
        }
    }
}
