//! PUBLISH (RFC 3903 §6): the event state compositor's side. Initial publication (body,
//! no `SIP-If-Match`), refresh (`SIP-If-Match`, no body), modify (both), remove
//! (`Expires: 0`); every success answers a new entity tag.

use std::time::Duration;

use sip_message::{HeaderName, Message};
use switchboard_core::seam::ServiceAnswer;
use tokio::time::Instant;

use crate::fetch;
use crate::{pidf, PresenceService, Publication};

fn with_warning(status: u16, text: &str) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers
        .push(("Warning".into(), format!("399 switchboard \"{text}\"")));
    a
}

fn new_etag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl PresenceService {
    pub(crate) async fn publish(&self, msg: &Message, from: &str, to: &str) -> ServiceAnswer {
        // Step 2: only the user publishes their own presence.
        if from != to {
            return with_warning(403, "only the user may publish their presence");
        }
        // Step 3 (event package) was checked by the core; here the presence package only.
        let event = msg.headers.get(&HeaderName::Event).unwrap_or("");
        if !event.trim().to_ascii_lowercase().starts_with("presence") || event.contains("winfo") {
            let mut a = ServiceAnswer::status(489);
            a.headers.push(("Allow-Events".into(), "presence".into()));
            return a;
        }
        // Step 5: expiration.
        let requested = match msg.header_u32(&HeaderName::Expires) {
            Ok(e) => e.unwrap_or(self.config.max_expires),
            Err(_) => return with_warning(400, "bad Expires"),
        };
        if requested != 0 && requested < self.config.min_expires {
            let mut a = ServiceAnswer::status(423);
            a.headers
                .push(("Min-Expires".into(), self.config.min_expires.to_string()));
            return a;
        }
        let expires = requested.min(self.config.max_expires);
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
                return a;
            }
            match pidf::parse(&msg.body, self.now_ms()) {
                Ok(p) => Some(p),
                Err(e) => return with_warning(400, &format!("PIDF refused: {e}")),
            }
        } else {
            None
        };
        if if_match.is_none() && published.is_none() {
            // §6 step 6: an initial publication must carry state.
            return with_warning(400, "initial PUBLISH without a body");
        }
        let now_ms = self.now_ms();
        // The user's stored state is read (outside the lock) if they are not held; a
        // PUBLISH that cannot have it is refused, never applied to a half-read user.
        let applied = self
            .with_presentities(&[to.to_owned()], |st, fetched| {
                if !st.presentities.contains_key(to) && self.full(st, 1) {
                    return crate::caps::full_answer();
                }
                let p = self.ensure(st, fetched, to);
                let etag = new_etag();
                match if_match {
                    Some(tag) => {
                        let Some(i) = p.publications.iter().position(|x| x.etag == tag) else {
                            // §6 step 4: no such publication (expired, or never).
                            return ServiceAnswer::status(412);
                        };
                        if expires == 0 {
                            p.publications.remove(i);
                        } else {
                            let x = &mut p.publications[i];
                            x.etag = etag.clone();
                            x.expires_at = Instant::now() + Duration::from_secs(expires as u64);
                            if let Some(state) = published {
                                let device = std::mem::take(&mut x.state.device);
                                x.state = state.into_device(device, now_ms);
                            }
                        }
                    }
                    None => {
                        if expires == 0 {
                            // A publication that expires at once changes nothing.
                            let mut a = ServiceAnswer::status(200);
                            a.headers.push(("Expires".into(), "0".into()));
                            return a;
                        }
                        // Each initial PUBLISH is one more device: a client that never refreshes
                        // (a new entity tag every time) must not grow the user without bound.
                        if p.publications.len() >= self.config.max_publications_per_user {
                            return with_warning(403, "too many publications for this user");
                        }
                        let device = format!("{}#{}", device_name(msg), &etag[..6]);
                        p.publications.push(Publication {
                            etag: etag.clone(),
                            state: published
                                .expect("checked above")
                                .into_device(device, now_ms),
                            expires_at: Instant::now() + Duration::from_secs(expires as u64),
                        });
                    }
                }
                self.reaggregate(st, to);
                let mut a = ServiceAnswer::status(200);
                if expires > 0 {
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
