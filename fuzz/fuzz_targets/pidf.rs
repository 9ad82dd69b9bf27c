//! Any bytes as a PUBLISH body: the PIDF reader accepts or refuses, never panics. What it
//! accepts goes to every watcher: the note carries no character XML does not allow, and
//! a watcher's document rendered from what was read (with the note) is XML 1.0 and reads
//! back to the same availability band and note.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_presence::model::{Note, NoteKind};
use switchboard_presence::{pidf, Audience, View};

#[path = "../common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = pidf::parse(data, 1_700_000_000_000) else { return };
    assert!(p.note.as_deref().is_none_or(|n| !n.is_empty()));
    if let Some(n) = &p.note {
        assert!(common::xml_chars_ok(n), "a note XML cannot carry was read: {n:?}");
    }
    let view = View {
        entity: "sip:alice@example.test".into(),
        audience: Audience::Own,
        availability: p.availability,
        activities: p.activities.clone(),
        note: p.note.clone().map(|text| Note { text, kind: NoteKind::Personal }),
        meeting: None,
        out_of_office_until_ms: None,
        idle_since_ms: p.idle_since_ms,
        last_active_ms: None,
        card: Default::default(),
        devices: Vec::new(),
    };
    let doc = pidf::render(&view);
    assert!(common::xml_chars_ok(&doc), "not XML 1.0: {doc:?}");
    let again = pidf::parse(doc.as_bytes(), 1_700_000_000_000).expect("our document reads");
    assert_eq!(again.note, p.note);
    assert_eq!(again.availability.is_online(), p.availability.is_online());
});
