//! What the presence service's hook tests share: a Deliverer that captures the requests
//! the service would send, and the source of the test's requests.

use std::net::SocketAddr;
use std::pin::Pin;

use parking_lot::Mutex;
use sip_message::Message;
use sip_transport::{Source, TransportKind};
use switchboard_proxy::{Deliverer, Delivery};

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
        _flow: Source,
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

pub fn source() -> Source {
    let a: SocketAddr = "127.0.0.1:5099".parse().unwrap();
    Source {
        transport: TransportKind::Udp,
        remote: a,
        local: "127.0.0.1:5060".parse().unwrap(),
        connection: None,
    }
}
