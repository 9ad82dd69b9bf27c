//! `vnd-microsoft-provisioning-v2` (MS-SIP §2.2.2.4): the server configuration a Lync
//! client reads once after sign-in. Only what a chat-and-presence server offers is
//! written; clients treat absent entries as features that are not there.

use crate::escape;

/// The server configuration group; `focus_factory` is the conferencing focus factory's
/// URI when conferences are offered.
pub fn provisioning(focus_factory: Option<&str>) -> String {
    let mut s = String::from(
        "<provisionGroupList xmlns=\"http://schemas.microsoft.com/2006/09/sip/provisiongrouplist-notification\"><provisionGroup name=\"ServerConfiguration\">",
    );
    if let Some(f) = focus_factory {
        s.push_str(&format!("<focusFactoryUri>{}</focusFactoryUri>", escape(f)));
    }
    s.push_str("</provisionGroup><provisionGroup name=\"meetingPolicy\"><meetingPolicy><property name=\"AllowIPAudio\">false</property><property name=\"AllowIPVideo\">false</property></meetingPolicy></provisionGroup></provisionGroupList>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree;

    #[test]
    fn names_the_focus_factory() {
        let doc = provisioning(Some(
            "sip:alice@example.test;gruu;opaque=app:conf:focusfactory",
        ));
        let root = tree::parse(doc.as_bytes()).unwrap();
        let group = root.child("provisionGroup").unwrap();
        assert_eq!(group.attr("name"), Some("ServerConfiguration"));
        assert_eq!(
            group.text_at("focusFactoryUri"),
            Some("sip:alice@example.test;gruu;opaque=app:conf:focusfactory")
        );
        assert!(tree::parse(provisioning(None).as_bytes())
            .unwrap()
            .child("provisionGroup")
            .unwrap()
            .child("focusFactoryUri")
            .is_none());
    }
}
