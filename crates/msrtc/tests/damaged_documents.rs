//! Every reader of the Lync documents takes damaged input (cut short anywhere, or with a
//! byte changed anywhere) and answers with an error or a value, never a panic: these
//! bodies come straight from the network.

use msrtc::{cccp, contacts, publish, tree};

const SAMPLES: &[&str] = &[
    r#"<publish xmlns="http://schemas.microsoft.com/2006/09/sip/rich-presence"><publications uri="sip:a@x"><publication categoryName="state" instance="1" container="2" version="0" expireType="endpoint"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="machineState"><availability>3500</availability></state></publication><publication categoryName="note" instance="0" container="200" version="1" expireType="static"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal" uri="">out &amp; about</body></note></publication></publications></publish>"#,
    r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:a@x" name=""><action name="subscribe" id="1"><adhocList><resource uri="sip:b@x"/></adhocList><categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="state"/></categoryList></action></batchSub>"#,
    r#"<setContainerMembers xmlns="http://schemas.microsoft.com/2006/09/sip/container-management"><container id="32000" version="3"><member action="add" type="user" value="e@x"/></container></setContainerMembers>"#,
    r#"<setSubscribers xmlns="x"><subscriber user="b@x" acknowledged="true"/></setSubscribers>"#,
    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:setContact xmlns:m="http://schemas.microsoft.com/winrtc/2002/11/sip"><m:displayName/><m:groups>1 2</m:groups><m:subscribed>true</m:subscribed><m:URI>b@x</m:URI><m:externalURI/><m:deltaNum>3</m:deltaNum></m:setContact></s:Body></s:Envelope>"#,
    r#"<?xml version="1.0"?><request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="sip:a@x" requestId="7"><addConference><ci:conference-info xmlns:ci="urn:ietf:params:xml:ns:conference-info" entity=""><ci:conference-description><ci:subject>S</ci:subject><msci:conference-id xmlns:msci="m">ID</msci:conference-id></ci:conference-description><msci:conference-view xmlns:msci="m"><msci:entity-view entity="chat"/></msci:conference-view></ci:conference-info></addConference></request>"#,
    r#"<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="a" requestId="5"><modifyUserRoles><userKeys confEntity="F" userEntity="sip:b@x"/><user-roles xmlns="urn:ietf:params:xml:ns:conference-info"><entry>presenter</entry></user-roles></modifyUserRoles></request>"#,
    r#"<Conferencing version="2.0"><focus-uri>sip:chat-1@x;gruu;opaque=app:conf:focus:id:1</focus-uri><subject>S</subject><im available="true"><first-im/></im></Conferencing>"#,
];

fn read_everything(body: &[u8]) {
    let _ = tree::parse(body);
    if let Ok(ps) = publish::parse_publish(body) {
        for p in &ps {
            let _ = publish::read_state(p);
            let _ = publish::read_note(p);
        }
    }
    let _ = publish::parse_batch_subscribe(body);
    let _ = publish::parse_set_container_members(body);
    let _ = publish::parse_set_subscribers(body);
    let _ = contacts::parse_edit(body);
    let _ = cccp::parse_request(body);
    let _ = cccp::parse_conf_invite(body);
}

#[test]
fn cut_short_anywhere() {
    for doc in SAMPLES {
        let b = doc.as_bytes();
        for n in 0..=b.len() {
            read_everything(&b[..n]);
        }
    }
}

#[test]
fn any_byte_changed() {
    // Characters that change structure: quotes, brackets, slashes, entities, NUL, a
    // stray UTF-8 lead byte.
    const INTO: &[u8] = b"<>\"'/&;=\0 \xc3:";
    for doc in SAMPLES {
        let b = doc.as_bytes();
        for i in 0..b.len() {
            for &x in INTO {
                let mut d = b.to_vec();
                d[i] = x;
                read_everything(&d);
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused() {
    let deep = "<a>".repeat(100_000);
    assert!(tree::parse(deep.as_bytes()).is_err());
    read_everything(deep.as_bytes());
}
