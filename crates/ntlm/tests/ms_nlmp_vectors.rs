//! MS-NLMP §4.2.4 (NTLMv2 authentication) worked example: User "User", domain "Domain",
//! password "Password", server challenge 0123456789abcdef, client challenge aa…aa, time 0,
//! random session key 55…55, and the GSS_WrapEx of "Plaintext" (§4.2.4.4).

use ntlm::{accept, flags, nt_hash, ntowf_v2, AuthenticateMessage, NtlmError, Session};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

const FLAGS: u32 = flags::KEY_EXCH
    | flags::NEGOTIATE_56
    | flags::NEGOTIATE_128
    | flags::VERSION
    | flags::TARGET_INFO
    | flags::EXTENDED_SESSION_SECURITY
    | 0x0002_0000 // TARGET_TYPE_SERVER
    | flags::ALWAYS_SIGN
    | flags::NTLM
    | flags::SEAL
    | flags::SIGN
    | 0x0000_0002 // OEM
    | flags::UNICODE;

/// §4.2.4.2.2: NTProofStr followed by the client blob (time 0, challenge aa…, the
/// server's target info "Domain"/"Server", and the trailing zero words).
fn nt_response() -> Vec<u8> {
    h("68cd0ab851e51c96aabc927bebef6a1c 0101000000000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000
       02000c0044006f006d00610069006e00 01000c00530065007200760065007200 0000000000000000")
}

fn authenticate() -> AuthenticateMessage {
    AuthenticateMessage {
        flags: FLAGS,
        lm_response: h("86c35097ac9cec102554764a57cccc19 aaaaaaaaaaaaaaaa"),
        nt_response: nt_response(),
        domain: "Domain".into(),
        user: "User".into(),
        workstation: "COMPUTER".into(),
        encrypted_random_session_key: h("c5dad2544fc9799094ce1ce90bc9d03e"),
    }
}

const CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

#[test]
fn one_way_functions() {
    let nt = nt_hash("Password");
    assert_eq!(
        nt.to_vec(),
        h("a4f49c406510bdcab6824ee7c30fd852"),
        "§4.2.2.1.2"
    );
    assert_eq!(
        ntowf_v2(&nt, "User", "Domain").to_vec(),
        h("0c868a403bfd7a93a3001ef22ef02e3f"),
        "§4.2.4.1.1"
    );
}

#[test]
fn accepts_the_worked_example_and_unwraps_the_session_key() {
    let s = accept(&authenticate(), &CHALLENGE, &nt_hash("Password")).unwrap();
    // §4.2.4.2.3: EncryptedRandomSessionKey unwraps to the random session key 55…55.
    assert_eq!(s.exported_session_key, [0x55; 16]);
}

#[test]
fn refuses_a_wrong_password_a_changed_challenge_and_ntlmv1() {
    let auth = authenticate();
    assert_eq!(
        accept(&auth, &CHALLENGE, &nt_hash("password")).err(),
        Some(NtlmError::WrongPassword)
    );
    let mut other = CHALLENGE;
    other[0] ^= 1;
    assert_eq!(
        accept(&auth, &other, &nt_hash("Password")).err(),
        Some(NtlmError::WrongPassword)
    );
    let mut v1 = auth.clone();
    v1.nt_response.truncate(24);
    assert_eq!(
        accept(&v1, &CHALLENGE, &nt_hash("Password")).err(),
        Some(NtlmError::NotV2)
    );
}

#[test]
fn gss_wrap_ex_signature() {
    // §4.2.4.4: sealing key 59f6…, signing key 4788…, "Plaintext" sealed and signed.
    let s = Session::from_exported_key(FLAGS, [0x55; 16]);
    let plaintext: Vec<u8> = "Plaintext"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let (sealed, sig) = s.wrap_client_connection_mode(0, &plaintext);
    assert_eq!(sealed, h("54e50165bf1936dc996020c1811b0f06fb5f"));
    assert_eq!(sig.to_vec(), h("010000007fb38ec5c55d497600000000"));
}

#[test]
fn garbage_is_refused_not_panicked_on() {
    for bad in [&b""[..], b"NTLMSSP\0", b"NTLMSSP\0\x03\0\0\0", &[0xff; 200]] {
        assert!(AuthenticateMessage::parse(bad).is_err());
    }
    // A header whose buffers point outside the message.
    let mut m = b"NTLMSSP\0\x03\0\0\0".to_vec();
    m.resize(64, 0);
    m[20] = 0x40; // NT response length 64 ...
    m[24] = 0xf0; // ... at offset 240
    assert!(AuthenticateMessage::parse(&m).is_err());
}

/// The client side computes the spec's responses from the spec's inputs, and what it
/// sends, our server accepts; then each side verifies the other's signatures.
#[test]
fn client_reproduces_the_example_and_round_trips_with_the_server() {
    use ntlm::client::{authenticate as client_authenticate, Challenge, Credentials};
    let target_info =
        h("02000c0044006f006d00610069006e00 01000c00530065007200760065007200 00000000");
    let ch = Challenge {
        flags: FLAGS,
        server_challenge: CHALLENGE,
        target_info,
    };
    let creds = Credentials {
        user: "User",
        domain: "Domain",
        workstation: "COMPUTER",
        nt_hash: nt_hash("Password"),
        client_challenge: [0xaa; 8],
        timestamp: 0,
        random_session_key: [0x55; 16],
    };
    let (msg, bytes, client) = client_authenticate(&ch, &creds);
    assert_eq!(msg.nt_response, nt_response(), "§4.2.4.2.2");
    assert_eq!(msg.lm_response, authenticate().lm_response, "§4.2.4.2.1");
    assert_eq!(
        msg.encrypted_random_session_key,
        authenticate().encrypted_random_session_key
    );

    let parsed = AuthenticateMessage::parse(&bytes).unwrap();
    assert_eq!(parsed, msg);
    let server = accept(&parsed, &CHALLENGE, &nt_hash("Password")).unwrap();
    let text = b"<NTLM><0a1b2c3d><1><SIP Communications Service>";
    assert!(server.verify(text, &client.client_signature(100, text)));
    assert!(!server.verify(b"<NTLM><0a1b2c3d><2>", &client.client_signature(100, text)));
    // A client checks the server's signature the same way.
    assert_eq!(server.sign(100, text), client.sign(100, text));
}

/// Our CHALLENGE, read back by the client side.
#[test]
fn challenge_round_trip() {
    let target = ntlm::TargetInfo {
        netbios_domain: "EXAMPLE".into(),
        netbios_computer: "FE1".into(),
        dns_domain: "example.com".into(),
        dns_computer: "fe1.example.com".into(),
    };
    let m = ntlm::challenge_message([9; 8], &target);
    let ch = ntlm::client::Challenge::parse(&m).unwrap();
    assert_eq!(ch.server_challenge, [9; 8]);
    assert_eq!(ch.flags, ntlm::SERVER_FLAGS);
    assert!(ch.target_info.ends_with(&[0, 0, 0, 0]));
}
