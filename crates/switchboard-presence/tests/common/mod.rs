//! What the presence service's hook tests share: a store with users, a service over it
//! whose NOTIFYs a Deliverer captures, the source of the test's requests, and a data
//! layer that fails on demand ([`data`]).
#![allow(dead_code)] // each test binary uses part of it

pub mod data;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use sip_message::{parse_datagram, Message};
use switchboard_core::seam::{
    AnswerPort, Conn, Deliverer, Delivery, EventHook, Flow, FrontEnd, Responder, ServiceAnswer,
    Transport,
};
use switchboard_core::{Address, ContactData, Directory, PresenceData};
use switchboard_presence::{PresenceConfig, PresenceService};
use switchboard_store::SqliteStore;

/// A store in a new directory with these users (password `pw`).
pub fn store_with(users: &[&str]) -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    for u in users {
        store
            .users
            .add(&Address::parse(u).unwrap(), "pw", None)
            .unwrap();
    }
    (dir, store)
}

/// The service over `data` (every trait from the one value), its NOTIFYs captured.
pub async fn start<D>(data: Arc<D>, cfg: PresenceConfig) -> (Arc<PresenceService>, Arc<Captured>)
where
    D: ContactData + PresenceData + Directory,
{
    let captured = Arc::new(Captured::default());
    let svc = PresenceService::start(
        data.clone(),
        data.clone(),
        data,
        cfg,
        captured.clone(),
        None,
        None,
    )
    .await;
    (svc, captured)
}

#[derive(Default)]
pub struct Captured(Mutex<Vec<Message>>);

impl Deliverer for Captured {
    fn send_request(
        &self,
        request: Message,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        self.0.lock().push(request);
        Box::pin(async { 200 })
    }
    fn send_request_on(
        &self,
        request: Message,
        _flow: Flow,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        self.send_request(request)
    }
    fn deliver(&self, _d: Delivery) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(async { 480 })
    }
    fn invite_to_conference(
        &self,
        _from: String,
        _to: String,
        _focus: String,
        _body: bytes::Bytes,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(async { 480 })
    }
}

impl Captured {
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Hands `msg` from `from` to `to` to the service as the router does, over
/// [`source`]; returns the answer it sent (what follows it, a NOTIFY, is captured).
pub async fn handle(svc: &PresenceService, msg: &Message, from: &str, to: &str) -> ServiceAnswer {
    let port = Answer::default();
    svc.handle(msg, from, to, source(), Responder::new(&port))
        .await;
    let answer = port.0.lock().take();
    answer.expect("the service answered")
}

/// Keeps the answer a service sent.
#[derive(Default)]
struct Answer(Mutex<Option<ServiceAnswer>>);

#[async_trait::async_trait]
impl AnswerPort for Answer {
    async fn answer(&self, answer: ServiceAnswer) -> u16 {
        let status = answer.status;
        *self.0.lock() = Some(answer);
        status
    }
}

pub fn source() -> Flow {
    let a: SocketAddr = "127.0.0.1:5099".parse().unwrap();
    Flow::new(
        FrontEnd::LOCAL,
        Conn {
            transport: Transport::Udp,
            remote: a,
            local: "127.0.0.1:5060".parse().unwrap(),
            number: None,
        },
    )
}

/// A request from `from` to `to` (both `user@domain`) in a dialog of its own.
pub fn request(method: &str, from: &str, to: &str, extra: &str, body: &str) -> Message {
    let text = format!(
        "{method} sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=f{n}\r\nTo: <sip:{to}>\r\nCall-ID: c{n}@test\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:{user}@127.0.0.1:5099>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        n = rand::random::<u32>(),
        user = from.split('@').next().unwrap(),
    );
    parse_datagram(text.as_bytes()).unwrap()
}
