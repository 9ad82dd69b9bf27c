//! Load generator for the Lync dialect's signed traffic (used by `bench/lync.sh`).
//!
//! PAIRS pairs of Lync-style clients sign in over TCP with NTLM (MS-SIPAE), each pair opens
//! a session-mode IM dialog (INVITE `m=message`), and the first of each pair then keeps
//! WINDOW in-dialog MESSAGEs outstanding for SECONDS, every one signed; the second answers
//! each 200. So each MESSAGE costs the server a signature check, the IM service's
//! accounting, two signatures (the request to the callee, the 200 to the caller) and the
//! check of the callee's signed 200.
//! Prints the MESSAGEs completed per second and the latency percentiles.
//!
//! Users `lu<N>a` / `lu<N>b` at DOMAIN with password `pw-lu<N>a` … must exist.
//!
//! Usage: lync_load ADDR DOMAIN PAIRS WINDOW SECONDS [SERVER_PID]
//!   e.g. lync_load 127.0.0.1:5060 example.com 20 4 10 $(pidof switchboard)
//! With SERVER_PID it also reports the server's CPU over the measured interval (100 % =
//! one core, from /proc).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use sip_message::{frame_stream, parse_datagram, parse_stream_message, AuthHeader, Frame};
use sip_message::{HeaderName, Message};
use sipae::{signature_input, SignatureContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REALM: &str = "SIP Communications Service";

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    local: SocketAddr,
}

impl Conn {
    async fn send(&mut self, m: &Message) -> Result<()> {
        self.stream.write_all(&m.encode()).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Message> {
        loop {
            match frame_stream(&self.buf, 1 << 20).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                Frame::Message(n) => {
                    let m = parse_stream_message(&self.buf[..n])
                        .map_err(|e| anyhow::anyhow!("unparsable message: {e:?}"))?;
                    self.buf.drain(..n);
                    return Ok(m);
                }
                Frame::Ping(n) | Frame::Skip(n) => {
                    self.buf.drain(..n);
                }
                Frame::Incomplete => {
                    let mut chunk = [0u8; 65536];
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("server closed the connection");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// The next response (requests meanwhile answered 200).
    async fn response(&mut self) -> Result<Message> {
        loop {
            let m = self.recv().await?;
            if m.is_request() {
                let ok = m.response(200, Some("load"));
                self.send(&ok).await?;
                continue;
            }
            if m.status().is_some_and(|s| s >= 200) {
                return Ok(m);
            }
        }
    }
}

/// A signed-in client: its connection and NTLM association.
struct Client {
    conn: Conn,
    user: String,
    domain: String,
    session: ntlm::Session,
    opaque: String,
    targetname: String,
    cnum: u32,
    cseq: u32,
}

fn hex_rand() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[allow(clippy::too_many_arguments)]
fn request(
    local: SocketAddr,
    user: &str,
    method: &str,
    uri: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
) -> Result<Message> {
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:{user}@{}:{};transport=tcp>\r\nContent-Length: 0\r\n\r\n",
        hex_rand(),
        local.ip(),
        local.port()
    );
    parse_datagram(text.as_bytes()).map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn ctx<'a>(rand: &'a str, num: &'a str, targetname: &'a str) -> SignatureContext<'a> {
    SignatureContext {
        protocol: "NTLM",
        rand,
        num,
        realm: REALM,
        targetname,
        version: 4,
    }
}

fn ntlm_challenge(r: &Message) -> Option<AuthHeader> {
    r.headers
        .get_all(&HeaderName::WwwAuthenticate)
        .filter_map(|v| AuthHeader::parse(v).ok())
        .find(|a| a.scheme == "NTLM")
}

impl Client {
    /// MS-SIPAE §3.2.5.1: REGISTER, 401 (offer), REGISTER, 401 (CHALLENGE), REGISTER
    /// with the AUTHENTICATE and a signature, 200.
    async fn sign_in(addr: SocketAddr, user: &str, domain: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            local,
        };
        let aor = format!("sip:{user}@{domain}");
        let call_id = format!("{}@load", hex_rand());
        let tag = hex_rand();
        let register = |cseq: u32| -> Result<Message> {
            let mut m = request(
                local,
                user,
                "REGISTER",
                &format!("sip:{domain}"),
                &format!("<{aor}>;tag={tag}"),
                &format!("<{aor}>"),
                &call_id,
                cseq,
            )?;
            m.headers.push(
                HeaderName::Supported,
                "gruu-10, adhoclist, msrtc-event-categories",
            );
            m.headers
                .push(HeaderName::from_wire("ms-keep-alive"), "UAC;hop-hop=yes");
            Ok(m)
        };
        conn.send(&register(1)?).await?;
        let r = conn.response().await?;
        let offer = ntlm_challenge(&r).context("no NTLM offer")?;
        let targetname = offer.param("targetname").unwrap_or_default().to_owned();
        let mut m = register(2)?;
        m.headers.push(
            HeaderName::Authorization,
            format!("NTLM qop=\"auth\", realm=\"{REALM}\", targetname=\"{targetname}\", gssapi-data=\"\", version=4"),
        );
        conn.send(&m).await?;
        let r = conn.response().await?;
        let ch = ntlm_challenge(&r).context("no NTLM challenge")?;
        let opaque = ch.param("opaque").context("no opaque")?.to_owned();
        let b64 = base64::engine::general_purpose::STANDARD;
        let challenge = ntlm::client::Challenge::parse(
            &b64.decode(ch.param("gssapi-data").unwrap_or_default())?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (_, auth, session) = ntlm::client::authenticate(
            &challenge,
            &ntlm::client::Credentials {
                user: &format!("{user}@{domain}"),
                domain: "",
                workstation: "LOAD",
                nt_hash: ntlm::nt_hash(&format!("pw-{user}")),
                client_challenge: rand::random(),
                timestamp: 0,
                random_session_key: rand::random(),
            },
        );
        let mut m = register(3)?;
        let sig = session.client_signature(
            100,
            signature_input(&m, &ctx("0a1b2c3d", "1", &targetname)).as_bytes(),
        );
        m.headers.push(
            HeaderName::Authorization,
            format!(
                "NTLM qop=\"auth\", opaque=\"{opaque}\", realm=\"{REALM}\", targetname=\"{targetname}\", gssapi-data=\"{}\", version=4, crand=\"0a1b2c3d\", cnum=\"1\", response=\"{}\"",
                b64.encode(auth),
                hex::encode_upper(sig)
            ),
        );
        conn.send(&m).await?;
        let r = conn.response().await?;
        if r.status() != Some(200) {
            bail!("{user} not signed in: {:?}", r.status());
        }
        Ok(Client {
            conn,
            user: user.to_owned(),
            domain: domain.to_owned(),
            session,
            opaque,
            targetname,
            cnum: 1,
            cseq: 10,
        })
    }

    fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    fn contact(&self) -> String {
        format!(
            "sip:{}@{}:{};transport=tcp",
            self.user,
            self.conn.local.ip(),
            self.conn.local.port()
        )
    }

    fn sign(&mut self, m: &mut Message) {
        self.cnum += 1;
        let cnum = self.cnum.to_string();
        let sig = self.session.client_signature(
            100,
            signature_input(m, &ctx("5eed0001", &cnum, &self.targetname)).as_bytes(),
        );
        m.headers.push(
            HeaderName::Authorization,
            format!(
                "NTLM qop=\"auth\", opaque=\"{}\", realm=\"{REALM}\", targetname=\"{}\", crand=\"5eed0001\", cnum=\"{cnum}\", response=\"{}\"",
                self.opaque,
                self.targetname,
                hex::encode_upper(sig)
            ),
        );
    }
}

/// One pair: sign-ins, the session, then the signed MESSAGE loop. Returns each
/// MESSAGE's completion time and latency.
async fn pair(
    addr: SocketAddr,
    domain: String,
    n: usize,
    window: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(Instant, Duration)>> {
    let mut a = Client::sign_in(addr, &format!("lu{n}a"), &domain).await?;
    let mut b = Client::sign_in(addr, &format!("lu{n}b"), &domain).await?;
    let call_id = format!("{}@load", hex_rand());
    let from = format!("<{}>;tag={}", a.aor(), hex_rand());
    a.cseq += 1;
    let mut invite = request(
        a.conn.local,
        &a.user,
        "INVITE",
        &b.aor(),
        &from,
        &format!("<{}>", b.aor()),
        &call_id,
        a.cseq,
    )?;
    invite.headers.push(HeaderName::Supported, "ms-sender");
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n",
    );
    a.sign(&mut invite);
    a.conn.send(&invite).await?;
    // The callee answers the INVITE with its Contact: the dialog's remote target.
    let got = loop {
        let m = b.conn.recv().await?;
        if m.method().is_some_and(|x| x.to_string() == "INVITE") {
            break m;
        }
    };
    let mut ok = got.response(200, Some("callee"));
    ok.headers
        .push(HeaderName::Contact, format!("<{}>", b.contact()));
    // A Lync client signs its responses too (MS-SIPAE §3.3.5.2).
    b.sign(&mut ok);
    b.conn.send(&ok).await?;
    let answer = a.conn.response().await?;
    if answer.status() != Some(200) {
        bail!("INVITE answered {:?}", answer.status());
    }
    let to = answer.headers.get(&HeaderName::To).unwrap_or("").to_owned();
    let target = b.contact();

    // The callee answers every request 200 until the connection ends.
    let callee = tokio::spawn(async move {
        while let Ok(m) = b.conn.recv().await {
            if m.is_request() && m.method().is_some_and(|x| x.to_string() != "ACK") {
                let mut r = m.response(200, Some("callee"));
                b.sign(&mut r);
                if b.conn.send(&r).await.is_err() {
                    break;
                }
            }
        }
    });

    let mut sent_at: HashMap<u32, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let send_one = |a: &mut Client, sent_at: &mut HashMap<u32, Instant>| -> Result<Message> {
        a.cseq += 1;
        let mut m = request(
            a.conn.local,
            &a.user,
            "MESSAGE",
            &target,
            &from,
            &to,
            &call_id,
            a.cseq,
        )?;
        m.headers
            .push(HeaderName::ContentType, "text/plain; charset=UTF-8");
        m.body = bytes::Bytes::from_static(b"signed load message");
        a.sign(&mut m);
        sent_at.insert(a.cseq, Instant::now());
        Ok(m)
    };
    for _ in 0..window {
        let m = send_one(&mut a, &mut sent_at)?;
        a.conn.send(&m).await?;
    }
    while !stop.load(Ordering::Relaxed) {
        let r = a.conn.recv().await?;
        let Some(status) = r.status() else { continue };
        if status < 200 {
            continue;
        }
        if status != 200 {
            bail!("MESSAGE answered {status}");
        }
        if let Some(t) = r.cseq().ok().and_then(|c| sent_at.remove(&c.seq)) {
            latencies.push((Instant::now(), t.elapsed()));
        }
        let m = send_one(&mut a, &mut sent_at)?;
        a.conn.send(&m).await?;
    }
    callee.abort();
    Ok(latencies)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        bail!("usage: lync_load ADDR DOMAIN PAIRS WINDOW SECONDS [SERVER_PID]");
    }
    let server_pid: Option<u32> = args.get(6).map(|p| p.parse()).transpose()?;
    let addr: SocketAddr = args[1].parse()?;
    let domain = args[2].clone();
    let pairs: usize = args[3].parse()?;
    let window: usize = args[4].parse()?;
    let seconds: u64 = args[5].parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..pairs)
        .map(|n| tokio::spawn(pair(addr, domain.clone(), n, window, stop.clone())))
        .collect();
    // Sign-ins and sessions first; the measured interval starts after a short warm-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = server_pid.and_then(cpu_ticks);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let cpu_after = server_pid.and_then(cpu_ticks);
    let elapsed = (ended - started).as_secs_f64();
    let mut all = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            // Only what completed inside the measured interval counts.
            Ok(Ok(Ok(l))) => all.extend(
                l.into_iter()
                    .filter(|(at, _)| *at >= started && *at <= ended)
                    .map(|(_, d)| d),
            ),
            Ok(Ok(Err(e))) => eprintln!("pair failed: {e:#}"),
            _ => eprintln!("pair did not finish"),
        }
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let cpu = match (cpu_before, cpu_after) {
        // Clock ticks are 1/100 s on Linux: ticks per second of wall time = percent.
        (Some(b), Some(a)) => format!(" server_cpu_pct={:.0}", (a - b) as f64 / elapsed),
        _ => String::new(),
    };
    println!(
        "messages={} seconds={:.1} rate={:.0} p50_ms={:.2} p99_ms={:.2}{cpu}",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// utime + stime of a process, in clock ticks (proc(5)).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
