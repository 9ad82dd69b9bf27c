//! Category publications (MS-PRES §3.7.5): SERVICE `msrtc-category-publish+xml`, the
//! devices a user's Lync endpoints stand for, acknowledged subscribers, and what an
//! endpoint's connection closing takes away (`expireType="endpoint"`).
//!
//! Decided under the state lock; the hand-set state is written to the store outside it
//! and the publication applied after, checked again.

use super::*;
use crate::{AggregationRules, Clock, PresenceConfig};

/// One SERVICE `msrtc-category-publish+xml`, as parsed.
struct CategoryPublish<'a> {
    aor: &'a str,
    pubs: &'a [msrtc::publish::Publication],
    source: Flow,
    now: i64,
    config: &'a PresenceConfig,
    clock: Clock,
}

impl CategoryPublish<'_> {
    /// A category publication under the state lock. MS-PRES §3.7.5.4: all or nothing,
    /// every stale version named. Applied at once unless it changes the hand-set state
    /// and that is not written yet (`written`: what was).
    fn step(&self, st: &mut State, fetched: &mut Fetched<'_>, written: Option<HandSet>) -> Step {
        let (aor, req) = (self.aor, self);
        if !st.presentities.contains_key(aor)
            && crate::caps::full(&st.presentities, 1, req.config.max_presentities)
        {
            return Step::Done(crate::caps::full_answer());
        }
        let p = fetch::ensure(
            &mut st.presentities,
            fetched,
            aor,
            &req.config.rules,
            req.clock.now_ms(),
        );
        let stale = p.lync.stale(req.pubs);
        if !stale.is_empty() {
            let mut a = ServiceAnswer::status(409);
            a.body = Some((
                "application/msrtc-fault+xml".into(),
                bytes::Bytes::from(msrtc::publish::wrong_delta_fault(&stale).into_bytes()),
            ));
            return Step::Done(a);
        }
        let hand_set = match written {
            Some(h) => Some(h),
            None => match hand_set_change(p, req.pubs, req.now) {
                Some(h) => return Step::Write(h),
                None => None,
            },
        };
        Step::Done(self.apply(st, hand_set))
    }

    /// Keeps the published instances (their versions checked), and the hand-set state
    /// already written to the store; the 200 carries the roaming data.
    fn apply(&self, st: &mut State, hand_set: Option<HandSet>) -> ServiceAnswer {
        let (aor, now, req) = (self.aor, self.now, self);
        let p = st.presentities.get_mut(aor).expect("ensured");
        let flows = p.lync.apply(req.pubs, req.source.connection(), now);
        rebuild_devices(p, now);
        match hand_set {
            Some(HandSet::Set(m)) => {
                p.stored.manual = Some(m);
                p.lync.client_manual_at = Some(now);
            }
            Some(HandSet::Clear) => p.stored.manual = None,
            None => {}
        }
        let key: Arc<str> = st
            .presentities
            .get_key_value(aor)
            .map(|(k, _)| k.clone())
            .expect("ensured");
        for f in flows {
            st.lync_flows.record(f, &key);
        }
        st.reaggregate(aor, &req.config.rules, req.clock.now_ms());
        st.notifier.kick_own(&mut st.presentities, aor);
        // The 200 carries the roaming data, so the client learns the new versions now.
        let (ctype, body) = roaming_self_body(&st.presentities, &st.notifier, aor);
        let mut a = ServiceAnswer::status(200);
        a.body = Some((ctype, bytes::Bytes::from(body.into_bytes())));
        a
    }
}

/// What a category publication does to the hand-set state.
enum HandSet {
    Set(ManualState),
    Clear,
}

/// Where a category publication stands after a look under the lock.
enum Step {
    Done(ServiceAnswer),
    /// The hand-set state must be written to the store first (outside the lock).
    Write(HandSet),
}

/// The hand-set state is the user's, kept with `presence set`'s: a client that signs in
/// publishes "available" by hand, which must not undo a state set elsewhere, so only a
/// change away from its own earlier state counts.
fn hand_set_change(
    p: &Presentity,
    pubs: &[msrtc::publish::Publication],
    now: i64,
) -> Option<HandSet> {
    let had_user_state = p.lync.categories.iter().any(|c| {
        c.aggregation_state()
            .is_some_and(|s| s.kind == StateKind::User)
    });
    let mut user_state: Option<Option<Band>> = None;
    for x in pubs.iter().filter(|x| x.container == 2) {
        if let Some(s) = msrtc::publish::read_state(x).filter(|s| s.kind == StateKind::User) {
            user_state = Some(if x.remove {
                None
            } else {
                s.availability.map(band)
            });
        }
    }
    match user_state {
        Some(Some(b)) if b != Band::Available => {
            let token = match availability_of(b) {
                Availability::Busy => "busy",
                Availability::DoNotDisturb => "dnd",
                Availability::BeRightBack => "brb",
                Availability::Offline => "offline",
                _ => "away",
            };
            Some(HandSet::Set(ManualState {
                availability: token.into(),
                note: None,
                until_ms: None,
                set_at_ms: now,
            }))
        }
        Some(_) if had_user_state => Some(HandSet::Clear),
        _ => None,
    }
}

impl LyncData {
    /// The instances of `pubs` whose version is not the one held (MS-PRES §3.7.5.4,
    /// `WrongDelta`): each as (its position from 1, the version held).
    fn stale(&self, pubs: &[msrtc::publish::Publication]) -> Vec<(usize, u32)> {
        pubs.iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let cur = self.categories.iter().find(|c| {
                    c.cat.name == x.category
                        && c.cat.instance == x.instance
                        && c.cat.container == x.container
                })?;
                (cur.cat.version != x.version).then_some((i + 1, cur.cat.version))
            })
            .collect()
    }

    /// Keeps the published instances (their versions checked): `endpoint` instances
    /// are tied to `connection`, the one they came over. The connections the user's
    /// endpoint instances now ride on.
    fn apply(
        &mut self,
        pubs: &[msrtc::publish::Publication],
        connection: Option<Connection>,
        now: i64,
    ) -> Vec<Connection> {
        for x in pubs {
            let pos = self.categories.iter().position(|c| {
                c.cat.name == x.category
                    && c.cat.instance == x.instance
                    && c.cat.container == x.container
            });
            if x.remove {
                if let Some(i) = pos {
                    self.categories.remove(i);
                }
                continue;
            }
            let version = pos.map(|i| self.categories[i].cat.version + 1).unwrap_or(1);
            let stored = StoredCategory {
                cat: Category {
                    name: x.category.clone(),
                    instance: x.instance,
                    container: x.container,
                    version,
                    expire_type: x.expire_type.clone(),
                    publish_time: crate::pidf::fmt_rfc3339(now),
                    payload: x.payload.clone(),
                },
                flow: (x.expire_type == "endpoint")
                    .then_some(connection)
                    .flatten(),
                state: msrtc::publish::read_state(x),
                note: msrtc::publish::read_note(x),
            };
            match pos {
                Some(i) => self.categories[i] = stored,
                None => self.categories.push(stored),
            }
        }
        self.version += 1;
        self.categories.iter().filter_map(|c| c.flow).collect()
    }

    /// The endpoint on connection `id` is gone, and its `endpoint` instances with it
    /// (MS-PRES §3.7.5.1); whether it was the user's last endpoint.
    fn drop_flow(&mut self, id: Connection) -> bool {
        self.categories.retain(|c| c.flow != Some(id));
        self.version += 1;
        !self.categories.iter().any(|c| c.flow.is_some())
    }

    /// The devices the user's Lync endpoints stand for, from their machine states.
    fn endpoint_devices(&self, now: i64) -> Vec<DeviceState> {
        let note = self
            .categories
            .iter()
            .filter(|c| c.cat.container == 200)
            .find_map(|c| c.note.as_ref().map(|(text, _)| text.clone()));
        let on_phone = self.categories.iter().any(|c| {
            c.aggregation_state().is_some_and(|s| {
                s.kind == StateKind::Phone && s.activity.as_deref() == Some("on-the-phone")
            })
        });
        let mut devices = Vec::new();
        for c in &self.categories {
            let Some(state) = c
                .aggregation_state()
                .filter(|s| s.kind == StateKind::Machine)
            else {
                continue;
            };
            let mut d = DeviceState::new(
                format!("{DEVICE_PREFIX}{}", c.cat.instance),
                availability_of(band(state.availability.unwrap_or(18500))),
                now,
            );
            if let Some(a) = state.activity.as_deref().and_then(activity_of) {
                d.activities.push(a);
            }
            if on_phone {
                d.activities.push(Activity::InACall);
            }
            d.note = note.clone();
            devices.push(d);
        }
        devices
    }
}

/// Puts the devices a user's Lync endpoints stand for in their publications.
fn rebuild_devices(p: &mut Presentity, now: i64) {
    let devices = p.lync.endpoint_devices(now);
    p.publications.set_devices(DEVICE_PREFIX, devices);
}

impl PresenceService {
    pub(super) async fn publish_categories(
        &self,
        msg: &Message,
        aor: &str,
        source: Flow,
    ) -> ServiceAnswer {
        let pubs = match msrtc::publish::parse_publish(&msg.body) {
            Ok(p) => p,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        if pubs.len() > 256 {
            return with_warning(413, "too many publications in one request");
        }
        let req = CategoryPublish {
            aor,
            pubs: &pubs,
            source,
            now: self.now_ms(),
            config: &self.config,
            clock: self.clock,
        };
        let aors = [aor.to_owned()];
        let first = self
            .with_presentities(&aors, |st, fetched| req.step(st, fetched, None))
            .await;
        let hand_set = match first {
            Ok(Step::Done(answer)) => return answer,
            Ok(Step::Write(h)) => h,
            Err(e) => return fetch::unavailable(&e),
        };
        // The hand-set state is the user's, kept with `presence set`'s, in the store: it
        // is written (outside the lock) before anything is applied, so a write that
        // fails changes nothing and the client may send the same versions again.
        let written = match &hand_set {
            HandSet::Set(m) => self.presence.set_manual(bare(aor), m).await,
            HandSet::Clear => self
                .presence
                .clear_manual(bare(aor), req.now)
                .await
                .map(|_| ()),
        };
        if let Err(e) = written {
            return fetch::unavailable(&e);
        }
        // Checked again under the lock: another publication may have come first.
        let second = self
            .with_presentities(&aors, |st, fetched| req.step(st, fetched, Some(hand_set)))
            .await;
        match second {
            Ok(Step::Done(answer)) => answer,
            Ok(Step::Write(_)) => unreachable!("the hand-set state was written"),
            Err(e) => fetch::unavailable(&e),
        }
    }

    pub(super) async fn set_subscribers(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let users = match msrtc::publish::parse_set_subscribers(&msg.body) {
            Ok(u) => u,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        let applied = self
            .with_presentities(&[aor.to_owned()], |st, fetched| {
                if !st.presentities.contains_key(aor) && self.full(st, 1) {
                    return crate::caps::full_answer();
                }
                let p = self.ensure(st, fetched, aor);
                for u in users.into_iter().take(1000) {
                    p.lync.acknowledged.insert(u);
                }
                st.notifier.kick_own(&mut st.presentities, aor);
                ServiceAnswer::status(200)
            })
            .await;
        applied.unwrap_or_else(|e| fetch::unavailable(&e))
    }

    /// An endpoint's connection closed: its endpoint instances (and the device they
    /// stand for) are gone (MS-PRES §3.7.5.1: `expireType="endpoint"`).
    pub(crate) fn lync_flow_closed(&self, id: Connection) {
        let now = self.now_ms();
        let cleared = {
            let mut guard = self.state.lock();
            endpoint_gone(&mut guard, id, &self.config.rules, now)
        };
        if cleared.is_empty() {
            return;
        }
        // Written outside the lock, off the transport's path.
        let presence = self.presence.clone();
        tokio::spawn(async move {
            for addr in cleared {
                if let Err(e) = presence.clear_manual(&addr, now).await {
                    tracing::warn!(error = %e, "cannot clear the hand-set state");
                }
            }
        });
    }
}

/// Connection `id` closed: the endpoint instances it carried go, and with them the
/// devices they stood for. A hand-set state the user's last endpoint set goes too (as in
/// Lync, signing out of the last one shows offline whatever was set): the users whose
/// stored hand-set state is to be cleared (outside the lock).
fn endpoint_gone(
    st: &mut State,
    id: Connection,
    rules: &AggregationRules,
    now: i64,
) -> Vec<String> {
    let Some(owners) = st.lync_flows.take(id) else {
        return Vec::new();
    };
    let mut cleared = Vec::new();
    for aor in owners {
        let Some(p) = st.presentities.get_mut(&*aor) else {
            continue;
        };
        let last_endpoint = p.lync.drop_flow(id);
        rebuild_devices(p, now);
        let clients_state = p.lync.client_manual_at.is_some()
            && p.stored.manual.as_ref().map(|m| m.set_at_ms) == p.lync.client_manual_at;
        if last_endpoint && clients_state {
            // Set by the client that just left (not since replaced by `presence set`).
            p.lync.client_manual_at = None;
            p.stored.manual = None;
            cleared.push(bare(&aor).to_owned());
        }
        st.reaggregate(&aor, rules, now);
        st.notifier.kick_own(&mut st.presentities, &aor);
    }
    cleared
}
