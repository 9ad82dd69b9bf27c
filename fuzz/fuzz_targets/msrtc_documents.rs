//! Every reader of the Lync dialect's documents (category publications, batched
//! subscriptions, container members, SOAP contact edits, C3P requests, conference
//! invitations) on arbitrary bytes: an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msrtc::{cccp, contacts, publish, tree};

fuzz_target!(|body: &[u8]| {
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
});
