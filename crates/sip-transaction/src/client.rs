//! Client transactions (RFC 3261 §17.1, RFC 6026 §8.4).

use sip_message::{HeaderName, Message, Method, StartLine};
use sip_transport::{Inbound, Target};
use tokio::time::{sleep_until, Instant};

use crate::mailbox::{mailbox, Receiver, Sender};
use crate::TransactionLayer;

/// What a client transaction reports to its owner.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A provisional or final response (further 2xx to INVITE may follow, RFC 6026),
    /// with the flow it arrived over.
    Response(Box<Inbound>),
    /// Timer B/F fired: no final response (treated as 408, §8.1.3.1).
    Timeout,
    /// The request could not be sent (treated as 503, §8.1.3.1).
    TransportError(String),
}

/// The receiving end of a client transaction. Dropping it does not stop the transaction.
pub struct ClientTransaction {
    pub events: Receiver<ClientEvent>,
}

/// Where a client transaction reports: its own queue, or a queue shared by the branches
/// of a fork, each event tagged with the branch number.
enum Sink {
    Own(Sender<ClientEvent>),
    Tagged(usize, Sender<(usize, ClientEvent)>),
}

impl Sink {
    fn send(&self, ev: ClientEvent) {
        let _ = match self {
            Sink::Own(s) => s.send(ev).map_err(drop),
            Sink::Tagged(i, s) => s.send((*i, ev)).map_err(drop),
        };
    }
}

/// §17.1.1.3: the ACK for a non-2xx final response to `invite`.
fn ack_for(invite: &Message, response: &Message) -> Message {
    let uri = invite
        .request_uri()
        .cloned()
        .expect("an INVITE has a Request-URI");
    let mut ack = Message::request(Method::Ack, uri);
    if let Some(v) = invite.headers.get(&HeaderName::Via) {
        let top = sip_message::split_commas(v)[0].to_owned();
        ack.headers.push(HeaderName::Via, top);
    }
    for name in [HeaderName::MaxForwards, HeaderName::From] {
        if let Some(v) = invite.headers.get(&name) {
            ack.headers.push(name, v);
        }
    }
    if let Some(to) = response.headers.get(&HeaderName::To) {
        ack.headers.push(HeaderName::To, to);
    }
    if let Some(c) = invite.call_id() {
        ack.headers.push(HeaderName::CallId, c);
    }
    if let Ok(cseq) = invite.cseq() {
        ack.headers
            .push(HeaderName::CSeq, format!("{} ACK", cseq.seq));
    }
    for r in invite.headers.get_all(&HeaderName::Route) {
        ack.headers.push(HeaderName::Route, r);
    }
    ack
}

impl TransactionLayer {
    /// Starts a client transaction for `request`, whose top Via must carry a fresh
    /// RFC 3261 branch (see [`crate::new_branch`]).
    pub fn send_request(&self, request: Message, target: Target) -> ClientTransaction {
        let (ev_tx, ev_rx) = mailbox();
        self.start_client(request, target, Sink::Own(ev_tx));
        ClientTransaction { events: ev_rx }
    }

    /// Like [`Self::send_request`], reporting into a queue shared with other branches,
    /// tagged with `branch`.
    pub fn send_request_tagged(
        &self,
        request: Message,
        target: Target,
        branch: usize,
        sink: Sender<(usize, ClientEvent)>,
    ) {
        self.start_client(request, target, Sink::Tagged(branch, sink));
    }

    fn start_client(&self, request: Message, target: Target, ev_tx: Sink) {
        let (resp_tx, mut resp_rx) = mailbox::<Inbound>();
        let branch = request
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let method = request.method().cloned().unwrap_or(Method::Options);
        let key = (branch, method.clone());
        self.inner.client.lock().insert(key.clone(), resp_tx);
        let layer = self.clone();
        tokio::spawn(async move {
            let timers = layer.inner.timers;
            let is_invite = method == Method::Invite;
            let bytes = layer.inner.wire(&target, &request);
            let sent = layer.inner.transports.send(target, bytes.clone()).await;
            let (reliable, target) = match sent {
                Ok(src) => (
                    src.transport.is_reliable(),
                    match src.connection {
                        Some(id) => Target::Connection { id, fallback: None },
                        None => target,
                    },
                ),
                Err(e) => {
                    ev_tx.send(ClientEvent::TransportError(e.to_string()));
                    layer.inner.client.lock().remove(&key);
                    return;
                }
            };
            let start = Instant::now();
            let timeout_at = start + timers.t1 * 64; // Timer B / F
            let mut interval = timers.t1; // Timer A / E
            let mut next_retransmit = if reliable {
                None
            } else {
                Some(start + interval)
            };
            let mut proceeding = false;
            let mut final_deadline: Option<Instant> = None; // Timer D / K / M
            loop {
                let wake = [
                    Some(timeout_at).filter(|_| final_deadline.is_none()),
                    next_retransmit,
                    final_deadline,
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(timeout_at);
                tokio::select! {
                    r = resp_rx.recv() => {
                        let Some(inbound) = r else { break };
                        let resp = &inbound.message;
                        let status = match resp.start { StartLine::Response { status, .. } => status, _ => continue };
                        if let Some(_d) = final_deadline {
                            // Completed/Accepted: absorb, re-ACK non-2xx, pass up 2xx (RFC 6026).
                            if is_invite && status >= 300 {
                                let _ = layer.inner.transports.send(target, layer.inner.wire(&target, &ack_for(&request, resp))).await;
                            } else if is_invite && (200..300).contains(&status) {
                                ev_tx.send(ClientEvent::Response(Box::new(inbound)));
                            }
                            continue;
                        }
                        if status < 200 {
                            if !proceeding {
                                proceeding = true;
                                // §17.1.1.2: INVITE stops retransmitting; non-INVITE
                                // continues at T2 (§17.1.2.2).
                                next_retransmit = if is_invite || reliable { None } else { Some(Instant::now() + timers.t2) };
                                interval = timers.t2;
                            }
                            ev_tx.send(ClientEvent::Response(Box::new(inbound)));
                            continue;
                        }
                        next_retransmit = None;
                        if is_invite && status >= 300 {
                            let _ = layer.inner.transports.send(target, layer.inner.wire(&target, &ack_for(&request, resp))).await;
                            final_deadline = Some(Instant::now() + if reliable { std::time::Duration::ZERO } else { std::time::Duration::from_secs(32) });
                        } else if is_invite {
                            final_deadline = Some(Instant::now() + timers.t1 * 64);
                        } else {
                            final_deadline = Some(Instant::now() + if reliable { std::time::Duration::ZERO } else { timers.t4 });
                        }
                        ev_tx.send(ClientEvent::Response(Box::new(inbound)));
                    }
                    _ = sleep_until(wake) => {
                        let now = Instant::now();
                        if let Some(d) = final_deadline {
                            if now >= d { break; }
                            continue;
                        }
                        if now >= timeout_at {
                            ev_tx.send(ClientEvent::Timeout);
                            break;
                        }
                        if let Some(at) = next_retransmit {
                            if now >= at {
                                let _ = layer.inner.transports.send(target, bytes.clone()).await;
                                interval = if is_invite { interval * 2 } else { (interval * 2).min(timers.t2) };
                                next_retransmit = Some(now + interval);
                            }
                        }
                    }
                }
            }
            layer.inner.client.lock().remove(&key);
        });
    }
}

/// §9.1: a CANCEL for a pending INVITE (same Request-URI, Call-ID, To, From, CSeq number
/// and top Via as the INVITE).
pub fn cancel_for(invite: &Message) -> Message {
    let uri = invite
        .request_uri()
        .cloned()
        .expect("an INVITE has a Request-URI");
    let mut cancel = Message::request(Method::Cancel, uri);
    if let Some(v) = invite.headers.get(&HeaderName::Via) {
        cancel
            .headers
            .push(HeaderName::Via, sip_message::split_commas(v)[0]);
    }
    for name in [
        HeaderName::MaxForwards,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
    ] {
        if let Some(v) = invite.headers.get(&name) {
            cancel.headers.push(name, v);
        }
    }
    if let Ok(cseq) = invite.cseq() {
        cancel
            .headers
            .push(HeaderName::CSeq, format!("{} CANCEL", cseq.seq));
    }
    for r in invite.headers.get_all(&HeaderName::Route) {
        cancel.headers.push(HeaderName::Route, r);
    }
    cancel
}
