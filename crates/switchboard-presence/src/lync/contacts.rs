//! `vnd-microsoft-roaming-contacts` (MS-SIP §2.2.3): the stored contact list as a Lync
//! client numbers it, sent whole then as deltas, and the SOAP edits that change it
//! (written to the contact data outside the lock, then re-read and its watchers told).

use super::*;
use crate::notifier::Subscription;
use crate::Presentities;
use switchboard_core::ContactData;

/// The owner's contact list as a Lync client numbers it: the default group `~` is 1,
/// stored groups are their id + 1.
fn lync_contact_list(ps: &Presentities, owner: &str) -> msrtc::contacts::List {
    let Some(p) = ps.get(owner) else {
        return msrtc::contacts::List {
            delta: 1,
            groups: Vec::new(),
            contacts: Vec::new(),
        };
    };
    // The groups as read with the list (read again whenever the list changes).
    let groups = &p.groups;
    let id_of = |name: &str| {
        groups
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id as u32 + 1)
    };
    let mut list_groups = vec![msrtc::contacts::Group {
        id: 1,
        name: "~".into(),
    }];
    list_groups.extend(groups.iter().map(|(id, name)| msrtc::contacts::Group {
        id: *id as u32 + 1,
        name: name.clone(),
    }));
    let contacts = p
        .contacts
        .contacts
        .iter()
        .filter(|c| c.listed)
        .map(|c| {
            let mut ids: Vec<u32> = c.groups.iter().filter_map(|g| id_of(g)).collect();
            if ids.is_empty() {
                ids.push(1);
            }
            msrtc::contacts::Contact {
                uri: c.contact.clone(),
                name: None,
                groups: ids,
            }
        })
        .collect();
    msrtc::contacts::List {
        delta: p.contacts.version as u64 + 1,
        groups: list_groups,
        contacts,
    }
}

/// The next roaming-contacts document for subscription `s`, recorded as sent: the
/// whole list first, then deltas; `None` when the list has not changed since.
pub(crate) fn next_contacts_document(
    ps: &Presentities,
    s: &mut Subscription,
) -> Option<(String, String)> {
    let now = lync_contact_list(ps, &s.resource);
    let body = match s.sent_contacts.as_deref() {
        Some(old) => msrtc::contacts::contact_delta(old, &now)?,
        None => msrtc::contacts::contact_list(&now),
    };
    s.sent_contacts = Some(Box::new(now));
    Some((ROAMING_CONTACTS.into(), body))
}

/// The whole contact list (what a subscription's last NOTIFY carries).
pub(crate) fn contacts_document(ps: &Presentities, owner: &str) -> (String, String) {
    let list = lync_contact_list(ps, owner);
    (
        ROAMING_CONTACTS.into(),
        msrtc::contacts::contact_list(&list),
    )
}

impl PresenceService {
    /// SOAP contact-list edits (MS-SIP §2.2.3); watchers of the list hear the delta.
    pub(super) async fn contact_edit(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let edit = match msrtc::contacts::parse_edit(&msg.body) {
            Ok(e) => e,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        if let msrtc::contacts::Edit::SetContact { uri, .. } = &edit {
            // Lync's MaxContacts: a contact list the user's list subscriptions could not
            // watch whole is not let grow (changing a contact already on it always works).
            let cap = self.config.max_list_entries_per_user;
            match self.contacts.contact_list(bare(aor)).await {
                Ok(list) => {
                    let listed: Vec<&str> = list
                        .contacts
                        .iter()
                        .filter(|c| c.listed)
                        .map(|c| c.contact.as_str())
                        .collect();
                    if !listed.contains(&uri.as_str()) && listed.len() >= cap {
                        return with_warning(
                            403,
                            &format!("too many contacts for this user (at most {cap})"),
                        );
                    }
                }
                Err(e) => return fetch::unavailable(&e),
            }
        }
        match apply_edit(self.contacts.as_ref(), &edit, aor, self.now_ms()).await {
            Ok(answer) => {
                self.reload(aor).await;
                let mut guard = self.state.lock();
                let st = &mut *guard;
                st.notifier
                    .kick_own_kinds(&mut st.presentities, aor, &[Kind::RoamingContacts]);
                let mut a = ServiceAnswer::status(200);
                if let Some(body) = answer {
                    a.body = Some((
                        "application/SOAP+xml".into(),
                        bytes::Bytes::from(body.into_bytes()),
                    ));
                }
                a
            }
            Err(e) => fetch::unavailable(&e),
        }
    }
}

/// Carries out one contact-list edit; the answer body, for `addGroup`.
async fn apply_edit(
    contacts: &dyn ContactData,
    edit: &msrtc::contacts::Edit,
    aor: &str,
    now: i64,
) -> Result<Option<String>, DataError> {
    use msrtc::contacts::Edit;
    let owner = bare(aor);
    // Client group ids are stored ids + 1 (1 is the default group).
    let stored = |id: u32| id as i64 - 1;
    match edit {
        Edit::SetContact { uri, groups, .. } => {
            let default = Audience::default_for(domain_of(aor), domain_of(uri));
            contacts
                .add_contact(owner, uri, None, None, default, now)
                .await?;
            let ids: Vec<i64> = groups
                .iter()
                .filter(|i| **i > 1)
                .map(|i| stored(*i))
                .collect();
            contacts.set_contact_groups(owner, uri, &ids, now).await?;
            Ok(None)
        }
        Edit::DeleteContact { uri } => {
            contacts.remove_contact(owner, uri, now).await?;
            Ok(None)
        }
        Edit::AddGroup { name } => {
            let id = contacts.add_group(owner, name, now).await?;
            Ok(Some(msrtc::contacts::add_group_answer(id as u32 + 1)))
        }
        Edit::ModifyGroup { id, name } => {
            contacts.rename_group(owner, stored(*id), name, now).await?;
            Ok(None)
        }
        Edit::DeleteGroup { id } => {
            contacts.delete_group(owner, stored(*id), now).await?;
            Ok(None)
        }
    }
}
