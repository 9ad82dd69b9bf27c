//! # ntlm: the server side of connectionless NTLMv2
//!
//! What MS-SIPAE (Lync sign-in and message signing) needs from MS-NLMP, and no more:
//! - [`challenge_message`]: the CHALLENGE a server sends first (connectionless mode has
//!   no NEGOTIATE, MS-NLMP §3.1.5.2 / §3.2.5.2);
//! - [`AuthenticateMessage::parse`] and [`accept`]: the client's AUTHENTICATE, checked
//!   against the user's stored NT hash (NTLMv2 only, MS-NLMP §3.3.2: the NTProofStr must
//!   match — the password is never needed), then the session keys: key exchange
//!   (§3.4.5.1 KXKEY, RC4 unwrap of the exported session key) and the extended session
//!   security signing and sealing keys (§3.4.5.2 SIGNKEY, §3.4.5.3 SEALKEY);
//! - [`Session::sign`] / [`Session::verify`]: the MAC of §3.4.4.2 (HMAC-MD5 over the
//!   sequence number and message, first 8 bytes, RC4-sealed under key exchange). In
//!   connectionless (datagram) mode every message is sealed under its own key,
//!   MD5(SealingKey, SeqNum), with a fresh RC4 state, since messages may be lost or
//!   reordered (§3.4.5.3); MS-SIPAE clients use sequence number 100. Connection-mode
//!   (stateful RC4) signing is not offered: SIP never negotiates it.
//!
//! RC4 and the byte layouts are written here; MD4, MD5 and HMAC come from RustCrypto.
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

type HmacMd5 = Hmac<Md5>;

/// Negotiate flags (MS-NLMP §2.2.2.5) this crate sets or reads.
pub mod flags {
    pub const UNICODE: u32 = 0x0000_0001;
    pub const REQUEST_TARGET: u32 = 0x0000_0004;
    pub const SIGN: u32 = 0x0000_0010;
    pub const SEAL: u32 = 0x0000_0020;
    pub const DATAGRAM: u32 = 0x0000_0040;
    pub const NTLM: u32 = 0x0000_0200;
    pub const ALWAYS_SIGN: u32 = 0x0000_8000;
    pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
    pub const IDENTIFY: u32 = 0x0010_0000;
    pub const EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
    pub const TARGET_INFO: u32 = 0x0080_0000;
    pub const VERSION: u32 = 0x0200_0000;
    pub const NEGOTIATE_128: u32 = 0x2000_0000;
    pub const KEY_EXCH: u32 = 0x4000_0000;
    pub const NEGOTIATE_56: u32 = 0x8000_0000;
}

/// Why an AUTHENTICATE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("not an NTLM {0} message")]
    NotMessage(&'static str),
    #[error("malformed NTLM message: {0}")]
    Malformed(&'static str),
    #[error("only NTLMv2 responses are accepted")]
    NotV2,
    #[error("the NTLMv2 response does not match the stored credentials")]
    WrongPassword,
}

/// RC4 (the stream cipher MS-NLMP uses for key exchange and sealing).
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Rc4 {
        let mut s = [0u8; 256];
        for (i, x) in s.iter_mut().enumerate() {
            *x = i as u8;
        }
        let mut j: u8 = 0;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// Encrypts or decrypts in place (the same operation).
    pub fn apply(&mut self, data: &mut [u8]) {
        for b in data {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k =
                self.s[(self.s[self.i as usize].wrapping_add(self.s[self.j as usize])) as usize];
            *b ^= k;
        }
    }
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut m = HmacMd5::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16le(b: &[u8]) -> Result<String, NtlmError> {
    if !b.len().is_multiple_of(2) {
        return Err(NtlmError::Malformed("odd-length UTF-16 string"));
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| NtlmError::Malformed("bad UTF-16 string"))
}

/// NTOWFv1 (MS-NLMP §3.3.1): MD4 of the UTF-16LE password; what the store keeps.
pub fn nt_hash(password: &str) -> [u8; 16] {
    use md4::Md4;
    let mut h = Md4::new();
    h.update(utf16le(password));
    h.finalize().into()
}

/// NTOWFv2 (MS-NLMP §3.3.2): HMAC-MD5 keyed with the NT hash over UPPER(user) + domain.
pub fn ntowf_v2(nt_hash: &[u8; 16], user: &str, domain: &str) -> [u8; 16] {
    let who = format!("{}{domain}", user.to_uppercase());
    hmac_md5(nt_hash, &[&utf16le(&who)])
}

/// Target information for the CHALLENGE (MS-NLMP §2.2.2.1 AV pairs).
#[derive(Debug, Clone, Default)]
pub struct TargetInfo {
    pub netbios_domain: String,
    pub netbios_computer: String,
    pub dns_domain: String,
    pub dns_computer: String,
}

/// The flags a server offers in connectionless mode: Unicode, signing with extended
/// session security, 128-bit keys, key exchange, datagram.
pub const SERVER_FLAGS: u32 = flags::UNICODE
    | flags::REQUEST_TARGET
    | flags::SIGN
    | flags::DATAGRAM
    | flags::NTLM
    | flags::ALWAYS_SIGN
    | flags::TARGET_TYPE_DOMAIN
    | flags::EXTENDED_SESSION_SECURITY
    | flags::IDENTIFY
    | flags::TARGET_INFO
    | flags::VERSION
    | flags::NEGOTIATE_128
    | flags::KEY_EXCH
    | flags::NEGOTIATE_56;

/// Builds a CHALLENGE_MESSAGE (MS-NLMP §2.2.1.2) with `server_challenge`.
pub fn challenge_message(server_challenge: [u8; 8], target: &TargetInfo) -> Vec<u8> {
    let target_name = utf16le(&target.netbios_domain);
    let mut info = Vec::new();
    for (id, value) in [
        (2u16, &target.netbios_domain),
        (1, &target.netbios_computer),
        (4, &target.dns_domain),
        (3, &target.dns_computer),
    ] {
        let v = utf16le(value);
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(v.len() as u16).to_le_bytes());
        info.extend_from_slice(&v);
    }
    info.extend_from_slice(&[0, 0, 0, 0]); // MsvAvEOL
    const HEADER: usize = 56;
    let mut m = Vec::with_capacity(HEADER + target_name.len() + info.len());
    m.extend_from_slice(b"NTLMSSP\0");
    m.extend_from_slice(&2u32.to_le_bytes());
    push_buffer_header(&mut m, target_name.len(), HEADER);
    m.extend_from_slice(&SERVER_FLAGS.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0; 8]);
    push_buffer_header(&mut m, info.len(), HEADER + target_name.len());
    // Version: 6.1 build 7601, NTLM revision 15 (informational only, §2.2.2.10).
    m.extend_from_slice(&[6, 1, 0xb1, 0x1d, 0, 0, 0, 15]);
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&info);
    m
}

fn push_buffer_header(m: &mut Vec<u8>, len: usize, offset: usize) {
    m.extend_from_slice(&(len as u16).to_le_bytes());
    m.extend_from_slice(&(len as u16).to_le_bytes());
    m.extend_from_slice(&(offset as u32).to_le_bytes());
}

/// The fields of an AUTHENTICATE_MESSAGE (MS-NLMP §2.2.1.3) a server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticateMessage {
    pub flags: u32,
    pub lm_response: Vec<u8>,
    pub nt_response: Vec<u8>,
    pub domain: String,
    pub user: String,
    pub workstation: String,
    pub encrypted_random_session_key: Vec<u8>,
}

fn security_buffer(m: &[u8], at: usize) -> Result<&[u8], NtlmError> {
    let field = m
        .get(at..at + 8)
        .ok_or(NtlmError::Malformed("truncated header"))?;
    let len = u16::from_le_bytes([field[0], field[1]]) as usize;
    let offset = u32::from_le_bytes([field[4], field[5], field[6], field[7]]) as usize;
    if len == 0 {
        return Ok(&[]);
    }
    m.get(
        offset
            ..offset
                .checked_add(len)
                .ok_or(NtlmError::Malformed("bad offset"))?,
    )
    .ok_or(NtlmError::Malformed("field outside the message"))
}

impl AuthenticateMessage {
    pub fn parse(m: &[u8]) -> Result<AuthenticateMessage, NtlmError> {
        if m.len() < 64 || &m[..8] != b"NTLMSSP\0" || m[8..12] != 3u32.to_le_bytes() {
            return Err(NtlmError::NotMessage("AUTHENTICATE"));
        }
        let flags = u32::from_le_bytes([m[60], m[61], m[62], m[63]]);
        let text = |at| -> Result<String, NtlmError> {
            let b = security_buffer(m, at)?;
            if flags & flags::UNICODE != 0 {
                from_utf16le(b)
            } else {
                Ok(String::from_utf8_lossy(b).into_owned())
            }
        };
        Ok(AuthenticateMessage {
            flags,
            lm_response: security_buffer(m, 12)?.to_vec(),
            nt_response: security_buffer(m, 20)?.to_vec(),
            domain: text(28)?,
            user: text(36)?,
            workstation: text(44)?,
            encrypted_random_session_key: security_buffer(m, 52)?.to_vec(),
        })
    }
}

/// The keys of an established security association (extended session security).
#[derive(Clone)]
pub struct Session {
    pub flags: u32,
    pub exported_session_key: [u8; 16],
    client_signing_key: [u8; 16],
    server_signing_key: [u8; 16],
    client_sealing_key: [u8; 16],
    server_sealing_key: [u8; 16],
}

/// Checks an AUTHENTICATE against the CHALLENGE's `server_challenge` and the user's NT
/// hash (NTLMv2, MS-NLMP §3.3.2 and §3.2.5.1.2), and derives the session keys.
pub fn accept(
    auth: &AuthenticateMessage,
    server_challenge: &[u8; 8],
    nt_hash: &[u8; 16],
) -> Result<Session, NtlmError> {
    // NTLMv2: NTProofStr (16) followed by the client's blob (at least 28 bytes).
    if auth.nt_response.len() < 16 + 28 {
        return Err(NtlmError::NotV2);
    }
    let (proof, blob) = auth.nt_response.split_at(16);
    if blob[0] != 1 || blob[1] != 1 {
        return Err(NtlmError::NotV2);
    }
    // The client may have used the domain it sent, or none (user@domain names).
    let expected = [auth.domain.as_str(), ""].into_iter().find_map(|domain| {
        let key = ntowf_v2(nt_hash, &auth.user, domain);
        let p = hmac_md5(&key, &[server_challenge, blob]);
        constant_time_eq(&p, proof).then_some(key)
    });
    let Some(response_key) = expected else {
        return Err(NtlmError::WrongPassword);
    };
    let session_base_key = hmac_md5(&response_key, &[proof]);
    // §3.4.5.1: for NTLMv2 the key exchange key is the session base key.
    let mut exported = session_base_key;
    if auth.flags & flags::KEY_EXCH != 0 {
        if auth.encrypted_random_session_key.len() != 16 {
            return Err(NtlmError::Malformed(
                "encrypted session key is not 16 bytes",
            ));
        }
        exported.copy_from_slice(&auth.encrypted_random_session_key);
        Rc4::new(&session_base_key).apply(&mut exported);
    }
    Ok(Session::from_exported_key(auth.flags, exported))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const CLIENT_SIGN: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGN: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEAL: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEAL: &[u8] = b"session key to server-to-client sealing key magic constant\0";

impl Session {
    /// §3.4.5.2 SIGNKEY and §3.4.5.3 SEALKEY (extended session security).
    pub fn from_exported_key(flags: u32, exported: [u8; 16]) -> Session {
        let seal_base: &[u8] = if flags & flags::NEGOTIATE_128 != 0 {
            &exported
        } else if flags & flags::NEGOTIATE_56 != 0 {
            &exported[..7]
        } else {
            &exported[..5]
        };
        Session {
            flags,
            exported_session_key: exported,
            client_signing_key: md5(&[&exported, CLIENT_SIGN]),
            server_signing_key: md5(&[&exported, SERVER_SIGN]),
            client_sealing_key: md5(&[seal_base, CLIENT_SEAL]),
            server_sealing_key: md5(&[seal_base, SERVER_SEAL]),
        }
    }

    fn mac(&self, signing: &[u8; 16], sealing: &[u8; 16], seq: u32, msg: &[u8]) -> [u8; 16] {
        let seq_bytes = seq.to_le_bytes();
        let digest = hmac_md5(signing, &[&seq_bytes, msg]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&digest[..8]);
        if self.flags & flags::KEY_EXCH != 0 {
            // Connectionless (§3.4.5.3): each message is sealed under its own key,
            // MD5(SealingKey, SeqNum), with a fresh RC4 state.
            let key = if self.flags & flags::DATAGRAM != 0 {
                md5(&[sealing, &seq_bytes])
            } else {
                *sealing
            };
            Rc4::new(&key).apply(&mut checksum);
        }
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq_bytes);
        sig
    }

    /// The server's signature over `msg` (MS-NLMP §3.4.4.2 with ESS).
    pub fn sign(&self, seq: u32, msg: &[u8]) -> [u8; 16] {
        self.mac(&self.server_signing_key, &self.server_sealing_key, seq, msg)
    }

    /// The signature the client would put on `msg` (for verification and tests).
    pub fn client_signature(&self, seq: u32, msg: &[u8]) -> [u8; 16] {
        self.mac(&self.client_signing_key, &self.client_sealing_key, seq, msg)
    }

    /// Checks a client's signature over `msg`, with the sequence number it carries.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 16 || signature[..4] != 1u32.to_le_bytes() {
            return false;
        }
        let seq = u32::from_le_bytes([signature[12], signature[13], signature[14], signature[15]]);
        constant_time_eq(&self.client_signature(seq, msg), signature)
    }

    /// The stateful sealing of §3.4.3 for `msg`, followed by its signature with the same
    /// RC4 state (GSS_WrapEx in connection mode); only for checking the spec's vectors.
    #[doc(hidden)]
    pub fn wrap_client_connection_mode(&self, seq: u32, msg: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut rc4 = Rc4::new(&self.client_sealing_key);
        let mut sealed = msg.to_vec();
        rc4.apply(&mut sealed);
        let digest = hmac_md5(&self.client_signing_key, &[&seq.to_le_bytes(), msg]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&digest[..8]);
        rc4.apply(&mut checksum);
        let mut sig = [0u8; 16];
        sig[..4].copy_from_slice(&1u32.to_le_bytes());
        sig[4..12].copy_from_slice(&checksum);
        sig[12..].copy_from_slice(&seq.to_le_bytes());
        (sealed, sig)
    }
}

/// The client side, for test clients that sign in like a Lync client (and for checking
/// the server side against the spec's examples). Not used by the server.
pub mod client {
    use super::*;

    /// What a client needs from a CHALLENGE_MESSAGE.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Challenge {
        pub flags: u32,
        pub server_challenge: [u8; 8],
        pub target_info: Vec<u8>,
    }

    impl Challenge {
        pub fn parse(m: &[u8]) -> Result<Challenge, NtlmError> {
            if m.len() < 48 || &m[..8] != b"NTLMSSP\0" || m[8..12] != 2u32.to_le_bytes() {
                return Err(NtlmError::NotMessage("CHALLENGE"));
            }
            Ok(Challenge {
                flags: u32::from_le_bytes([m[20], m[21], m[22], m[23]]),
                server_challenge: m[24..32].try_into().expect("length checked"),
                target_info: security_buffer(m, 40)?.to_vec(),
            })
        }
    }

    /// The client's choices: who, and the random values (fixed in tests).
    #[derive(Debug, Clone)]
    pub struct Credentials<'a> {
        pub user: &'a str,
        pub domain: &'a str,
        pub workstation: &'a str,
        pub nt_hash: [u8; 16],
        pub client_challenge: [u8; 8],
        /// FILETIME (100 ns since 1601).
        pub timestamp: u64,
        pub random_session_key: [u8; 16],
    }

    /// The NTLMv2 responses and the AUTHENTICATE_MESSAGE (MS-NLMP §3.1.5.1.2, §2.2.1.3;
    /// connectionless: no MIC), with the client's view of the session.
    pub fn authenticate(
        ch: &Challenge,
        c: &Credentials<'_>,
    ) -> (AuthenticateMessage, Vec<u8>, Session) {
        let key = ntowf_v2(&c.nt_hash, c.user, c.domain);
        let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
        blob.extend_from_slice(&c.timestamp.to_le_bytes());
        blob.extend_from_slice(&c.client_challenge);
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(&ch.target_info);
        blob.extend_from_slice(&[0; 4]);
        let proof = hmac_md5(&key, &[&ch.server_challenge, &blob]);
        let mut nt_response = proof.to_vec();
        nt_response.extend_from_slice(&blob);
        let mut lm_response = hmac_md5(&key, &[&ch.server_challenge, &c.client_challenge]).to_vec();
        lm_response.extend_from_slice(&c.client_challenge);
        let session_base_key = hmac_md5(&key, &[&proof]);
        let flags = ch.flags & SERVER_FLAGS;
        let mut encrypted = c.random_session_key;
        Rc4::new(&session_base_key).apply(&mut encrypted);
        let msg = AuthenticateMessage {
            flags,
            lm_response,
            nt_response,
            domain: c.domain.into(),
            user: c.user.into(),
            workstation: c.workstation.into(),
            encrypted_random_session_key: encrypted.to_vec(),
        };
        let bytes = msg.encode();
        (
            msg,
            bytes,
            Session::from_exported_key(flags, c.random_session_key),
        )
    }

    impl AuthenticateMessage {
        /// The message's bytes (Unicode strings; no version, no MIC).
        pub fn encode(&self) -> Vec<u8> {
            const HEADER: usize = 64;
            let fields: [Vec<u8>; 6] = [
                self.lm_response.clone(),
                self.nt_response.clone(),
                utf16le(&self.domain),
                utf16le(&self.user),
                utf16le(&self.workstation),
                self.encrypted_random_session_key.clone(),
            ];
            let mut m = b"NTLMSSP\0".to_vec();
            m.extend_from_slice(&3u32.to_le_bytes());
            let mut offset = HEADER;
            for f in &fields {
                push_buffer_header(&mut m, f.len(), offset);
                offset += f.len();
            }
            m.extend_from_slice(&(self.flags | flags::UNICODE).to_le_bytes());
            for f in &fields {
                m.extend_from_slice(f);
            }
            m
        }
    }
}
