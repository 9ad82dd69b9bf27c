//! `vnd-microsoft-roaming-self` (MS-PRES §3.7.4, §2.2.2): the owner's own instances, the
//! aggregate, the containers (the relationships of the contact list) and watchers; and
//! `setContainerMembers`, which places users in containers (written to the contact data
//! outside the lock, then the owner's endpoints told).

use super::*;
use crate::notifier::Notifier;
use crate::Presentities;

/// The owner's roaming data.
pub(crate) fn roaming_self_body(
    ps: &Presentities,
    notifier: &Notifier,
    aor: &str,
) -> (String, String) {
    let Some(p) = ps.get(aor) else {
        return (
            ROAMING_SELF.into(),
            msrtc::categories::roaming_self(aor, &[], &[], &[]),
        );
    };
    let own = crate::view_of(aor, p, aor);
    let version = p.lync.version.max(1);
    let mut cats: Vec<Category> = p.lync.categories.iter().map(|c| c.cat.clone()).collect();
    let snap = snapshot(&own, version);
    cats.push(msrtc::categories::state_category(&snap, 2));
    // Containers: the defaults every user has (colleagues inside the domain,
    // external outside), then each contact in the container of its relationship.
    let mut containers = vec![
        Container {
            id: 100,
            version,
            members: vec![("federated".into(), None)],
        },
        Container {
            id: 200,
            version,
            members: vec![("sameEnterprise".into(), None)],
        },
        Container {
            id: 300,
            version,
            members: Vec::new(),
        },
        Container {
            id: 400,
            version,
            members: Vec::new(),
        },
        Container {
            id: 32000,
            version,
            members: Vec::new(),
        },
    ];
    for c in &p.contacts.contacts {
        let id = container_of(Audience::Watcher(c.relationship));
        if let Some(container) = containers.iter_mut().find(|x| x.id == id) {
            container
                .members
                .push(("user".into(), Some(c.contact.clone())));
        }
    }
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for wid in &p.watchers {
        let Some(w) = notifier.get(wid) else {
            continue;
        };
        let user = bare(&w.watcher).to_owned();
        if *w.watcher == *aor || subscribers.iter().any(|s| s.user == user) {
            continue;
        }
        subscribers.push(Subscriber {
            acknowledged: p.relationship_of(&w.watcher).is_some()
                || p.lync.acknowledged.contains(&user),
            same_enterprise: domain_of(&w.watcher) == domain_of(aor),
            display_name: None,
            user,
        });
    }
    (
        ROAMING_SELF.into(),
        msrtc::categories::roaming_self(aor, &cats, &containers, &subscribers),
    )
}

impl PresenceService {
    /// MS-PRES §3.7.4: users placed in containers are given that relationship.
    pub(super) async fn set_container_members(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let changes = match msrtc::publish::parse_set_container_members(&msg.body) {
            Ok(c) => c,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        let now = self.now_ms();
        let owner = bare(aor);
        for c in changes.iter().filter(|c| c.kind == "user") {
            let Some(user) = c
                .value
                .as_deref()
                .map(|v| v.strip_prefix("sip:").unwrap_or(v))
            else {
                continue;
            };
            let default = Audience::default_for(domain_of(aor), domain_of(user));
            let rel = match (c.add, relationship_of(c.container)) {
                (true, Some(r)) => r,
                (true, None) => continue,
                // Taken out of a container: back to what the domains imply.
                (false, _) => default,
            };
            // A relationship, not a place on the list (MS-PRES §3.7.4.1).
            if let Err(e) = self
                .contacts
                .set_relationship(owner, user, rel, default, now)
                .await
            {
                return fetch::unavailable(&e);
            }
        }
        // Other member types (sameEnterprise, federated, …) are what our defaults are.
        self.reload(aor).await;
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.notifier.kick_own(&mut st.presentities, aor);
        ServiceAnswer::status(200)
    }
}
