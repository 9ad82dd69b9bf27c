//! # sipae: MS-SIPAE message signing
//!
//! Once a Lync client and the server share a security association (MS-SIPAE §3.2.5.1,
//! NTLM here), both sign every message. The signature covers not the message but a
//! *signature input* built from some of its fields (MS-SIPAE §3.2.5.1.1, and pidgin-sipe's
//! reading of it), each value between `<` and `>`, in this order:
//!
//! auth protocol, rand (crand / srand), num (cnum / snum), realm, targetname, Call-ID,
//! CSeq number, CSeq method, From URI, From tag, [To URI,] To tag,
//! [P-Asserted-Identity SIP URI, P-Asserted-Identity tel URI,] Expires, [response code]
//!
//! The bracketed To URI and P-Asserted-Identity fields are present from protocol version
//! 3 on; the response code only in responses. Absent values are `<>`.
//!
//! [`instance`]: the `+sip.instance` a client's `epid` must map to (MS-SIPAE §3.3.5.2).
#![forbid(unsafe_code)]

pub mod instance;

use sip_message::{HeaderName, Message, NameAddr, Uri};

/// What names the security association and this message's place in it.
#[derive(Debug, Clone, Copy)]
pub struct SignatureContext<'a> {
    /// `NTLM` (or `Kerberos`, `TLS-DSK`).
    pub protocol: &'a str,
    /// `crand` of a client's message or `srand` of the server's, as written in the header.
    pub rand: &'a str,
    /// `cnum` / `snum`.
    pub num: &'a str,
    pub realm: &'a str,
    pub targetname: &'a str,
    /// The `version` of the security association (the client's Authorization says it).
    pub version: u32,
}

fn bracket(out: &mut String, value: &str) {
    out.push('<');
    out.push_str(value);
    out.push('>');
}

/// The URI of a name-addr header, without its header parameters.
fn uri_of(msg: &Message, name: &HeaderName) -> (String, Option<String>) {
    match msg.headers.get(name).and_then(|v| NameAddr::parse(v).ok()) {
        Some(na) => (na.uri.to_string(), na.tag().map(str::to_owned)),
        None => (String::new(), None),
    }
}

/// The P-Asserted-Identity URIs (RFC 3325 allows one SIP and one tel URI).
fn asserted_identities(msg: &Message) -> (String, String) {
    let mut sip = String::new();
    let mut tel = String::new();
    if let Ok(ids) = msg.name_addrs(&HeaderName::from_wire("P-Asserted-Identity")) {
        for id in ids {
            match &id.uri {
                Uri::Sip(_) if sip.is_empty() => sip = id.uri.to_string(),
                Uri::Tel(_) if tel.is_empty() => tel = id.uri.to_string(),
                _ => {}
            }
        }
    }
    (sip, tel)
}

/// The signature input of `msg` (MS-SIPAE §3.2.5.1.1).
pub fn signature_input(msg: &Message, ctx: &SignatureContext<'_>) -> String {
    let mut s = String::with_capacity(256);
    bracket(&mut s, ctx.protocol);
    bracket(&mut s, ctx.rand);
    bracket(&mut s, ctx.num);
    bracket(&mut s, ctx.realm);
    bracket(&mut s, ctx.targetname);
    bracket(&mut s, msg.call_id().unwrap_or(""));
    match msg.cseq() {
        Ok(c) => {
            bracket(&mut s, &c.seq.to_string());
            bracket(&mut s, c.method.as_str());
        }
        Err(_) => s.push_str("<><>"),
    }
    let (from_uri, from_tag) = uri_of(msg, &HeaderName::From);
    bracket(&mut s, &from_uri);
    bracket(&mut s, from_tag.as_deref().unwrap_or(""));
    let (to_uri, to_tag) = uri_of(msg, &HeaderName::To);
    if ctx.version >= 3 {
        bracket(&mut s, &to_uri);
    }
    bracket(&mut s, to_tag.as_deref().unwrap_or(""));
    if ctx.version >= 3 {
        let (sip, tel) = asserted_identities(msg);
        bracket(&mut s, &sip);
        bracket(&mut s, &tel);
    }
    bracket(
        &mut s,
        msg.headers.get(&HeaderName::Expires).unwrap_or("").trim(),
    );
    if let Some(code) = msg.status() {
        bracket(&mut s, &code.to_string());
    }
    s
}

/// The server's signature of `msg` as the hex `rspauth` value (sequence number 100, as
/// Lync clients use in connectionless NTLM).
pub fn server_signature(
    session: &ntlm::Session,
    msg: &Message,
    ctx: &SignatureContext<'_>,
) -> String {
    to_hex(&session.sign(100, signature_input(msg, ctx).as_bytes()))
}

/// Checks a client's `response` (hex) on `msg`.
pub fn verify_client(
    session: &ntlm::Session,
    msg: &Message,
    ctx: &SignatureContext<'_>,
    response_hex: &str,
) -> bool {
    let Some(sig) = from_hex(response_hex) else {
        return false;
    };
    session.verify(signature_input(msg, ctx).as_bytes(), &sig)
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Hex digits only: `u8::from_str_radix` alone would also take a sign (`+1` as 1).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (sipae_signature): `u8::from_str_radix` takes a leading `+`, so a
    /// `response` of `+1000000…` was read as the signature `01000000…` and accepted: a
    /// signature had more than one spelling.
    #[test]
    fn a_signature_is_spelled_in_hex_digits_only() {
        let msg = sip_message::parse_datagram(
            b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
        )
        .unwrap();
        let session = ntlm::Session::from_exported_key(ntlm::SERVER_FLAGS, [7; 16]);
        let ctx = SignatureContext {
            protocol: "NTLM",
            rand: "1",
            num: "2",
            realm: "r",
            targetname: "t",
            version: 4,
        };
        let good = to_hex(&session.client_signature(100, signature_input(&msg, &ctx).as_bytes()));
        assert!(good.starts_with("01000000"));
        assert!(verify_client(&session, &msg, &ctx, &good));
        assert!(verify_client(
            &session,
            &msg,
            &ctx,
            &good.to_ascii_lowercase()
        ));
        let plus = format!("+1{}", &good[2..]);
        assert!(!verify_client(&session, &msg, &ctx, &plus));
        assert_eq!(from_hex("+1"), None);
        assert_eq!(from_hex("0a0B"), Some(vec![10, 11]));
    }
}
