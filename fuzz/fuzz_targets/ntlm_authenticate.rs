//! Any bytes as an NTLM AUTHENTICATE (the gssapi-data of a Lync REGISTER): parsing and
//! checking against a challenge and an NT hash refuse or accept, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(auth) = ntlm::AuthenticateMessage::parse(data) {
        let _ = ntlm::accept(&auth, &[1, 2, 3, 4, 5, 6, 7, 8], &ntlm::nt_hash("pw"));
    }
});
