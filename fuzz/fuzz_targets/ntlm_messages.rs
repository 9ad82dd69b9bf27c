//! Every NTLM reader of crates/ntlm on arbitrary input, beyond ntlm_authenticate:
//!
//! - mode 0, AUTHENTICATE bytes: parsing refuses or gives fields that encode and parse
//!   back to themselves; checked against the challenge and password of the captured
//!   pidgin-sipe sign-in (so the captured message, a seed, is accepted and its mutations
//!   explore the checks): an accepted proof is bound to its server challenge (the same
//!   message under any other challenge is refused), and the session it yields verifies
//!   its own client signatures and refuses altered ones;
//! - mode 1, CHALLENGE bytes: `client::Challenge::parse` refuses or reads; and a CHALLENGE
//!   we build from input-chosen names reads back with its challenge, flags and AV pairs;
//! - mode 2, a signature (16 bytes) and a message under a session of input-chosen flags
//!   and key: `Session::verify` accepts exactly the client's signature with the sequence
//!   number it carries, and the real signature verifies;
//! - mode 3, a whole sign-in with input-chosen user, domain, password, random values:
//!   the client's AUTHENTICATE parses to what it built, the server accepts it with the
//!   right NT hash and derives the client's exported key (signatures cross-verify), and
//!   refuses it with another password.
//!
//! There is no NEGOTIATE reader: connectionless NTLM (MS-NLMP §3.1.5.2) has none.
#![no_main]
use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ntlm::{accept, client, flags, nt_hash, AuthenticateMessage, NtlmError, Session, TargetInfo};

const CHALLENGE: &str = "TlRMTVNTUAACAAAADgAOADgAAABVgpnibyljPLj+AW0AAAAAAAAAAGQAZABGAAAABgGxHQAAAA9FAFgAQQBNAFAATABFAAIADgBFAFgAQQBNAFAATABFAAEACABMAFkATgBDAAQAGABlAHgAYQBtAHAAbABlAC4AdABlAHMAdAADACIAbAB5AG4AYwAuAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAAAAAA=";

fn captured_challenge() -> &'static [u8; 8] {
    static C: OnceLock<[u8; 8]> = OnceLock::new();
    C.get_or_init(|| {
        let b = base64::engine::general_purpose::STANDARD.decode(CHALLENGE).unwrap();
        b[24..32].try_into().unwrap()
    })
}

fn alice() -> &'static [u8; 16] {
    static H: OnceLock<[u8; 16]> = OnceLock::new();
    H.get_or_init(|| nt_hash("pw-alice"))
}

/// A session's signatures: its own verify, altered ones refused.
fn check_session(s: &Session, msg: &[u8], seq: u32) {
    let sig = s.client_signature(seq, msg);
    assert!(s.verify(msg, &sig));
    for i in 0..16 {
        let mut bad = sig;
        bad[i] ^= 0x01;
        assert!(!s.verify(msg, &bad), "altered byte {i} verified");
    }
    let mut longer = msg.to_vec();
    longer.push(0);
    assert!(!s.verify(&longer, &sig), "the signature covers the whole message");
}

fn authenticate(m: &[u8]) {
    let Ok(auth) = AuthenticateMessage::parse(m) else { return };
    // The fields encode (always Unicode) and read back to themselves.
    let again = AuthenticateMessage::parse(&auth.encode()).expect("encoded AUTHENTICATE parses");
    assert_eq!(again, AuthenticateMessage { flags: auth.flags | flags::UNICODE, ..auth.clone() });
    let ch = captured_challenge();
    match accept(&auth, ch, alice()) {
        Ok(session) => {
            let mut other = *ch;
            other[0] ^= 0x80;
            assert_eq!(accept(&auth, &other, alice()).err(), Some(NtlmError::WrongPassword), "proof not bound to the challenge");
            assert_eq!(accept(&auth, ch, &nt_hash("pw-alicE")).err(), Some(NtlmError::WrongPassword));
            check_session(&session, m, 100);
        }
        Err(_) => {}
    }
    let _ = accept(&auth, &[0; 8], &nt_hash(""));
}

/// The AV pairs (MS-NLMP §2.2.2.1) of a target info block, up to MsvAvEOL.
fn av_pairs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        assert!(b.len() >= 4, "AV pairs end without MsvAvEOL");
        let id = u16::from_le_bytes([b[0], b[1]]);
        let len = u16::from_le_bytes([b[2], b[3]]) as usize;
        if id == 0 {
            assert_eq!(len, 0);
            return out;
        }
        out.push((id, b[4..4 + len].to_vec()));
        b = &b[4 + len..];
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn challenge(m: &[u8]) {
    if let Ok(c) = client::Challenge::parse(m) {
        assert_eq!(&c.server_challenge[..], &m[24..32]);
    }
    // One we build from names the input chooses.
    let mut u = Unstructured::new(m);
    let Ok((sc, a, b, c, d)) = <([u8; 8], String, String, String, String)>::arbitrary(&mut u) else { return };
    let target = TargetInfo { netbios_domain: a, netbios_computer: b, dns_domain: c, dns_computer: d };
    let built = ntlm::challenge_message(sc, &target);
    let read = client::Challenge::parse(&built).expect("our CHALLENGE parses");
    assert_eq!(read.server_challenge, sc);
    assert_eq!(read.flags, ntlm::SERVER_FLAGS);
    let pairs = av_pairs(&read.target_info);
    assert_eq!(
        pairs,
        vec![
            (2, utf16(&target.netbios_domain)),
            (1, utf16(&target.netbios_computer)),
            (4, utf16(&target.dns_domain)),
            (3, utf16(&target.dns_computer)),
        ]
    );
}

fn signature(m: &[u8]) {
    let mut u = Unstructured::new(m);
    let Ok((fl, key, sig)) = <(u32, [u8; 16], [u8; 16])>::arbitrary(&mut u) else { return };
    let msg = u.take_rest();
    let s = Session::from_exported_key(fl, key);
    let seq = u32::from_le_bytes([sig[12], sig[13], sig[14], sig[15]]);
    assert_eq!(s.verify(msg, &sig), s.client_signature(seq, msg) == sig);
    assert!(!s.verify(msg, &sig[..15]));
    check_session(&s, msg, seq);
    assert_eq!(s.sign(seq, msg), s.sign(seq, msg), "signing is deterministic");
}

fn sign_in(m: &[u8]) {
    let mut u = Unstructured::new(m);
    let Ok((user, domain, workstation, password, client_challenge, timestamp, random_session_key, server_challenge, names)) =
        <(String, String, String, String, [u8; 8], u64, [u8; 16], [u8; 8], (String, String))>::arbitrary(&mut u)
    else {
        return;
    };
    let target = TargetInfo { netbios_domain: names.0.clone(), netbios_computer: String::new(), dns_domain: names.1, dns_computer: names.0 };
    let ch = client::Challenge::parse(&ntlm::challenge_message(server_challenge, &target)).expect("our CHALLENGE parses");
    let creds = client::Credentials {
        user: &user,
        domain: &domain,
        workstation: &workstation,
        nt_hash: nt_hash(&password),
        client_challenge,
        timestamp,
        random_session_key,
    };
    let (msg, bytes, client_session) = client::authenticate(&ch, &creds);
    let auth = AuthenticateMessage::parse(&bytes).expect("the client's AUTHENTICATE parses");
    assert_eq!(auth, AuthenticateMessage { flags: msg.flags | flags::UNICODE, ..msg });
    let server = accept(&auth, &server_challenge, &nt_hash(&password)).expect("the right password is accepted");
    assert_eq!(server.exported_session_key, client_session.exported_session_key);
    assert_eq!(server.exported_session_key, random_session_key, "key exchange recovers the client's key");
    let text = b"<NTLM><1><2><SIP Communications Service><t>";
    assert!(server.verify(text, &client_session.client_signature(100, text)));
    assert_eq!(server.sign(100, text), client_session.sign(100, text));
    let wrong = format!("{password}x");
    assert_eq!(accept(&auth, &server_challenge, &nt_hash(&wrong)).err(), Some(NtlmError::WrongPassword));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => authenticate(rest),
        1 => challenge(rest),
        2 => signature(rest),
        _ => sign_in(rest),
    }
});
