//! REGISTER with Digest: challenge, success, refusal, stale nonces, replays, devices,
//! expiry, removal, GRUU.

use std::time::Duration;

use sip_message::{AuthHeader, ContactValue, HeaderName};

use crate::support::*;

async fn challenge_then_success(t: Transport) {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(t, "alice").await;
    let req = c.register_request(Some(600));
    c.send(&req).await;
    let ch = c.final_response().await;
    assert_eq!(status(&ch), 401);
    let www = AuthHeader::parse(ch.headers.get(&HeaderName::WwwAuthenticate).unwrap()).unwrap();
    assert_eq!(www.param("realm"), Some("example.com"));
    assert_eq!(www.param("qop"), Some("auth"));
    assert_eq!(www.param("algorithm"), Some("MD5"));
    let again = c.with_credentials(&req, &ch, "pw-alice", "MD5", 1);
    c.send(&again).await;
    let ok = c.final_response().await;
    assert_eq!(status(&ok), 200, "{ok}");
    let ContactValue::List(list) = ok.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    let exp: u32 = list[0].params.value("expires").unwrap().parse().unwrap();
    assert!((590..=600).contains(&exp), "expires {exp}");
    assert!(ok.headers.has(&HeaderName::Date));
}

#[tokio::test]
async fn register_over_udp() {
    challenge_then_success(Transport::Udp).await;
}

#[tokio::test]
async fn register_over_tcp() {
    challenge_then_success(Transport::Tcp).await;
}

#[tokio::test]
async fn register_over_tls_with_the_generated_ca() {
    challenge_then_success(Transport::Tls).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let r = c.register_request(None);
    let resp = c.send_authenticated_with(r, Some("not-her-password")).await;
    assert_eq!(status(&resp), 403);
    let mut mallory = s.client(Transport::Udp, "mallory").await;
    let resp = mallory.register(None).await;
    assert_eq!(status(&resp), 403);
}

#[tokio::test]
async fn disabled_user_is_refused_and_enabled_again() {
    let s = TestServer::start(&["alice"]).await;
    let cli = s.data().await.directory;
    let alice = switchboard_store::Address::parse("alice@example.com").unwrap();
    cli.set_enabled(&alice, false).await.unwrap();
    let mut c = s.client(Transport::Tcp, "alice").await;
    register_until(&mut c, 403).await;
    cli.set_enabled(&alice, true).await.unwrap();
    register_until(&mut c, 200).await;
}

/// Registers until the answer is `want` (at most a second). Another process's change
/// (the CLI's) is seen at the next request on SQLite, and once its notification arrives
/// on PostgreSQL, a moment later.
async fn register_until(c: &mut Client, want: u16) {
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(status(&c.register(None).await));
        if seen.last() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {want}: {seen:?}");
}

#[tokio::test]
async fn sha256_digest_when_offered() {
    let s = TestServer::start_with(&["alice"], |c| {
        c.digest_algorithms = vec![sip_digest::Algorithm::Sha256, sip_digest::Algorithm::Md5];
    })
    .await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let req = c.register_request(None);
    c.send(&req).await;
    let ch = c.final_response().await;
    let algs: Vec<String> = ch
        .headers
        .get_all(&HeaderName::WwwAuthenticate)
        .map(|v| {
            AuthHeader::parse(v)
                .unwrap()
                .param("algorithm")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        algs,
        vec!["SHA-256", "MD5"],
        "preferred first (RFC 8760 §2.4)"
    );
    let again = c.with_credentials(&req, &ch, "pw-alice", "SHA-256", 1);
    c.send(&again).await;
    assert_eq!(status(&c.final_response().await), 200);
}

#[tokio::test]
async fn expired_nonce_gets_stale_true() {
    let s = TestServer::start_with(&["alice"], |c| c.nonce_lifetime_secs = 1).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let req = c.register_request(None);
    c.send(&req).await;
    let ch = c.final_response().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let late = c.with_credentials(&req, &ch, "pw-alice", "MD5", 1);
    c.send(&late).await;
    let resp = c.final_response().await;
    assert_eq!(status(&resp), 401);
    let www = AuthHeader::parse(resp.headers.get(&HeaderName::WwwAuthenticate).unwrap()).unwrap();
    assert_eq!(www.param("stale"), Some("true"));
    // A stale nonce with a wrong password gets a fresh challenge too: an old nonce's
    // answer is not judged (no right/wrong oracle, and nothing counted against anyone).
    let wrong = c.with_credentials(&req, &ch, "bad", "MD5", 1);
    c.send(&wrong).await;
    assert_eq!(status(&c.final_response().await), 401);
    // And the fresh nonce works.
    let fresh = c.with_credentials(&req, &resp, "pw-alice", "MD5", 1);
    c.send(&fresh).await;
    assert_eq!(status(&c.final_response().await), 200);
}

#[tokio::test]
async fn replayed_nonce_count_is_refused() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let req = c.register_request(None);
    c.send(&req).await;
    let ch = c.final_response().await;
    let first = c.with_credentials(&req, &ch, "pw-alice", "MD5", 1);
    c.send(&first).await;
    assert_eq!(status(&c.final_response().await), 200);
    // Same nonce, same nc (an attacker replaying the credentials on a new request).
    let replay = c.with_credentials(&req, &ch, "pw-alice", "MD5", 1);
    c.send(&replay).await;
    let resp = c.final_response().await;
    assert_eq!(status(&resp), 401, "{resp}");
    // The next nc is fine.
    let next = c.with_credentials(&req, &ch, "pw-alice", "MD5", 2);
    c.send(&next).await;
    assert_eq!(status(&c.final_response().await), 200);
}

#[tokio::test]
async fn several_devices_then_removal() {
    let s = TestServer::start(&["bob"]).await;
    let mut d1 = s.client(Transport::Udp, "bob").await;
    let mut d2 = s.client(Transport::Tcp, "bob").await;
    assert_eq!(status(&d1.register(None).await), 200);
    let ok = d2.register(None).await;
    let ContactValue::List(list) = ok.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(list.len(), 2, "both devices listed: {ok}");
    // Expires: 0 removes one binding.
    let resp = d1.register(Some(0)).await;
    let ContactValue::List(list) = resp.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    // '*' with Expires: 0 removes the rest.
    let mut star = d2.register_request(Some(0));
    star.headers.set(HeaderName::Contact, "*");
    let resp = d2.send_authenticated(star).await;
    assert_eq!(status(&resp), 200);
    assert!(!resp.headers.has(&HeaderName::Contact));
    assert_eq!(s.server.core.location().counts(), (0, 0));
}

#[tokio::test]
async fn star_without_expires_zero_is_bad() {
    let s = TestServer::start(&["bob"]).await;
    let mut c = s.client(Transport::Udp, "bob").await;
    let mut star = c.register_request(None);
    star.headers.set(HeaderName::Contact, "*");
    assert_eq!(status(&c.send_authenticated(star).await), 400);
}

#[tokio::test]
async fn too_brief_interval_gets_423_with_min_expires() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let resp = c.register(Some(5)).await;
    assert_eq!(status(&resp), 423);
    assert_eq!(resp.headers.get(&HeaderName::MinExpires), Some("60"));
}

#[tokio::test]
async fn bindings_expire() {
    let s = TestServer::start_with(&["alice", "bob"], |c| c.registrar.min_expires = 1).await;
    let mut bob = s.client(Transport::Udp, "bob").await;
    assert_eq!(status(&bob.register(Some(1)).await), 200);
    assert_eq!(s.server.core.location().counts().1, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    let m = alice.options_to("bob");
    assert_eq!(status(&alice.send_authenticated(m).await), 480);
    assert_eq!(
        s.server.core.location().counts().1,
        0,
        "the sweeper removed it"
    );
}

#[tokio::test]
async fn register_for_a_foreign_domain_is_refused() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let mut r = c.register_request(None);
    r.headers
        .set(HeaderName::To, "<sip:alice@elsewhere.example>");
    r.headers
        .set(HeaderName::From, "<sip:alice@elsewhere.example>;tag=x");
    c.send(&r).await;
    assert_eq!(status(&c.final_response().await), 403);
}

#[tokio::test]
async fn cannot_register_someone_else() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let mut r = c.register_request(None);
    r.headers.set(HeaderName::To, "<sip:bob@example.com>");
    assert_eq!(status(&c.send_authenticated(r).await), 403);
}

#[tokio::test]
async fn gruu_for_an_instance() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut b1 = s.client(Transport::Udp, "bob").await;
    let mut b2 = s.client(Transport::Udp, "bob").await;
    let r = b1.gruu_register_request(None, "00000000-0000-0000-0000-0000000000b1");
    let ok = b1.send_authenticated(r).await;
    assert_eq!(status(&ok), 200);
    let ContactValue::List(list) = ok.contacts().unwrap() else {
        panic!()
    };
    let pub_gruu =
        sip_message::unquote(list[0].params.value("pub-gruu").unwrap().trim_matches('"'));
    assert_eq!(
        pub_gruu,
        "sip:bob@example.com;gr=urn:uuid:00000000-0000-0000-0000-0000000000b1"
    );
    let temp = sip_message::unquote(list[0].params.value("temp-gruu").unwrap().trim_matches('"'));
    assert_eq!(status(&b2.register(None).await), 200);

    // A MESSAGE to the GRUU reaches that device only.
    let mut alice = s.client(Transport::Udp, "alice").await;
    for target in [pub_gruu, temp] {
        let mut m = alice.message_to("bob", "just device 1");
        m.start = sip_message::StartLine::Request {
            method: sip_message::Method::Message,
            uri: sip_message::Uri::parse(&target).unwrap(),
        };
        alice.send(&m).await;
        let ch = alice.final_response().await;
        let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
        alice.send(&again).await;
        let got = b1.answer_next_request(200).await.expect("device 1 gets it");
        assert_eq!(&got.body[..], b"just device 1");
        assert_eq!(status(&alice.final_response().await), 200);
        assert!(
            b2.recv_within(Duration::from_millis(300)).await.is_none(),
            "device 2 must not"
        );
    }
}

/// A server starts from a data directory that does not exist yet (created owner-only),
/// on either database: on PostgreSQL nothing but the server itself makes it.
#[tokio::test]
async fn a_server_starts_from_a_data_directory_not_made_yet() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start_with(&[], |c| c.data_dir = c.data_dir.join("not/made/yet")).await;
    let dir = s.data_dir().join("not/made/yet");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(dir.join("route-secret").exists());
    let mut c = s.client(Transport::Udp, "nobody").await;
    let ping = c.options_to("nobody");
    c.send(&ping).await;
    assert!(c.recv().await.is_some(), "the server answers");
}
