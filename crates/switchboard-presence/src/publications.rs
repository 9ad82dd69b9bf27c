//! Publications (RFC 3903): the event state compositor's side. [`Publications`] owns one
//! user's publications (one device each, with its entity tag and expiry) and applies a
//! PUBLISH to them: initial publication (body, no `SIP-If-Match`), refresh
//! (`SIP-If-Match`, no body), modify (both), remove (`Expires: 0`); every success answers
//! a new entity tag. The per-user cap on publications is kept here, and so is what the
//! publications add up to with the user's stored state ([`Publications::presence`],
//! kept current by [`Publications::reaggregate`] with the pure rules of
//! [`crate::aggregate()`]).
//!
//! The PUBLISH handler reads and checks the request with no lock held
//! ([`PublishRequest::read`]), reads the user if they are not held (module `fetch`),
//! then applies it under the state lock and re-aggregates there, so watchers are told in
//! the same step (the notifier's part). Nothing here awaits or locks.

use std::time::Duration;

use sip_message::{HeaderName, Message};
use switchboard_core::seam::ServiceAnswer;
use switchboard_core::StoredPresence;
use tokio::time::Instant;

use crate::caps::with_warning;
use crate::fetch;
use crate::model::{DeviceState, Presence};
use crate::pidf::Published;
use crate::{aggregate, pidf, AggregationRules, Clock, PresenceConfig, PresenceService};

/// One publication: one device's state and its entity tag (RFC 3903 §4.1).
struct Publication {
    etag: String,
    state: DeviceState,
    expires_at: Instant,
}

/// One user's publications (PUBLISHed devices and the devices their Lync endpoints
/// stand for) and the presence they aggregate to with the user's stored state.
pub(crate) struct Publications {
    list: Vec<Publication>,
    /// The aggregate as of the last [`Publications::reaggregate`].
    presence: Presence,
    /// In a pool: these devices as last handed to the pool (JSON), so only a change is
    /// written.
    pub(crate) pool_written: Option<String>,
}

/// The devices other front ends of a pool hold for the user (`stored.pool_devices`, this
/// front end's own left out when read); a row that does not parse counts as none.
fn pool_devices(stored: &StoredPresence) -> Vec<DeviceState> {
    stored
        .pool_devices
        .iter()
        .flat_map(|(_, json)| serde_json::from_str::<Vec<DeviceState>>(json).unwrap_or_default())
        .collect()
}

/// A PUBLISH as read, to be applied to the user's [`Publications`].
pub(crate) struct PublishRequest {
    /// `SIP-If-Match`: the publication refreshed, changed or removed.
    if_match: Option<String>,
    expires: u32,
    published: Option<Published>,
    /// The User-Agent, naming a new publication's device.
    device: String,
    now_ms: i64,
}

impl Publications {
    /// No publication yet: the aggregate is the stored state's alone.
    pub(crate) fn new(stored: &StoredPresence, rules: &AggregationRules, now: i64) -> Self {
        Publications {
            list: Vec::new(),
            presence: aggregate(&pool_devices(stored), stored, rules, now),
            pool_written: None,
        }
    }

    /// The user's aggregated presence.
    pub(crate) fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Aggregates again (publications, stored state or time changed): whether the
    /// aggregate changed. When the user's last device went away, the time is noted in
    /// the aggregate and in `stored` (A6), and `gone` says so.
    pub(crate) fn reaggregate(
        &mut self,
        stored: &mut StoredPresence,
        rules: &AggregationRules,
        now: i64,
    ) -> Option<Gone> {
        let mut devices = self.devices();
        devices.extend(pool_devices(stored));
        let fresh = aggregate(&devices, stored, rules, now);
        let was_online = self.presence.availability.is_online() && !self.presence.manual;
        let gone = was_online && devices.iter().all(|d| !d.availability.is_online());
        if fresh == self.presence {
            return None;
        }
        self.presence = fresh;
        if gone {
            stored.last_active_ms = Some(now);
            self.presence.last_active_ms = Some(now);
        }
        Some(Gone(gone))
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Each publication's device state, the input of the aggregation.
    pub(crate) fn devices(&self) -> Vec<DeviceState> {
        self.list.iter().map(|p| p.state.clone()).collect()
    }

    /// Drops every publication (a fenced pool front end's devices are no longer its own).
    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// Drops the publications whose lifetime is over (RFC 3903 §6 step 5); whether any
    /// was.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.list.len();
        self.list.retain(|x| x.expires_at > now);
        self.list.len() != before
    }

    /// Puts `devices` in place of those whose names start with `prefix` (the devices a
    /// user's Lync endpoints stand for, rebuilt whenever their categories change). They
    /// last as long as the endpoint's connection, not a PUBLISH lifetime.
    pub(crate) fn set_devices(&mut self, prefix: &str, devices: Vec<DeviceState>) {
        self.list.retain(|x| !x.etag.starts_with(prefix));
        for d in devices {
            self.list.push(Publication {
                etag: d.device.clone(),
                state: d,
                expires_at: Instant::now() + Duration::from_secs(86_400),
            });
        }
    }

    /// Applies a PUBLISH (RFC 3903 §6 steps 4-8), or gives the answer that refuses it.
    fn apply(&mut self, req: PublishRequest, cap: usize) -> Result<Applied, ServiceAnswer> {
        let etag = new_etag();
        let expires_at = Instant::now() + Duration::from_secs(req.expires as u64);
        match req.if_match {
            Some(tag) => {
                let Some(i) = self.list.iter().position(|x| x.etag == tag) else {
                    // §6 step 4: no such publication (expired, or never).
                    return Err(ServiceAnswer::status(412));
                };
                if req.expires == 0 {
                    self.list.remove(i);
                    return Ok(Applied::Removed);
                }
                let x = &mut self.list[i];
                x.etag = etag.clone();
                x.expires_at = expires_at;
                if let Some(state) = req.published {
                    let device = std::mem::take(&mut x.state.device);
                    x.state = state.into_device(device, req.now_ms);
                }
            }
            None => {
                if req.expires == 0 {
                    // A publication that expires at once changes nothing.
                    return Ok(Applied::Nothing);
                }
                // Each initial PUBLISH is one more device: a client that never refreshes
                // (a new entity tag every time) must not grow the user without bound.
                if self.list.len() >= cap {
                    return Err(with_warning(403, "too many publications for this user"));
                }
                let Some(published) = req.published else {
                    return Err(with_warning(400, "initial PUBLISH without a body"));
                };
                let device = format!("{}#{}", req.device, &etag[..6]);
                self.list.push(Publication {
                    etag: etag.clone(),
                    state: published.into_device(device, req.now_ms),
                    expires_at,
                });
            }
        }
        Ok(Applied::Kept(etag))
    }
}

/// The aggregate changed; whether that was the user's last device going away.
pub(crate) struct Gone(pub(crate) bool);

/// What a PUBLISH did to the publications.
enum Applied {
    /// Kept (new, refreshed or changed) under this new entity tag.
    Kept(String),
    Removed,
    /// Nothing: an initial publication that expires at once.
    Nothing,
}

fn new_etag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl PublishRequest {
    /// Reads and checks a PUBLISH (RFC 3903 §6 steps 2-6; step 3, the event package,
    /// was checked by the core): the request to apply, or the answer that refuses it.
    fn read(
        msg: &Message,
        from: &str,
        to: &str,
        config: &PresenceConfig,
        clock: &Clock,
    ) -> Result<PublishRequest, ServiceAnswer> {
        // Step 2: only the user publishes their own presence.
        if from != to {
            return Err(with_warning(
                403,
                "only the user may publish their presence",
            ));
        }
        // Step 3 (event package) was checked by the core; here the presence package only.
        let event = msg.headers.get(&HeaderName::Event).unwrap_or("");
        if !event.trim().to_ascii_lowercase().starts_with("presence") || event.contains("winfo") {
            let mut a = ServiceAnswer::status(489);
            a.headers.push(("Allow-Events".into(), "presence".into()));
            return Err(a);
        }
        // Step 5: expiration.
        let requested = match msg.header_u32(&HeaderName::Expires) {
            Ok(e) => e.unwrap_or(config.max_expires),
            Err(_) => return Err(with_warning(400, "bad Expires")),
        };
        if requested != 0 && requested < config.min_expires {
            let mut a = ServiceAnswer::status(423);
            a.headers
                .push(("Min-Expires".into(), config.min_expires.to_string()));
            return Err(a);
        }
        let expires = requested.min(config.max_expires);
        let if_match = msg
            .headers
            .get(&HeaderName::from_wire("SIP-If-Match"))
            .map(|v| v.trim().to_owned());
        let has_body = !msg.body.is_empty();
        // Step 4: the body's type.
        let published = if has_body {
            let ct = msg
                .headers
                .get(&HeaderName::ContentType)
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if ct != "application/pidf+xml" {
                let mut a = ServiceAnswer::status(415);
                a.headers
                    .push(("Accept".into(), "application/pidf+xml".into()));
                return Err(a);
            }
            match pidf::parse(&msg.body, clock.now_ms()) {
                Ok(p) => Some(p),
                Err(e) => return Err(with_warning(400, &format!("PIDF refused: {e}"))),
            }
        } else {
            None
        };
        if if_match.is_none() && published.is_none() {
            // §6 step 6: an initial publication must carry state.
            return Err(with_warning(400, "initial PUBLISH without a body"));
        }
        Ok(PublishRequest {
            if_match,
            expires,
            published,
            device: device_name(msg),
            now_ms: clock.now_ms(),
        })
    }
}

impl PresenceService {
    /// A PUBLISH to `to`'s presence: read and checked with no lock held, the user read
    /// if they are not held, then applied and re-aggregated under the lock.
    pub(crate) async fn publish(&self, msg: &Message, from: &str, to: &str) -> ServiceAnswer {
        let req = match PublishRequest::read(msg, from, to, &self.config, &self.clock) {
            Ok(req) => req,
            Err(refused) => return refused,
        };
        let expires = req.expires;
        // The user's stored state is read (outside the lock) if they are not held; a
        // PUBLISH that cannot have it is refused, never applied to a half-read user.
        let applied = self
            .with_presentities(&[to.to_owned()], |st, fetched| {
                if !st.presentities.contains_key(to) && self.full(st, 1) {
                    return crate::caps::full_answer();
                }
                let p = self.ensure(st, fetched, to);
                let etag = match p
                    .publications
                    .apply(req, self.config.max_publications_per_user)
                {
                    Err(refused) => return refused,
                    Ok(Applied::Nothing) => {
                        let mut a = ServiceAnswer::status(200);
                        a.headers.push(("Expires".into(), "0".into()));
                        return a;
                    }
                    Ok(Applied::Removed) => None,
                    Ok(Applied::Kept(etag)) => Some(etag),
                };
                st.reaggregate(to, &self.config.rules, self.now_ms());
                let mut a = ServiceAnswer::status(200);
                if let Some(etag) = etag {
                    a.headers.push(("SIP-ETag".into(), etag));
                }
                a.headers.push(("Expires".into(), expires.to_string()));
                a
            })
            .await;
        applied.unwrap_or_else(|e| fetch::unavailable(&e))
    }
}

/// A device's name in the model: its User-Agent, else "device".
fn device_name(msg: &Message) -> String {
    msg.headers
        .get(&HeaderName::UserAgent)
        .map(|ua| ua.chars().take(60).collect())
        .unwrap_or_else(|| "device".into())
}
