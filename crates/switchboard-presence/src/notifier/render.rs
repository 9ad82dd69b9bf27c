//! NOTIFY bodies and requests (RFC 6665 §4.2.2): PIDF (RFC 3863), MS-PRES categories,
//! watcher information (RFC 3858), RLMI lists (RFC 4662), Lync roaming documents; all
//! rendered under the state lock from the presentities given, and sent by the caller.

use super::*;

impl Notifier {
    /// The next NOTIFY body of subscription `id`, recorded as sent where that matters
    /// (contact-list deltas); `None` when there is nothing new to send.
    pub(super) fn render(&mut self, ps: &Presentities, id: u64) -> Option<(String, String)> {
        let s = self.subs.get_mut(&id)?;
        if s.kind == Kind::RoamingContacts {
            return crate::lync::next_contacts_document(ps, s);
        }
        Some(self.body(ps, &self.subs[&id]))
    }

    /// The NOTIFY body for a subscription as things stand: (Content-Type, body).
    pub(crate) fn body(&self, ps: &Presentities, s: &Subscription) -> (String, String) {
        match s.kind {
            Kind::RoamingContacts => crate::lync::contacts_document(ps, &s.resource),
            Kind::RoamingSelf => crate::lync::roaming_self_body(ps, self, &s.resource),
            Kind::Presence if s.msrtc => {
                let p = &ps[&*s.resource];
                let v = view_of(&s.resource, p, &s.watcher);
                (
                    crate::lync::CATEGORIES.into(),
                    crate::lync::categories(&v, p),
                )
            }
            Kind::Presence => {
                let p = &ps[&*s.resource];
                let v = view_of(&s.resource, p, &s.watcher);
                ("application/pidf+xml".into(), pidf::render(&v))
            }
            Kind::Winfo => {
                let p = &ps[&*s.resource];
                let mut entries: Vec<WatcherEntry> = Vec::new();
                for wid in &p.watchers {
                    let Some(w) = self.subs.get(wid) else {
                        continue;
                    };
                    if entries.iter().any(|e| *e.uri == *w.watcher) || w.watcher == s.resource {
                        continue;
                    }
                    let (status, event) = match p.relationship_of(&w.watcher) {
                        None => ("pending", "subscribe"),
                        Some(switchboard_core::Relationship::Blocked) => ("terminated", "rejected"),
                        Some(_) => ("active", "approved"),
                    };
                    entries.push(WatcherEntry {
                        id: format!("w{wid}"),
                        uri: w.watcher.to_string(),
                        status,
                        event,
                    });
                }
                (
                    "application/watcherinfo+xml".into(),
                    documents::watcherinfo(&s.resource, s.version, &entries),
                )
            }
            Kind::List => {
                let empty = ListState::default();
                let list = s.list.as_deref().unwrap_or(&empty);
                let shown: Vec<&String> = if s.full {
                    list.resources.iter().collect()
                } else {
                    list.resources
                        .iter()
                        .filter(|r| list.pending.contains(r))
                        .collect()
                };
                // Entries naming nobody we know (or a user beyond the presentity limit)
                // have no presentity: they show offline, built here and held nowhere.
                let absent = shown
                    .iter()
                    .any(|r| !ps.contains_key(r.as_str()))
                    .then(|| crate::unknown_presentity(&self.config.rules, self.clock.now_ms()));
                let resources: Vec<ListResource> = shown
                    .into_iter()
                    .filter_map(|r| {
                        let p = ps.get(r.as_str()).or(absent.as_ref())?;
                        let v = view_of(r, p, &s.watcher);
                        let (content_type, body) = if s.msrtc {
                            (crate::lync::CATEGORIES, crate::lync::categories(&v, p))
                        } else {
                            ("application/pidf+xml", pidf::render(&v))
                        };
                        Some(ListResource {
                            uri: r.clone(),
                            name: v.card.display_name.clone(),
                            content_type,
                            body,
                        })
                    })
                    .collect();
                documents::rlmi(&s.resource, s.version, s.full, &resources, s.msrtc)
            }
        }
    }

    pub(super) fn notify_request(
        s: &Subscription,
        state: String,
        body: (String, String),
    ) -> Option<Message> {
        let target = Uri::parse(&s.target).ok()?;
        let mut m = Message::request(Method::Notify, target.clone());
        m.start = StartLine::Request {
            method: Method::Notify,
            uri: target,
        };
        m.headers.push(HeaderName::MaxForwards, "70");
        m.headers.push(
            HeaderName::From,
            format!("<{}>;tag={:016x}", s.resource, s.our_tag),
        );
        let to = if s.their_tag.is_empty() {
            format!("<{}>", s.watcher)
        } else {
            format!("<{}>;tag={}", s.watcher, s.their_tag)
        };
        m.headers.push(HeaderName::To, to);
        m.headers.push(HeaderName::CallId, s.call_id.to_string());
        m.headers
            .push(HeaderName::CSeq, format!("{} NOTIFY", s.cseq));
        m.headers
            .push(HeaderName::Contact, format!("<{}>", s.resource));
        m.headers
            .push(HeaderName::Event, s.event.as_deref().unwrap_or("presence"));
        m.headers
            .push(HeaderName::from_wire("Subscription-State"), state);
        if s.kind == Kind::List && !s.msrtc {
            m.headers.push(HeaderName::Require, "eventlist");
        }
        m.headers.push(HeaderName::ContentType, body.0);
        m.body = bytes::Bytes::from(body.1.into_bytes());
        Some(m)
    }
}
