//! The Lync sign-in against strangers: an association answers only on the connection it
//! was made on (a guessed or captured `opaque` used elsewhere neither signs in nor ends
//! it), a signed REGISTER cannot be replayed (its `cnum` must grow), and an unknown user
//! and a wrong password look alike.

use sip_message::HeaderName;

use crate::lync::{lync_client, lync_register, sign_in};
use crate::support::*;

#[tokio::test]
async fn an_association_answers_only_on_its_own_connection() {
    let s = TestServer::start(&["alice", "mallory"]).await;
    let (mut alice, mut sa) = lync_client(&s, "alice").await;
    // alice refreshes: a signed REGISTER on her connection.
    let mut refresh = lync_register(&mut alice);
    sa.sign(&mut refresh);
    alice.send(&refresh).await;
    let ok = alice.final_response().await;
    assert_eq!(status(&ok), 200, "{ok}");
    sa.check(&ok);
    // The very same signed REGISTER from another connection (captured, or the opaque
    // guessed): refused, and alice's association is untouched.
    let mut mallory = s.client(Transport::Tcp, "alice").await;
    let mut stolen = refresh.clone();
    stolen.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/TCP 127.0.0.1:{};branch=z9hG4bK{};rport",
            mallory.local.port(),
            rand_hex()
        ),
    );
    mallory.send(&stolen).await;
    let r = mallory.final_response().await;
    assert_eq!(status(&r), 401, "{r}");
    let mut garbage = lync_register(&mut mallory);
    garbage.headers.push(
        HeaderName::Authorization,
        format!(
            "NTLM qop=\"auth\", opaque=\"{}\", realm=\"SIP Communications Service\", targetname=\"{}\", version=4, crand=\"00000001\", cnum=\"999\", response=\"01000000000000000000000064000000\"",
            sa.opaque, sa.targetname
        ),
    );
    mallory.send(&garbage).await;
    assert_eq!(status(&mallory.final_response().await), 401);
    // alice goes on signing requests on her association.
    let me = alice.aor();
    let mut sub = alice.request("SUBSCRIBE", &me, &me);
    sub.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    sa.sign(&mut sub);
    alice.send(&sub).await;
    let r = alice.final_response().await;
    assert_eq!(status(&r), 200, "alice's association survived: {r}");
    sa.check(&r);
}

#[tokio::test]
async fn a_signed_register_cannot_be_replayed() {
    let s = TestServer::start(&["alice"]).await;
    let (mut alice, mut sa) = lync_client(&s, "alice").await;
    let mut refresh = lync_register(&mut alice);
    sa.sign(&mut refresh);
    alice.send(&refresh).await;
    assert_eq!(status(&alice.final_response().await), 200);
    let mut replay = refresh.clone();
    replay.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/TCP 127.0.0.1:{};branch=z9hG4bK{};rport",
            alice.local.port(),
            rand_hex()
        ),
    );
    alice.send(&replay).await;
    assert_eq!(status(&alice.final_response().await), 401);
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_look_alike_over_ntlm() {
    let s = TestServer::start(&["alice"]).await;
    let mut a = s.client(Transport::Tcp, "alice").await;
    let mut b = s.client(Transport::Tcp, "nobody").await;
    let (wrong, _) = sign_in(&mut a, "pw-wrong").await;
    let (unknown, _) = sign_in(&mut b, "pw-nobody").await;
    let w = |m: &sip_message::Message| {
        (
            status(m),
            m.headers.get(&HeaderName::Warning).unwrap_or("").to_owned(),
        )
    };
    assert_eq!(w(&wrong).0, 403);
    assert_eq!(w(&wrong), w(&unknown));
}
