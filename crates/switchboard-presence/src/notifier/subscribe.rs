//! SUBSCRIBE (RFC 6665 §4.2.1, RFC 3856 §6.1, RFC 4662 §5, RFC 3857 §5): reading and
//! checking the request with no lock held ([`NewSubscribe::read`]), the handler's awaits
//! (list entries against the directory, the presentities needed), and the decision
//! under the lock ([`Notifier::subscribe`]): a new dialog, a refresh, the end of one,
//! and the resource lists' membership (batched lists, contact-list changes).

use super::*;

/// A SUBSCRIBE as read and checked with no lock held, to be decided under it.
struct NewSubscribe<'m> {
    msg: &'m Message,
    kind: Kind,
    from: &'m str,
    to: &'m str,
    event: String,
    call_id: String,
    their_tag: String,
    /// Our tag, when the SUBSCRIBE is inside a dialog.
    our_tag: Option<String>,
    contact: Option<String>,
    expires: u32,
    source: Flow,
    /// The subscriber reads MS-PRES categories.
    msrtc: bool,
    /// A batched subscription's entries (MS-PRES §3.7.5.6), canonical.
    adhoc: Option<Vec<String>>,
    /// Which list entries are users: resolved against the directory after reading,
    /// before the lock is taken.
    known: Known,
}

/// A list naming more entries than its owner may watch: refused whole, with the limit
/// named (a clear error beats silently watching only some).
fn too_many_entries(cap: usize) -> ServiceAnswer {
    caps::with_warning(
        403,
        &format!("too many list entries for this user (at most {cap})"),
    )
}

fn status_with(status: u16, name: &str, value: String) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers.push((name.into(), value));
    a
}

/// Does the Accept header (absent: the package default) allow `types`?
fn accepts(msg: &Message, types: &[&str]) -> bool {
    let listed: Vec<String> = msg
        .headers
        .values(&HeaderName::Accept)
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .collect();
    listed.is_empty()
        || types.iter().all(|t| {
            listed.iter().any(|l| {
                l == t || l == "*/*" || l.strip_suffix("/*").is_some_and(|p| t.starts_with(p))
            })
        })
}

fn supports(msg: &Message, option: &str) -> bool {
    msg.headers
        .values(&HeaderName::Supported)
        .any(|v| v.trim().eq_ignore_ascii_case(option))
}

fn supports_eventlist(msg: &Message) -> bool {
    supports(msg, "eventlist")
}

/// The media type of the body, lower case, without parameters.
pub(crate) fn content_type(msg: &Message) -> String {
    msg.headers
        .get(&HeaderName::ContentType)
        .and_then(|c| c.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Lync clients list the MS-PRES category document in Accept.
fn wants_categories(msg: &Message) -> bool {
    msg.headers.values(&HeaderName::Accept).any(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(crate::lync::CATEGORIES))
    })
}

impl<'m> NewSubscribe<'m> {
    /// Reads and checks a SUBSCRIBE (RFC 6665 §4.2.1.1, RFC 3856 §6.1): which package and
    /// kind of subscription, the dialog, the lifetime. `None` for a provisioning fetch
    /// (`vnd-microsoft-provisioning-v2`, answered at once, no subscription kept); a
    /// request that cannot be served gets its answer.
    fn read(
        msg: &'m Message,
        from: &'m str,
        to: &'m str,
        source: Flow,
        config: &PresenceConfig,
    ) -> Result<Option<NewSubscribe<'m>>, ServiceAnswer> {
        let event = msg
            .headers
            .get(&HeaderName::Event)
            .unwrap_or("")
            .trim()
            .to_owned();
        let package = event
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let batched = content_type(msg) == "application/msrtc-adrl-categorylist+xml";
        let kind = match package.as_str() {
            "presence" if from == to && (supports_eventlist(msg) || batched) => Kind::List,
            "presence" => Kind::Presence,
            "presence.winfo" => Kind::Winfo,
            "vnd-microsoft-roaming-contacts" => Kind::RoamingContacts,
            "vnd-microsoft-roaming-self" => Kind::RoamingSelf,
            "vnd-microsoft-provisioning-v2" => return Ok(None),
            _ => return Err(status_with(489, "Allow-Events", crate::ALLOW_EVENTS.into())),
        };
        if matches!(
            kind,
            Kind::Winfo | Kind::RoamingContacts | Kind::RoamingSelf
        ) && from != to
        {
            return Err(caps::with_warning(
                403,
                "only the user may subscribe to their own data",
            ));
        }
        let msrtc = matches!(kind, Kind::RoamingContacts | Kind::RoamingSelf)
            || (matches!(kind, Kind::Presence | Kind::List) && (batched || wants_categories(msg)));
        let adhoc: Option<Vec<String>> = if batched {
            match msrtc::publish::parse_batch_subscribe(&msg.body) {
                Ok(b) => Some(b.resources),
                Err(e) => return Err(caps::with_warning(400, &e.to_string())),
            }
        } else {
            None
        };
        let types: &[&str] = match kind {
            _ if msrtc => &[],
            Kind::Presence => &["application/pidf+xml"],
            Kind::Winfo => &["application/watcherinfo+xml"],
            Kind::List => &[
                "multipart/related",
                "application/rlmi+xml",
                "application/pidf+xml",
            ],
            Kind::RoamingContacts | Kind::RoamingSelf => &[],
        };
        if !accepts(msg, types) {
            // RFC 6665 §4.2.1.1: none of the Accept types can be produced.
            return Err(status_with(406, "Accept", types.join(", ")));
        }
        let req = SubscribeRequest::read(msg, config.min_expires, config.max_expires)?;
        let SubscribeRequest {
            expires,
            call_id,
            their_tag,
            our_tag: our_tag_in,
        } = req;
        let contact = msg
            .headers
            .get(&HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri.to_string());
        Ok(Some(NewSubscribe {
            msg,
            kind,
            from,
            to,
            event,
            call_id,
            their_tag,
            our_tag: our_tag_in,
            contact,
            expires,
            source,
            msrtc,
            adhoc,
            known: Known::default(),
        }))
    }
}

impl PresenceService {
    /// A SUBSCRIBE: read and checked, its list entries resolved and the presentities it
    /// needs read with no lock held, then decided under the lock by the notifier.
    pub(crate) async fn subscribe(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        source: Flow,
    ) -> ServiceAnswer {
        let mut req = match NewSubscribe::read(msg, from, to, source, &self.config) {
            Ok(Some(req)) => req,
            Ok(None) => {
                let focus = self.focus_factory.as_ref().map(|f| f(to));
                return crate::lync::provisioning(msg, from, to, focus);
            }
            Err(refused) => return refused,
        };
        // A list's entries are counted and looked up in the user directory before the
        // lock is taken (no data call under a lock): only users who exist get a
        // presentity. What cannot be read refuses the SUBSCRIBE (fail closed).
        let cap = self.config.max_list_entries_per_user;
        req.known = if req.kind == Kind::List {
            let stored;
            let raw: &[String] = match &req.adhoc {
                Some(entries) => entries,
                None if req.our_tag.is_none() => {
                    stored = match self.contacts.contact_list(bare(to)).await {
                        Ok(list) => crate::listed_uris(&list),
                        Err(e) => return fetch::unavailable(&e),
                    };
                    &stored
                }
                None => &[],
            };
            if caps::distinct(raw.iter().map(String::as_str)) > cap {
                return too_many_entries(cap);
            }
            match self.known_users(raw).await {
                Ok(k) => k,
                Err(e) => return fetch::unavailable(&e),
            }
        } else {
            Known::default()
        };
        let known = &req.known;
        req.adhoc = req
            .adhoc
            .take()
            .map(|raw| known.entries(raw.iter().map(String::as_str)));
        // The resource (or the list's owner) and the users the list names are read
        // before the lock is taken again; whatever cannot be read answers 503.
        let mut needed = vec![to.to_owned()];
        needed.extend(req.known.users());
        let answer = self
            .with_presentities(&needed, |st, fetched| {
                st.notifier.subscribe(&mut st.presentities, fetched, req)
            })
            .await;
        answer.unwrap_or_else(|e| fetch::unavailable(&e))
    }
}

impl Notifier {
    /// A SUBSCRIBE under the state lock (RFC 6665 §4.2.1): a new dialog, a refresh, or
    /// the end of one; the answer. Its first NOTIFY goes once the 200 has
    /// ([`Notifier::answered_subscribe`]), unless it went in the 200 itself.
    fn subscribe(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        req: NewSubscribe<'_>,
    ) -> ServiceAnswer {
        let cap = self.config.max_list_entries_per_user;
        let key = self.key(req.from, &req.call_id, &req.their_tag);
        let existing = self.find(req.from, &req.call_id, &req.their_tag);
        let id = match (req.our_tag, existing) {
            (Some(tag), Some(id)) if format!("{:016x}", self.subs[&id].our_tag) == tag => id,
            // RFC 6665 §4.2.1.2: a refresh of a subscription that does not exist (for
            // this subscriber: someone else's dialog cannot be refreshed or ended).
            (Some(_), _) => return ServiceAnswer::status(481),
            // The same SUBSCRIBE again without our tag (its answer was lost): same dialog.
            (None, Some(id)) => id,
            (None, None) => {
                let Some(target) = req.contact.clone() else {
                    return ServiceAnswer::status(400);
                };
                if req.kind == Kind::Presence
                    && bare(req.from) != bare(req.to)
                    && ps.get(req.to).is_some_and(|p| p.unreadable)
                {
                    // Fail closed: what the user allows this watcher cannot be read
                    // now (their watchers already see them offline).
                    return fetch::unavailable(&DataError::Unavailable(format!(
                        "the last read of {} failed",
                        req.to
                    )));
                }
                if req.expires == 0 {
                    // A fetch: one NOTIFY with the state, then the subscription is over.
                } else if self.held_by(req.from) >= self.config.max_subscriptions_per_watcher {
                    return status_with(503, "Retry-After", "60".into());
                }
                if self.by_dialog.contains_key(&key) {
                    // Two live dialogs whose (Call-ID, tag) hash alike: vanishingly rare;
                    // the client retries with another Call-ID.
                    return status_with(500, "Retry-After", "1".into());
                }
                let owner_held = ps.contains_key(req.to);
                let list = match (req.kind, req.adhoc.as_ref()) {
                    (Kind::List, Some(entries)) => Some((entries.clone(), true)),
                    (Kind::List, None) => {
                        // The owner's contact list as held (loaded now if need be).
                        if !owner_held && self.full(ps, 1) {
                            return caps::full_answer();
                        }
                        let owner = self.ensure(ps, fetched, req.to);
                        let uris = crate::listed_uris(&owner.contacts);
                        Some((req.known.entries(uris.iter().map(String::as_str)), false))
                    }
                    _ => None,
                };
                if let Some((entries, _)) = &list {
                    let total = match ps.get(req.to) {
                        Some(owner) => caps::entries_after(owner, &[], entries),
                        None => entries.len(),
                    };
                    if total > cap {
                        return too_many_entries(cap);
                    }
                }
                let needed = usize::from(!ps.contains_key(req.to))
                    + list
                        .as_ref()
                        .map(|(e, _)| caps::new_presentities(ps, e, &req.known))
                        .unwrap_or(0);
                if self.full(ps, needed) {
                    return caps::full_answer();
                }
                let dialog = (req.call_id.into(), req.their_tag.clone().into_boxed_str());
                let id = self.create(
                    ps, fetched, req.kind, req.to, req.from, &req.event, target, req.source, key,
                    dialog, list, &req.known,
                );
                self.subs.get_mut(&id).expect("created").msrtc = req.msrtc;
                id
            }
        };
        if let (Some(entries), true) = (req.adhoc, existing.is_some()) {
            // A batched SUBSCRIBE inside the dialog replaces the ad hoc list, within the
            // same bounds as a new one (refused: the list stays as it was).
            if let Some(answer) = self.check_replacement(ps, id, &entries, &req.known) {
                return answer;
            }
            self.set_adhoc(ps, fetched, id, entries, &req.known);
        }
        let s = self.subs.get_mut(&id).expect("present");
        if let Some(c) = req.contact {
            // RFC 6665 §4.1.2.1: a refresh may update the remote target.
            s.target = c.into_boxed_str();
            s.flow = req.source;
        }
        s.expires_at = Instant::now() + Duration::from_secs(req.expires as u64);
        s.ending = req.expires == 0;
        // RFC 6665 §4.2.1.2: every accepted SUBSCRIBE gets a NOTIFY (sent after the 200).
        s.dirty = true;
        if s.kind == Kind::List {
            s.full = true;
        }
        let mut a = ServiceAnswer::status(200);
        a.to_tag = Some(format!("{:016x}", s.our_tag));
        a.headers.push(("Expires".into(), req.expires.to_string()));
        a.headers.push(("Contact".into(), format!("<{}>", req.to)));
        a.headers
            .push(("Allow-Events".into(), crate::ALLOW_EVENTS.into()));
        // MS-SIP §3.13: a Lync client that allows it gets the first NOTIFY's content in
        // the 200 itself (one round trip less at sign-in, for three subscriptions).
        if s.msrtc && req.expires > 0 && supports(req.msg, "ms-piggyback-first-notify") {
            let (ctype, body) = self.render(ps, id).unwrap_or_default();
            let cseq = req.msg.cseq().map(|c| c.seq).unwrap_or(1);
            a.headers.push(("Event".into(), req.event.clone()));
            a.headers
                .push(("ms-piggyback-cseq".into(), cseq.to_string()));
            a.body = Some((ctype, bytes::Bytes::from(body.into_bytes())));
            let s = self.subs.get_mut(&id).expect("present");
            s.piggybacked = true;
            s.version += 1;
            s.full = false;
            if let Some(list) = s.list.as_mut() {
                list.pending.clear();
            }
        }
        a
    }

    /// Why list subscription `id` may not name `entries` instead of what it names now:
    /// too many entries for its owner (403), or no room for their presentities (503).
    fn check_replacement(
        &self,
        ps: &Presentities,
        id: u64,
        entries: &[String],
        known: &Known,
    ) -> Option<ServiceAnswer> {
        let s = self.subs.get(&id)?;
        let list = s.list.as_ref()?;
        let owner = ps.get(&*s.resource)?;
        let cap = self.config.max_list_entries_per_user;
        if caps::entries_after(owner, &list.resources, entries) > cap {
            return Some(too_many_entries(cap));
        }
        if self.full(ps, caps::new_presentities(ps, entries, known)) {
            return Some(caps::full_answer());
        }
        None
    }

    /// A batched subscription's resources (MS-PRES §3.7.5.6): watched as a list. Only
    /// entries naming known users are linked to (and make) a presentity.
    fn set_adhoc(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        resources: Vec<String>,
        known: &Known,
    ) {
        let Some(list) = self.subs.get_mut(&id).and_then(|s| s.list.as_mut()) else {
            // Not a list dialog: the body has nothing to replace (and nothing may be
            // linked that removing the subscription would not unlink).
            return;
        };
        list.adhoc = true;
        self.relink(ps, fetched, id, resources, known);
    }

    /// List subscription `id` names `fresh` from now on: entries it no longer names are
    /// unlinked, new ones naming known users linked (a presentity each, while there is
    /// room: otherwise they show offline, as entries naming nobody do), its owner's
    /// entry count follows, and its next NOTIFY carries full state.
    fn relink(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        fresh: Vec<String>,
        known: &Known,
    ) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        let owner = s.resource.clone();
        let Some(list) = s.list.as_mut() else {
            return;
        };
        let old = std::mem::take(&mut list.resources);
        let new_set: HashSet<&str> = fresh.iter().map(String::as_str).collect();
        let old_set: HashSet<&str> = old.iter().map(String::as_str).collect();
        for r in old.iter().filter(|r| !new_set.contains(r.as_str())) {
            if let Some(p) = ps.get_mut(r.as_str()) {
                p.watchers.retain(|w| *w != id);
            }
            self.kick_winfo(ps, r);
        }
        for r in fresh.iter().filter(|r| !old_set.contains(r.as_str())) {
            if !known.contains(r) {
                continue;
            }
            if !ps.contains_key(r.as_str()) && self.full(ps, 1) {
                tracing::warn!(entry = %r, "presentity limit reached: list entry not watched");
                continue;
            }
            self.ensure(ps, fetched, r).watchers.push(id);
            self.kick_winfo(ps, r);
        }
        if let Some(p) = ps.get_mut(&*owner) {
            caps::drop_entries(p, &old);
            caps::add_entries(p, &fresh);
        }
        let s = self.subs.get_mut(&id).expect("present");
        if let Some(list) = s.list.as_mut() {
            list.resources = fresh;
        }
        s.full = true;
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        kind: Kind,
        resource: &str,
        watcher: &str,
        event: &str,
        target: String,
        flow: Flow,
        key: u64,
        dialog: (Box<str>, Box<str>),
        list: Option<(Vec<String>, bool)>,
        known: &Known,
    ) -> u64 {
        self.ensure(ps, fetched, resource);
        let resource: Arc<str> = ps
            .get_key_value(resource)
            .map(|(k, _)| k.clone())
            .expect("ensured");
        let list = list
            .filter(|_| kind == Kind::List)
            .map(|(resources, adhoc)| {
                Box::new(ListState {
                    resources,
                    pending: Vec::new(),
                    adhoc,
                })
            });
        let resources = list
            .as_ref()
            .map(|l| l.resources.clone())
            .unwrap_or_default();
        let watcher = self.watcher_key(watcher);
        let id = self.insert(
            key,
            Subscription {
                kind,
                resource: resource.clone(),
                watcher,
                event: (!event.eq_ignore_ascii_case("presence")).then(|| event.into()),
                target: target.into_boxed_str(),
                flow,
                call_id: dialog.0,
                their_tag: dialog.1,
                our_tag: rand::random::<u64>(),
                cseq: 0,
                version: 0,
                expires_at: Instant::now(),
                last_sent: None,
                ending: false,
                in_flight: false,
                dirty: true,
                timer_armed: false,
                full: true,
                list,
                msrtc: false,
                piggybacked: false,
                sent_contacts: None,
            },
        );
        match kind {
            Kind::Presence => {
                self.ensure(ps, fetched, &resource).watchers.push(id);
                // The user's watcher list changed.
                self.kick_winfo(ps, &resource);
            }
            Kind::Winfo | Kind::RoamingContacts | Kind::RoamingSelf => {
                self.ensure(ps, fetched, &resource).winfo.push(id)
            }
            Kind::List => {
                let owner = self.ensure(ps, fetched, &resource);
                owner.lists.push(id);
                caps::add_entries(owner, &resources);
                // Entries naming nobody we know hold nothing: they show offline.
                for r in resources.iter().filter(|r| known.contains(r)) {
                    self.ensure(ps, fetched, r).watchers.push(id);
                    self.kick_winfo(ps, r);
                }
            }
        }
        id
    }

    /// The owner's contact list changed: the list subscription follows it, full state next.
    /// `known` says which of the list's entries are users, `fetched` holds the new ones'
    /// presentities (both read outside the lock).
    pub(crate) fn list_membership_changed(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        known: &Known,
    ) {
        let Some(owner) = self.subs.get(&id).map(|s| s.resource.clone()) else {
            return;
        };
        let Some(owner_p) = ps.get(&*owner) else {
            return;
        };
        let fresh = known.entries(
            crate::listed_uris(&owner_p.contacts)
                .iter()
                .map(String::as_str),
        );
        let Some(list) = self.subs.get(&id).and_then(|s| s.list.as_ref()) else {
            return;
        };
        if list.adhoc {
            // The client names its own resources; the stored list does not change them.
            return;
        }
        let cap = self.config.max_list_entries_per_user;
        if caps::entries_after(owner_p, &list.resources, &fresh) > cap {
            // The list grew past the limit (the CLI does not enforce it): the client is
            // invited to subscribe again, and that SUBSCRIBE gets the 403 that says why.
            tracing::info!(owner = %bare(&owner), cap, "contact list over the entry limit: list subscription ended");
            self.terminate(ps, id, "deactivated");
            return;
        }
        self.relink(ps, fetched, id, fresh, known);
        self.kick(ps, id);
    }
}
