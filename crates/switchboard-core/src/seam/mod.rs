//! The seams between the router and the services.
//!
//! - [`ImHook`]: where the IM service (the "IM MCU") attaches. Every MESSAGE between
//!   users, and every request in a dialog, is handed to it in one call with a [`Relay`]:
//!   the service lets it go on (and learns the final status) or answers it, so it can
//!   anchor conversations, count messages for CDR, and store messages for offline users.
//!   Requests to its own resources (conferences) come with a [`Responder`].
//! - [`EventHook`]: where event-state services (presence) attach: SUBSCRIBE, PUBLISH and
//!   SERVICE addressed to users, each one call with a [`Responder`].
//! - [`Deliverer`]: the other way, requests a service originates (NOTIFYs, stored
//!   messages, conference traffic), sent by the router's outbound side.
//! - [`Flow`]: where a request came from, opaque to services.
//!
//! The router implements [`Deliverer`] and calls the hooks; the services implement the
//! hooks and call a [`Deliverer`]. Neither names the other's crate.

mod flow;

pub use flow::{Conn, Connection, Flow, FrontEnd, Transport};

use sip_message::Message;

/// How the recipient of a pager-mode MESSAGE can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No registered device.
    Offline,
    /// Registered devices: the MESSAGE is forked to all of them.
    Online,
    /// The one device a GRUU (RFC 5627) names: the MESSAGE goes to it as addressed.
    Device,
}

/// Observes and steers IM traffic. Each request is handled on a task of its own, so an
/// implementation may await its data (never while holding a lock).
#[async_trait::async_trait]
pub trait ImHook: Send + Sync + 'static {
    /// An authenticated pager-mode MESSAGE from `from` to `to` (both AoRs, `sip:u@d`),
    /// whose recipient is reached as `reach` says. The service relays it with
    /// [`Relay::forward`] (and learns the final status the sender gets) or answers it
    /// itself with [`Relay::respond`].
    async fn message(&self, _msg: &Message, _from: &str, _to: &str, _reach: Reach, relay: Relay) {
        relay.forward().await;
    }
    /// `aor` registered a new device.
    fn on_registered(&self, _aor: &str) {}
    /// A dialog-creating INVITE from `caller` to `callee` was answered with `answer` (2xx).
    /// Session-mode IM starts here (INVITE with `m=message`).
    async fn on_invite_answered(
        &self,
        _invite: &Message,
        _answer: &Message,
        _caller: &str,
        _callee: &str,
    ) {
    }
    /// A dialog-creating INVITE from `from` to the user `to`, before it is forked.
    /// `online` says whether `to` has a registered device at all, `session_im` whether
    /// one of them speaks the Lync dialect (session-mode IM, conference invitations).
    /// `Some` answers it in the service's name (the service becomes the UAS of that
    /// dialog: a bridge to pager mode, or a conference joined on the user's behalf).
    /// `flow` is where it came from: requests the service sends in a dialog it answers
    /// go back over it.
    async fn before_invite(
        &self,
        _msg: &Message,
        _from: &str,
        _to: &str,
        _online: bool,
        _session_im: bool,
        _flow: Flow,
    ) -> Option<ServiceAnswer> {
        None
    }
    /// A dialog-creating INVITE from `from` to the user `to` is about to be forked to
    /// their devices (`before_invite` let it through, or a GRUU names one device). `Some`
    /// refuses it with that answer. One let through ends in `on_invite_answered` (2xx) or
    /// `invite_failed`, so what the service set aside for it can be given back.
    async fn admit_invite(&self, _msg: &Message, _from: &str, _to: &str) -> Option<ServiceAnswer> {
        None
    }
    /// A dialog-creating INVITE to the user `to` ended without a 2xx (refused,
    /// cancelled, timed out, or no device to fork it to).
    async fn invite_failed(&self, _msg: &Message, _from: &str, _to: &str) {}
    /// A request inside a dialog (MESSAGE, INFO, BYE, re-INVITE...) from `from`. The
    /// service lets it go on its way with [`Relay::forward`] (and learns the final
    /// status the sender gets), or answers it itself with [`Relay::respond`] (481 for a
    /// session that no longer exists).
    async fn in_dialog(&self, _msg: &Message, _from: &str, relay: Relay) {
        relay.forward().await;
    }
    /// Is `aor` a resource of the IM service (a conference) rather than a user?
    fn serves(&self, _aor: &str) -> bool {
        false
    }
    /// The front end of a pool that must handle `msg`, addressed to `to`, when the
    /// request says: a conference is hosted by the front end that created it, and its
    /// address (or, for an invitation into it, the focus its body names) says which.
    /// `None` for any other request.
    fn home_of(&self, _msg: &Message, _to: &str) -> Option<u32> {
        None
    }
    /// An authenticated request from `from` to a resource `serves` claimed (in a dialog
    /// with it or not), which arrived over `flow`. The service answers it through
    /// `responder`, then sends what must follow the answer in the dialog (messages held
    /// for a member who just joined).
    async fn to_service(
        &self,
        _msg: &Message,
        _from: &str,
        _to: &str,
        _flow: Flow,
        responder: Responder<'_>,
    ) {
        responder.send(ServiceAnswer::status(404)).await;
    }
}

/// The router's side of a [`Relay`].
#[async_trait::async_trait]
pub trait RelayPort: Send {
    /// See [`Relay::forward`].
    async fn forward(self: Box<Self>) -> Option<u16>;
    /// See [`Relay::respond`].
    async fn respond(self: Box<Self>, status: u16, headers: Vec<(String, String)>);
}

/// A request the router holds for the IM service, to let go on its way or to answer,
/// once. A service that drops it unused leaves it to the router, which answers 500: a
/// transaction is never left unanswered.
pub struct Relay {
    port: Box<dyn RelayPort>,
}

impl Relay {
    /// For the router: the request behind `port`.
    pub fn new(port: Box<dyn RelayPort>) -> Self {
        Relay { port }
    }

    /// Lets the request go on its way as the router would route it without the service
    /// (forked to the recipient's devices, or to the dialog's other party). Returns the
    /// final status the sender gets when it was relayed to devices, the sender getting
    /// it once the service's call returns, so what the service records for it comes
    /// first. `None` when it was not relayed (the router answered it otherwise: a
    /// resource of a service, no device), and for an INVITE, whose outcome comes
    /// through `on_invite_answered`/`invite_failed`.
    pub async fn forward(self) -> Option<u16> {
        self.port.forward().await
    }

    /// Answers the request with `status` and these extra header fields instead (202
    /// when stored for later delivery, 481 for a session that is gone...).
    pub async fn respond(self, status: u16, headers: Vec<(String, String)>) {
        self.port.respond(status, headers).await
    }
}

/// The router's side of a [`Responder`]: sends a service's answer as the final response
/// to the request it holds.
#[async_trait::async_trait]
pub trait AnswerPort: Send + Sync {
    /// Sends `answer`; returns its status.
    async fn answer(&self, answer: ServiceAnswer) -> u16;
}

/// How a service answers a request the router handed it: once, with [`Responder::send`],
/// which returns when the response has gone, so what must follow it (RFC 6665
/// §4.2.1.2: the NOTIFY after the 200) can go next. A service that returns without
/// answering leaves the request to the router, which answers 500: a transaction is never
/// left unanswered.
pub struct Responder<'a> {
    port: &'a dyn AnswerPort,
}

impl<'a> Responder<'a> {
    /// For the router: answers go to `port`.
    pub fn new(port: &'a dyn AnswerPort) -> Self {
        Responder { port }
    }

    /// Sends `answer` as the final response; returns its status once it has gone.
    pub async fn send(self, answer: ServiceAnswer) -> u16 {
        self.port.answer(answer).await
    }
}

/// How the core answers a request the IM service took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAnswer {
    pub status: u16,
    /// The To tag, when the answer creates a dialog the service keeps (a subscription).
    pub to_tag: Option<String>,
    /// Further header fields (Expires, Contact...).
    pub headers: Vec<(String, String)>,
    /// A body and its Content-Type (an SDP answer).
    pub body: Option<(String, bytes::Bytes)>,
}

impl ServiceAnswer {
    pub fn status(status: u16) -> Self {
        ServiceAnswer {
            status,
            to_tag: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// The seam where event-state services attach (the presence service): SUBSCRIBE and
/// PUBLISH addressed to users, in a dialog or not, are answered by the service that keeps
/// the event state (RFC 6665 §4.2 notifier, RFC 3903 §6 state agent) and are never
/// forked to the user's own devices.
#[async_trait::async_trait]
pub trait EventHook: Send + Sync + 'static {
    /// Does the service keep state for this event package (the Event header's token)?
    fn serves_event(&self, event: &str) -> bool;
    /// The event packages served, for `Allow-Events`.
    fn allow_events(&self) -> String;
    /// An authenticated SUBSCRIBE, PUBLISH or SERVICE from `from` for `to` (both AoRs
    /// `sip:u@d`) that arrived over `flow`. The service answers it through `responder`,
    /// then sends what must follow the answer (RFC 6665 §4.2.1.2: the NOTIFY after a 200).
    async fn handle(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
        responder: Responder<'_>,
    );
    /// A stream connection closed: state tied to the endpoint on it (a Lync client's
    /// endpoint publications) goes with it.
    fn flow_closed(&self, _connection: Connection) {}
}

/// What every notifier reads from a SUBSCRIBE (RFC 6665 §4.2.1): the duration granted
/// and the dialog it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// Seconds granted: the request's Expires (`max` when absent) capped at `max`; 0 ends
    /// (or fetches) the subscription.
    pub expires: u32,
    pub call_id: String,
    /// The subscriber's From tag.
    pub their_tag: String,
    /// Our To tag, when the SUBSCRIBE is inside an existing subscription dialog.
    pub our_tag: Option<String>,
}

impl SubscribeRequest {
    /// Reads `msg`, or says how to refuse it: 400 for a bad Expires or missing dialog
    /// identifiers, 423 with Min-Expires below `min` (RFC 6665 §4.2.1.1).
    pub fn read(msg: &Message, min: u32, max: u32) -> Result<SubscribeRequest, ServiceAnswer> {
        use sip_message::HeaderName;
        let requested = match msg.header_u32(&HeaderName::Expires) {
            Ok(e) => e.unwrap_or(max),
            Err(_) => return Err(ServiceAnswer::status(400)),
        };
        if requested != 0 && requested < min {
            let mut a = ServiceAnswer::status(423);
            a.headers.push(("Min-Expires".into(), min.to_string()));
            return Err(a);
        }
        let (Some(call_id), Ok(from)) = (msg.call_id(), msg.from_header()) else {
            return Err(ServiceAnswer::status(400));
        };
        Ok(SubscribeRequest {
            expires: requested.min(max),
            call_id: call_id.to_owned(),
            their_tag: from.tag().unwrap_or("").to_owned(),
            our_tag: msg
                .to_header()
                .ok()
                .and_then(|t| t.tag().map(str::to_owned)),
        })
    }
}

/// A MESSAGE the server itself sends to a user (a stored message delivered late).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The original sender's AoR (`sip:u@d`), written in From.
    pub from: String,
    /// The recipient's AoR.
    pub to: String,
    pub content_type: String,
    pub body: bytes::Bytes,
    /// When the sender sent it (written in a Date header, RFC 3428 §9).
    pub sent_at_ms: i64,
    /// Display name for From (a conference's name).
    pub from_display: Option<String>,
    /// Further header fields, e.g. `Ms-Sender` naming a conference message's author.
    pub extra_headers: Vec<(String, String)>,
}

/// Originates requests to users' devices; implemented by the SIP core for the IM service.
pub trait Deliverer: Send + Sync + 'static {
    /// Sends a complete request (without Via, which the core adds) to its Request-URI: a
    /// registered contact over its flow, or an IP address. Resolves to the final status.
    fn send_request(
        &self,
        request: Message,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>;
    /// Like `send_request`, for a dialog the server holds with a client that may not be
    /// registered: when the Request-URI is no registered contact, the request goes back
    /// over `flow`, the connection (or UDP address) the dialog was created from, and
    /// nowhere else (never to an address a client's Contact merely names).
    fn send_request_on(
        &self,
        request: Message,
        flow: Flow,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>;
    /// Invites `to`'s Lync devices into a conference: an INVITE from `from` carrying the
    /// `ms-conf-invite` document `body` (its Contact is the conference's `focus`).
    /// Resolves to 200 when a device accepted (it then joins by itself), else the best
    /// failure; 480 when `to` has no Lync device signed in.
    fn invite_to_conference(
        &self,
        from: String,
        to: String,
        focus: String,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>;
    /// Sends `d` to every registered device of `d.to`; resolves to the best final status
    /// (a 2xx as soon as one device accepts; 480 when none is registered).
    fn deliver(
        &self,
        d: Delivery,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>;
}
