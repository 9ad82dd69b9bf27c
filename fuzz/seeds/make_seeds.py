#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ (run from the
repository root or anywhere: paths are relative to this file). The seeds are small,
hand-made or taken from the tests: RFC 4475 messages (crates/sip-message/tests/data), the
pidgin-sipe capture (crates/sipae/tests/data, crates/ntlm/tests), the Lync documents of
crates/msrtc (unit tests and tests/damaged_documents.rs) and PIDF of switchboard-presence.
Targets whose input starts with a selector byte get it prepended here."""
import base64, pathlib, re, shutil

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = {}

def add(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    SEEDS.setdefault(target, []).append((name, data))

rfc4475 = sorted((ROOT / "crates/sip-message/tests/data/rfc4475").glob("*.dat"))

def sipae_message(path):
    # The data files left the bodies out: what is signed is in the header.
    text = path.read_text()
    return re.sub(r"Content-Length: *\d+", "Content-Length: 0", text).encode()

sipae = sorted((ROOT / "crates/sipae/tests/data").glob("*.sip"))

LYNC_INVITE = (
    "INVITE sip:bob@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 192.0.2.10:50000;branch=z9hG4bK77\r\n"
    "Max-Forwards: 70\r\n"
    "From: \"Alice\" <sip:alice@example.test>;tag=a1;epid=b34afb6ebb23\r\n"
    "To: <sip:bob@example.test>\r\n"
    "Call-ID: lync-1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@example.test;opaque=user:epid:x;gruu>;+sip.instance=\"<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954a>\"\r\n"
    "Supported: ms-text-format, ms-sender, timer\r\n"
    "ms-text-format: text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAA;ms-body=aGVsbG8gYm9i\r\n"
    "Content-Type: application/sdp\r\n"
    "\r\n"
    "v=0\r\no=- 0 0 IN IP4 192.0.2.10\r\ns=session\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=message 5060 sip null\r\na=accept-types:text/plain text/html\r\n"
)
PAGER = (
    "MESSAGE sip:chat-1a2b@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK78\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:carol@example.test>;tag=c1\r\n"
    "To: <sip:chat-1a2b@example.test>\r\n"
    "Call-ID: pager-1\r\n"
    "CSeq: 5 MESSAGE\r\n"
    "Content-Type: text/plain;charset=UTF-8\r\n"
    "Content-Length: 23\r\n"
    "\r\n"
    "/invite dave@example.test"[:23]
)
FOCUS_SUBSCRIBE = (
    "SUBSCRIBE sip:chat-1a2b@example.test;gruu;opaque=app:conf:focus:id:1a2b SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 192.0.2.10:50000;branch=z9hG4bK79\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.test>;tag=a2\r\n"
    "To: <sip:chat-1a2b@example.test;gruu;opaque=app:conf:focus:id:1a2b>\r\n"
    "Call-ID: focus-1\r\n"
    "CSeq: 1 SUBSCRIBE\r\n"
    "Contact: <sip:alice@example.test;opaque=user:epid:x;gruu>\r\n"
    "Event: conference\r\n"
    "Expires: 600\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)

for p in rfc4475:
    add("parse_datagram", p.stem, p.read_bytes())
for p in sipae:
    add("parse_datagram", "sipe-" + p.stem, sipae_message(p))
for name, m in [("lync-invite", LYNC_INVITE), ("pager", PAGER), ("focus-subscribe", FOCUS_SUBSCRIBE)]:
    add("parse_datagram", name, m)
    add("sdp", name, m)
for p in rfc4475:
    if p.stem in ("sdp01", "mpart01", "esc01", "unreason", "intmeth"):
        add("sdp", p.stem, p.read_bytes())
add("sdp", "ms-text-format", "text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAA;ms-body=aGVsbG8gYm9i")
add("sdp", "focus-uri", "sip:chat-1a2b@example.test;gruu;opaque=app:conf:chat:id:1a2b")

# sipae_signature: version byte, two respelling bytes, then the message.
for i, p in enumerate(sipae):
    add("sipae_signature", p.stem, bytes([4, i, 7 * i]) + sipae_message(p))
add("sipae_signature", "register-v2", b"\x02\x00\x00" + sipae_message(ROOT / "crates/sipae/tests/data/register_authenticate.sip"))

# header_views: a name-picking byte, then a value.
VALUES = [
    (0, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;received=[2001:db8::1];rport"),
    (1, "\"Alice A\" <sip:alice@example.test;transport=tls>;expires=3600;+sip.instance=\"<urn:uuid:085e0bd8-031c-5a0d-8d9a-f149aae6954a>\""),
    (2, "<sip:p1.example.test;lr>, <sip:[2001:db8::2]:5061;lr;transport=tcp>"),
    (5, "Bob <sips:bob%20b@example.test:5061;user=phone>;tag=x"),
    (7, "314159 INVITE"),
    (9, "70"),
    (14, "NTLM qop=\"auth\", opaque=\"9DC587BA\", realm=\"SIP Communications Service\", targetname=\"lync.example.test\", version=4, crand=\"fe8271a6\", cnum=\"1\", response=\"01000000DB9EF30E454B5AA264000000\""),
    (15, "Digest username=\"alice\", realm=\"example.test\", nonce=\"abc\", uri=\"sip:example.test\", response=\"0123456789abcdef0123456789abcdef\", algorithm=SHA-256"),
    (20, "<tel:+1-555-0100;phone-context=example.test>"),
    (0, "sip:alice@example.test;maddr=239.255.255.1;ttl=15?subject=hi&priority=urgent"),
]
for i, (pick, v) in enumerate(VALUES):
    add("header_views", f"value-{i}", bytes([pick]) + v.encode())

# Streams: messages with keep-alives between them.
msgs = [p.read_bytes() for p in rfc4475 if p.stem in ("intmeth", "dblreq", "mpart01", "esc01")]
stream = b"\r\n\r\n" + b"".join(m.replace(b"\n", b"\r\n") if b"\r\n" not in m else m for m in msgs) + b"\r\n"
enc_pager = PAGER.encode()
add("frame_stream", "pager-twice", b"\x10" + enc_pager + b"\r\n\r\n" + enc_pager)
add("frame_stream", "keepalives", b"\x02\r\n\r\n\r\n" + sipae_message(sipae[0]))
add("stream_framer_incremental", "pager-twice", b"\x40\x03\x00\x06\x1e" + b"\r\n\r\n" + enc_pager + b"\r\n" + enc_pager)
add("stream_framer_incremental", "sipe", b"\x80\x02\x10\x60" + b"".join(sipae_message(p) for p in sipae))
add("stream_framer_incremental", "small-limit", b"\x00\x01\x00" + enc_pager + enc_pager)
add("stream_framer_incremental", "no-length", b"\x20\x00" + FOCUS_SUBSCRIBE.replace("Content-Length: 0\r\n", "").encode())

# NTLM.
b64 = lambda s: base64.b64decode(s)
ntlm_test = (ROOT / "crates/ntlm/tests/sipe_capture.rs").read_text()
challenge = b64(re.search(r'const CHALLENGE: &str = "([^"]+)"', ntlm_test).group(1))
authenticate = b64(re.search(r'const AUTHENTICATE: &str = "([^"]+)"', ntlm_test).group(1))
add("ntlm_authenticate", "sipe", authenticate)
add("ntlm_messages", "authenticate-sipe", b"\x00" + authenticate)
add("ntlm_messages", "challenge-sipe", b"\x01" + challenge)
add("ntlm_messages", "signature", b"\x02" + bytes.fromhex("55829962" + "00" * 16) + bytes.fromhex("01000000DB9EF30E454B5AA264000000") + b"<NTLM><fe8271a6><1>")
add("ntlm_messages", "sign-in", b"\x03" + b"alice\x00EXAMPLE\x00WS\x00pw-alice\x00" + bytes(range(64)))

# Lync documents (crates/msrtc tests).
damaged = (ROOT / "crates/msrtc/tests/damaged_documents.rs").read_text()
samples = re.findall(r'r#"(.*?)"#', damaged, re.S)
for i, s in enumerate(samples):
    add("msrtc_documents", f"sample-{i}", s)
cccp_rs = (ROOT / "crates/msrtc/src/cccp.rs").read_text()
contacts_rs = (ROOT / "crates/msrtc/src/contacts.rs").read_text()
c3p_docs = [s for s in re.findall(r'r#"(.*?)"#', cccp_rs, re.S) + samples if s.replace('<?xml version="1.0"?>', "").startswith("<request")]
c3p_docs.append('<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="sip:switchboard@x;gruu;opaque=app:conf:focusfactory" from="sip:a@x" requestId="1"><getConferencingCapabilities/></request>')
c3p_docs.append('<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="sip:a@x" requestId="9"><modifyConferenceLock><conferenceKeys confEntity="F"/><locked>true</locked></modifyConferenceLock></request>')
for i, s in enumerate(c3p_docs):
    add("c3p_soap", f"c3p-{i}", b"\x00" + s.encode())
for i, s in enumerate([x for x in samples if x.startswith("<Conferencing")] + ['<Conferencing version="2.0"><focus-uri>sip:chat-1@d;gruu;opaque=app:conf:focus:id:1</focus-uri><subject>Plans &amp; &lt;ideas&gt;</subject></Conferencing>']):
    add("c3p_soap", f"invite-{i}", b"\x01" + s.encode())
env = lambda inner: '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/winrtc/2002/11/sip"><s:Body>' + inner + "</s:Body></s:Envelope>"
soaps = [x for x in samples if x.startswith("<s:Envelope")] + [
    env("<m:setContact><m:displayName>Carol</m:displayName><m:groups>1 2</m:groups><m:subscribed>true</m:subscribed><m:URI>sip:carol@example.test</m:URI><m:externalURI /><m:deltaNum>5</m:deltaNum></m:setContact>"),
    env("<m:deleteContact><m:URI>sip:carol@example.test</m:URI><m:deltaNum>6</m:deltaNum></m:deleteContact>"),
    env("<m:addGroup><m:name>Team</m:name><m:externalURI /></m:addGroup>"),
    env("<m:modifyGroup><m:groupID>2</m:groupID><m:name>Friends</m:name></m:modifyGroup>"),
    env("<m:deleteGroup><m:groupID>2</m:groupID></m:deleteGroup>"),
]
for i, s in enumerate(soaps):
    add("c3p_soap", f"soap-{i}", b"\x02" + s.encode())

pidf_rs = (ROOT / "crates/switchboard-presence/src/pidf.rs").read_text()
for i, s in enumerate(re.findall(r'r#"(<\?xml.*?|<presence.*?)"#', pidf_rs, re.S)):
    add("pidf", f"pidf-{i}", s)

# conference_info reads its input as arbitrary values: plain text is as good a start as any.
add("conference_info", "names", b"sip:chat-1@example.test\x00\x00\x00\x07Group chat\x00sip:chat-1@example.test;gruu\x00Alice\x00\x02sip:alice@example.test\x00Alice\x00presenter\x00\x01\x01")
add("conference_info", "ascii", bytes(range(32, 127)) * 2)

for target, seeds in sorted(SEEDS.items()):
    d = HERE / target
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for name, data in seeds:
        (d / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds")
