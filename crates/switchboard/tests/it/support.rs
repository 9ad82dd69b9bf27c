//! Test support: a server on ephemeral loopback ports and a small SIP client that speaks
//! UDP, TCP or TLS with raw text. Digest answers are computed here with md-5/sha2
//! directly, independently of the server's sip-digest crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest as _, Md5};
use sha2::Sha256;
use sip_message::{parse_datagram, parse_stream_message, AuthHeader, Frame, HeaderName, Message};
use switchboard::config::{Listen, ServerConfig};
use switchboard::server::{PresenceSources, RunningServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub server: RunningServer,
    home: Option<Home>,
    crashed: bool,
}

/// Where a test server keeps its data: a data directory, and on a PostgreSQL test run
/// (`SWITCHBOARD_TEST_SERVER_STORE=postgres`, with `SWITCHBOARD_TEST_PG_URL`) a fresh
/// database of its own, dropped with it.
pub struct Home {
    pub dir: tempfile::TempDir,
    pg: Option<switchboard_store::testing::PgDatabase>,
}

impl Home {
    pub async fn new() -> Home {
        Home::in_dir(tempfile::tempdir().unwrap()).await
    }

    /// A home in `dir`, with a database of its own on a PostgreSQL run.
    pub async fn in_dir(dir: tempfile::TempDir) -> Home {
        let pg = if on_postgres() {
            Some(switchboard_store::testing::PgDatabase::create().await)
        } else {
            None
        };
        Home { dir, pg }
    }

    /// A data directory alone: the server is given its database by the test (a pool's
    /// front ends share one).
    pub fn dir_only() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    /// The server's own PostgreSQL database, on a PostgreSQL run.
    pub fn pg(&self) -> Option<&switchboard_store::testing::PgDatabase> {
        self.pg.as_ref()
    }

    /// The `--database` the server gets: none on SQLite.
    pub fn database(&self) -> Option<String> {
        self.pg.as_ref().map(|p| p.url.clone())
    }

    /// The server's data, opened as another process (the CLI) would.
    pub async fn data(&self) -> switchboard_store::data::Data {
        switchboard_store::data::open(self.database().as_deref(), self.dir.path())
            .await
            .unwrap()
    }
}

/// Whether this test run puts the servers on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("SWITCHBOARD_TEST_SERVER_STORE").is_ok_and(|v| v == "postgres")
}

/// For a test of SQLite itself (its file, its locks): skipped, with a note, on a
/// PostgreSQL run.
pub fn sqlite_only(test: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {test} is about the SQLite database file");
        return false;
    }
    true
}

impl TestServer {
    pub async fn start(users: &[&str]) -> TestServer {
        Self::start_with(users, |_| {}).await
    }

    /// Users are `name@example.com` with password `pw-name`.
    pub async fn start_with(users: &[&str], tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_in(Home::new().await, users, tweak).await
    }

    /// Starts a server over existing data (a restart).
    pub async fn start_in(
        home: Home,
        users: &[&str],
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        Self::start_over(home, users, tweak, |sources| sources).await
    }

    /// [`TestServer::start_in`], with the presence service's data seen through `wrap`
    /// (a layer that fails on demand).
    pub async fn start_over(
        home: Home,
        users: &[&str],
        tweak: impl FnOnce(&mut ServerConfig),
        wrap: impl FnOnce(PresenceSources) -> PresenceSources,
    ) -> TestServer {
        let data = home.data().await;
        for u in users {
            let a = switchboard_store::Address::parse(&format!("{u}@example.com")).unwrap();
            if data.directory.find(&a).await.unwrap().is_none() {
                data.directory
                    .add(&a, &format!("pw-{u}"), None)
                    .await
                    .unwrap();
            }
        }
        let mut cfg = ServerConfig::with_defaults(home.dir.path().to_path_buf());
        cfg.database = home.database();
        let lo = |p| Listen::On(SocketAddr::from(([127, 0, 0, 1], p)));
        cfg.sip_udp = lo(0);
        cfg.sip_tcp = lo(0);
        cfg.sip_tls = lo(0);
        cfg.http = Listen::Off;
        tweak(&mut cfg);
        let server = switchboard::server::start_with_data(cfg, wrap)
            .await
            .unwrap();
        TestServer {
            server,
            home: Some(home),
            crashed: false,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.as_ref().unwrap().dir.path().to_path_buf()
    }

    /// The server's data as another process sees it, after every CDR write the IM
    /// service has queued.
    pub async fn data(&self) -> switchboard_store::data::Data {
        self.server.im.flush_records().await;
        self.home.as_ref().unwrap().data().await
    }

    /// The `switchboard` command on this server's data (its data directory, and its
    /// database on a PostgreSQL run), as an operator runs it beside the server.
    pub fn cli(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("--data-dir").arg(self.data_dir());
        if let Some(url) = self.home().database() {
            cmd.env("SWITCHBOARD_DATABASE", url);
        }
        cmd
    }

    pub fn home(&self) -> &Home {
        self.home.as_ref().unwrap()
    }

    /// Stops as a crash would (IM sessions left open) and hands back its data.
    pub fn crash(mut self) -> Home {
        self.crashed = true;
        self.server.abort();
        self.home.take().unwrap()
    }

    pub fn addr(&self, t: Transport) -> SocketAddr {
        match t {
            Transport::Udp => self.server.sip_udp.unwrap(),
            Transport::Tcp => self.server.sip_tcp.unwrap(),
            Transport::Tls => self.server.sip_tls.unwrap(),
        }
    }

    pub async fn client(&self, t: Transport, user: &str) -> Client {
        Client::connect(self, t, user).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.crashed {
            self.server.shutdown_now();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Stream(Box<dyn Stream>, Vec<u8>),
}

/// A SIP client for one user (password `pw-<user>`).
pub struct Client {
    conn: Conn,
    pub transport: Transport,
    pub user: String,
    pub local: SocketAddr,
    pub cseq: u32,
    pub call_id: String,
    /// Port written in the Contact (defaults to the local port).
    pub contact_port: u16,
    /// Requests received (and answered 200) while waiting for a response.
    pub inbox: std::collections::VecDeque<Message>,
    /// Signs the responses this client sends (a Lync client on its security association
    /// signs everything, MS-SIPAE §3.3.5.2).
    pub response_signer: Option<ResponseSigner>,
    /// The server closed the stream (or it failed).
    pub closed: bool,
}

/// Signs a response in place.
pub type ResponseSigner = Box<dyn FnMut(&mut Message) + Send>;

pub fn rand_hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Client {
    pub async fn connect(server: &TestServer, t: Transport, user: &str) -> Client {
        Self::connect_from(server, t, user, [127, 0, 0, 1].into()).await
    }

    /// A TCP client of a server at `addr` (a process the test started).
    pub async fn connect_tcp(addr: SocketAddr, user: &str) -> std::io::Result<Client> {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let local = s.local_addr()?;
        Ok(Self::over(
            Conn::Stream(Box::new(s), Vec::new()),
            Transport::Tcp,
            user,
            local,
        ))
    }

    /// A TCP client over a stream the test set up itself (socket options).
    pub fn from_stream(_server: &TestServer, s: TcpStream, user: &str) -> Client {
        let local = s.local_addr().unwrap();
        Self::over(
            Conn::Stream(Box::new(s), Vec::new()),
            Transport::Tcp,
            user,
            local,
        )
    }

    fn over(conn: Conn, transport: Transport, user: &str, local: SocketAddr) -> Client {
        Client {
            conn,
            transport,
            user: user.to_owned(),
            local,
            cseq: 0,
            call_id: format!("{}@test", rand_hex()),
            contact_port: local.port(),
            inbox: Default::default(),
            response_signer: None,
            closed: false,
        }
    }

    /// A client whose packets come from `ip` (attackers use 127.0.0.2).
    pub async fn connect_from(
        server: &TestServer,
        t: Transport,
        user: &str,
        ip: std::net::IpAddr,
    ) -> Client {
        let target = server.addr(t);
        let tcp = || async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(ip, 0)).unwrap();
            sock.connect(target).await.unwrap()
        };
        let (conn, local) = match t {
            Transport::Udp => {
                let s = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
                let l = s.local_addr().unwrap();
                (Conn::Udp(s, target), l)
            }
            Transport::Tcp => {
                let s = tcp().await;
                let l = s.local_addr().unwrap();
                (Conn::Stream(Box::new(s), Vec::new()), l)
            }
            Transport::Tls => {
                let s = tcp().await;
                let l = s.local_addr().unwrap();
                let ca = switchboard::tls::generated_paths(&server.data_dir()).ca_cert;
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
                // Verified against the generated CA, for the IP address dialled.
                let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
                let tls = connector
                    .connect(name, s)
                    .await
                    .expect("TLS handshake with the generated CA");
                (Conn::Stream(Box::new(tls), Vec::new()), l)
            }
        };
        Self::over(conn, t, user, local)
    }

    pub async fn send_raw(&mut self, data: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s, to) => {
                s.send_to(data, *to).await.unwrap();
            }
            Conn::Stream(s, _) => {
                s.write_all(data).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    pub async fn send(&mut self, m: &Message) {
        let bytes = match self.response_signer.as_mut() {
            Some(sign) if !m.is_request() => {
                let mut signed = m.clone();
                sign(&mut signed);
                signed.encode()
            }
            _ => m.encode(),
        };
        self.send_raw(&bytes).await;
    }

    /// The next message, or None after `WAIT` (or when the server closed the stream).
    pub async fn recv(&mut self) -> Option<Message> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Message> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    async fn recv_inner(&mut self) -> Option<Message> {
        match &mut self.conn {
            Conn::Udp(s, _) => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = s.recv_from(&mut buf).await.ok()?;
                Some(parse_datagram(&buf[..n]).unwrap_or_else(|_| status_only(&buf[..n])))
            }
            Conn::Stream(s, buf) => loop {
                match sip_message::frame_stream(buf, 1 << 20).expect("server framing") {
                    Frame::Message(n) => {
                        let m = parse_stream_message(&buf[..n]).expect("server message parses");
                        buf.drain(..n);
                        return Some(m);
                    }
                    Frame::Ping(n) | Frame::Skip(n) => {
                        buf.drain(..n);
                    }
                    Frame::Incomplete => {
                        let mut chunk = [0u8; 8192];
                        let n = s.read(&mut chunk).await.unwrap_or_default();
                        if n == 0 {
                            self.closed = true;
                            return None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            },
        }
    }

    /// Raw bytes read from a stream (for keep-alive pongs and closes).
    pub async fn read_raw(&mut self, d: Duration) -> Option<Vec<u8>> {
        let Conn::Stream(s, buf) = &mut self.conn else {
            panic!("stream only")
        };
        if !buf.is_empty() {
            return Some(std::mem::take(buf));
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(d, s.read(&mut chunk)).await {
            Ok(Ok(n)) => Some(chunk[..n].to_vec()),
            _ => None,
        }
    }

    pub fn aor(&self) -> String {
        format!("sip:{}@example.com", self.user)
    }

    pub fn contact(&self) -> String {
        format!(
            "<sip:{}@{}:{};transport={}>",
            self.user,
            self.local.ip(),
            self.contact_port,
            self.transport.param()
        )
    }

    /// A request from this client with fresh branch and next CSeq.
    pub fn request(&mut self, method: &str, uri: &str, to: &str) -> Message {
        self.cseq += 1;
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {}:{};branch=z9hG4bK{};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{to}>\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
             Contact: {}\r\nContent-Length: 0\r\n\r\n",
            self.transport.via(),
            self.local.ip(),
            self.local.port(),
            rand_hex(),
            self.aor(),
            rand_hex(),
            self.call_id,
            self.cseq,
            self.contact()
        );
        parse_datagram(text.as_bytes()).unwrap()
    }

    /// A REGISTER for a device with the instance id `urn:uuid:<uuid>` that asks for GRUUs
    /// (RFC 5627 §4.1).
    pub fn gruu_register_request(&mut self, expires: Option<u32>, uuid: &str) -> Message {
        let mut r = self.register_request(expires);
        r.headers.set(
            HeaderName::Contact,
            format!("{};+sip.instance=\"<urn:uuid:{uuid}>\"", self.contact()),
        );
        r.headers.push(HeaderName::Supported, "gruu");
        r
    }

    pub fn register_request(&mut self, expires: Option<u32>) -> Message {
        let aor = self.aor();
        let mut m = self.request("REGISTER", "sip:example.com", &aor);
        if let Some(e) = expires {
            m.headers.push(HeaderName::Expires, e.to_string());
        }
        m
    }

    /// Sends `m`, answers one challenge with this user's password, returns the final response.
    pub async fn send_authenticated(&mut self, m: Message) -> Message {
        self.send_authenticated_with(m, None).await
    }

    pub async fn send_authenticated_with(&mut self, m: Message, password: Option<&str>) -> Message {
        self.send(&m).await;
        let first = self.final_response().await;
        if !matches!(first.status(), Some(401) | Some(407)) {
            return first;
        }
        let pw = password
            .map(str::to_owned)
            .unwrap_or(format!("pw-{}", self.user));
        let again = self.with_credentials(&m, &first, &pw, "MD5", 1);
        self.send(&again).await;
        self.final_response().await
    }

    /// The next final response (skipping provisionals). Requests that arrive meanwhile
    /// (the server delivering something) are answered 200 and kept in `inbox`.
    pub async fn final_response(&mut self) -> Message {
        loop {
            let m = self.recv().await.expect("a response");
            if m.is_request() {
                let ok = m.response(200, Some("inbox"));
                self.send(&ok).await;
                self.inbox.push_back(m);
                continue;
            }
            if m.status().is_some_and(|s| s >= 200) {
                return m;
            }
        }
    }

    /// Copies `orig` with a fresh branch and CSeq and adds an answer to `challenge`.
    pub fn with_credentials(
        &mut self,
        orig: &Message,
        challenge: &Message,
        pw: &str,
        alg: &str,
        nc: u32,
    ) -> Message {
        let (status_header, cred_header) = if challenge.status() == Some(401) {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        } else {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        };
        let ch = challenge
            .headers
            .get_all(&status_header)
            .map(|v| AuthHeader::parse(v).unwrap())
            .find(|a| {
                a.param("algorithm")
                    .unwrap_or("MD5")
                    .eq_ignore_ascii_case(alg)
            })
            .unwrap_or_else(|| panic!("no {alg} challenge in {challenge}"));
        let realm = ch.param("realm").unwrap().to_owned();
        let nonce = ch.param("nonce").unwrap().to_owned();
        self.answer(orig, cred_header, &realm, &nonce, pw, alg, nc)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        orig: &Message,
        header: HeaderName,
        realm: &str,
        nonce: &str,
        pw: &str,
        alg: &str,
        nc: u32,
    ) -> Message {
        let mut m = orig.clone();
        self.cseq += 1;
        let method = m.method().unwrap().to_string();
        m.headers
            .set(HeaderName::CSeq, format!("{} {method}", self.cseq));
        let via = m.headers.get(&HeaderName::Via).unwrap().to_owned();
        let new_via = format!(
            "{};branch=z9hG4bK{};rport",
            via.split(";branch=").next().unwrap(),
            rand_hex()
        );
        m.headers.set(HeaderName::Via, new_via);
        let h = |s: String| -> String {
            if alg == "SHA-256" {
                hex::encode(Sha256::digest(s.as_bytes()))
            } else {
                hex::encode(Md5::digest(s.as_bytes()))
            }
        };
        let uri = m.request_uri().unwrap().to_string();
        let ha1 = h(format!("{}:{realm}:{pw}", self.user));
        let ha2 = h(format!("{method}:{uri}"));
        let cnonce = rand_hex();
        let nc = format!("{nc:08x}");
        let resp = h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        m.headers.push(
            header,
            format!(
                "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
                self.user
            ),
        );
        m
    }

    pub async fn register(&mut self, expires: Option<u32>) -> Message {
        let r = self.register_request(expires);
        self.send_authenticated(r).await
    }

    /// An out-of-dialog OPTIONS to a user (routed like any request, never stored).
    pub fn options_to(&mut self, to_user: &str) -> Message {
        let to = format!("sip:{to_user}@example.com");
        self.request("OPTIONS", &to, &to)
    }

    pub fn message_to(&mut self, to_user: &str, text: &str) -> Message {
        let to = format!("sip:{to_user}@example.com");
        let mut m = self.request("MESSAGE", &to, &to);
        m.headers.remove(&HeaderName::Contact);
        m.headers.push(HeaderName::ContentType, "text/plain");
        m.body = bytes::Bytes::from(text.as_bytes().to_vec());
        m
    }

    /// Waits for a request and answers it with `status`.
    pub async fn answer_next_request(&mut self, status: u16) -> Option<Message> {
        loop {
            let m = self.recv().await?;
            if m.is_request() {
                let resp = m.response(status, Some("uas"));
                self.send(&resp).await;
                return Some(m);
            }
        }
    }
}

/// The next `n` requests `c` gets (each answered 200), those already in its inbox first.
pub async fn take(c: &mut Client, n: usize) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    while got.len() < n {
        if let Some(m) = c.inbox.pop_front() {
            got.push(m);
            continue;
        }
        let m = c
            .recv()
            .await
            .unwrap_or_else(|| panic!("{} of {n} requests arrived", got.len()));
        if m.is_request() {
            c.send(&m.response(200, Some("t"))).await;
            got.push(m);
        }
    }
    got
}

/// Sends a MESSAGE to `uri` (a user or a conference) and returns the final status.
pub async fn write_to(c: &mut Client, uri: &str, text: &str) -> u16 {
    let user = uri
        .trim_start_matches("sip:")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let mut m = c.message_to(&user, text);
    m.start = sip_message::StartLine::Request {
        method: sip_message::Method::Message,
        uri: sip_message::Uri::parse(uri).unwrap(),
    };
    m.headers.set(HeaderName::To, format!("<{uri}>"));
    status(&c.send_authenticated(m).await)
}

/// Sends `m`, answers its challenge, and leaves the final response to be read (after
/// the recipient answered).
pub async fn send_challenged(from: &mut Client, m: Message) {
    from.send(&m).await;
    let ch = from.final_response().await;
    let pw = format!("pw-{}", from.user);
    let again = from.with_credentials(&m, &ch, &pw, "MD5", 1);
    from.send(&again).await;
}

/// A response to a malformed request echoes the malformed headers, so it may not parse
/// strictly; the status line is what the tests need.
fn status_only(data: &[u8]) -> Message {
    let line = String::from_utf8_lossy(data)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let code = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    Message {
        start: sip_message::StartLine::Response {
            status: code,
            reason: String::new(),
        },
        headers: Default::default(),
        body: Default::default(),
    }
}

pub fn status(m: &Message) -> u16 {
    m.status().expect("a response")
}
