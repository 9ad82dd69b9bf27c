"""The hostile suite: Switchboard attacked as an outsider would, with nothing but packets.

Attackers send from 127.0.0.2 and up (one address per attack class, so a ban earned by
one attack does not hide the next), the legitimate users from 127.0.0.1. After every
attack the suite asserts that the server process is alive, that UDP still answers, that
a user still signs in over UDP and TCP and delivers an IM within seconds, and that the
server's open descriptors and resident memory stayed bounded. Everything is bounded in
time and runs on loopback only; the server is stopped by pid at the end.

Usage: SWITCHBOARD_BIN=target/debug/switchboard python3 tests/hostile/hostile.py [ATTACK...]
"""
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'interop'))
sys.path.insert(0, HERE)
import sbtest  # noqa: E402
from siplite import Endpoint, Msg, rand  # noqa: E402

ROOT = sbtest.ROOT
DOMAIN = '127.0.0.1'

# Tighter than the defaults where the defaults would make the suite slow (deadlines) or
# need thousands of sockets (connection caps); the rest are the shipped defaults.
CONFIG = '''
[sip]
max_connections = 150
max_message_size = 32768

[limits]
max_connections_per_source = 100
first_message_secs = 3
message_secs = 3
tls_handshake_secs = 3
auth_lockout_after = 5
'''

# HOSTILE_LEGACY=1 leaves out the [limits] section, to run the suite against a build from
# before it existed and see which checks fail there.
if os.environ.get('HOSTILE_LEGACY'):
    CONFIG = CONFIG.split('[limits]')[0]

RSS_GROWTH_LIMIT_KIB = 160 * 1024   # a debug build; what matters is "bounded", not small
FD_SLACK = 40

R = sbtest.Results('hostile')


def attacker(n):
    return '127.0.0.%d' % (1 + n)


class Victim:
    def __init__(self):
        self.server = sbtest.Server(['alice', 'bob', 'mallory'], domain=DOMAIN, config=CONFIG)
        self.udp = ('127.0.0.1', self.server.port)
        self.tcp = ('127.0.0.1', self.server.port)
        self.tls = ('127.0.0.1', self.server.tls_port)
        self.pid = self.server.proc.pid
        ca = os.path.join(self.server.data, 'tls', 'ca.pem')
        self.tls_ctx = ssl.create_default_context(cafile=ca)
        self.baseline_rss = None
        self.baseline_fds = None

    def rss_kib(self):
        with open('/proc/%d/status' % self.pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir('/proc/%d/fd' % self.pid))

    def status(self):
        with urllib.request.urlopen('http://127.0.0.1:%d/status' % self.server.http_port, timeout=5) as r:
            return json.loads(r.read())

    def alive(self):
        return self.server.proc.poll() is None

    def udp_answers(self):
        s = Endpoint('udp', self.udp, '127.0.0.1', user='probe', domain=DOMAIN)
        try:
            s.send(s.request('OPTIONS', 'sip:%s' % DOMAIN, to='sip:%s' % DOMAIN))
            m = s.recv(3)
            return m is not None and m.status is not None
        finally:
            s.close()

    def im_works(self, transport='tcp'):
        """bob signs in over `transport`, alice over UDP; alice's IM reaches bob."""
        addr = self.tls if transport == 'tls' else self.tcp
        bob = Endpoint(transport, addr, '127.0.0.1', self.tls_ctx, user='bob', domain=DOMAIN)
        alice = Endpoint('udp', self.udp, '127.0.0.1', user='alice', domain=DOMAIN)
        try:
            r = bob.register('pw-bob')
            if r is None or r.status != 200:
                return 'bob REGISTER: %s' % (r.start if r else 'no answer')
            r = alice.register('pw-alice')
            if r is None or r.status != 200:
                return 'alice REGISTER: %s' % (r.start if r else 'no answer')
            text = ('hello ' + rand()).encode()
            msg = alice.request('MESSAGE', 'sip:bob@%s' % DOMAIN, to='sip:bob@%s' % DOMAIN,
                                extra=[('Content-Type', 'text/plain')], body=text)
            result = {}

            def bob_side():
                deadline = time.time() + 8
                while time.time() < deadline:
                    m = bob.recv(deadline - time.time())
                    if m is None:
                        return
                    if m.method == 'MESSAGE':
                        bob.send(m.response(200))
                        # Messages kept for bob while he was away come first.
                        if m.body == text:
                            result['body'] = m.body
                            return
                        continue
                    if m.method and m.method != 'ACK':
                        bob.send(m.response(200))

            t = threading.Thread(target=bob_side)
            t.start()
            r = alice.authenticated(msg, 'pw-alice', timeout=8)
            t.join(10)
            if r is None or r.status != 200:
                return 'MESSAGE: %s' % (r.start if r else 'no answer')
            if result.get('body') != text:
                return 'bob did not get the IM'
            # Sign out so the next check starts clean.
            bob.register('pw-bob', expires=0)
            alice.register('pw-alice', expires=0)
            return None
        finally:
            bob.close()
            alice.close()

    def settle_fds(self, limit, wait=20):
        deadline = time.time() + wait
        n = self.fds()
        while n > limit and time.time() < deadline:
            time.sleep(0.5)
            n = self.fds()
        return n

    def health(self, after, transport='tcp', held=0):
        """`held`: connections the attack still holds open on purpose."""
        ok = R.check('%s: server alive' % after, self.alive())
        if not ok:
            return False
        R.check('%s: UDP answers' % after, self.udp_answers())
        err = self.im_works(transport)
        R.check('%s: a user signs in (UDP, %s) and IMs' % (after, transport.upper()), err is None, err or '')
        limit = self.baseline_fds + FD_SLACK + held
        fds = self.settle_fds(limit)
        R.check('%s: descriptors bounded' % after, fds <= limit,
                '%d open, baseline %d, held on purpose %d' % (fds, self.baseline_fds, held))
        rss = self.rss_kib()
        R.check('%s: memory bounded' % after, rss <= self.baseline_rss + RSS_GROWTH_LIMIT_KIB,
                '%d KiB, baseline %d KiB' % (rss, self.baseline_rss))
        return True


def udp_from(ip):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    return s


def tcp_from(ip, addr, timeout=3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((ip, 0))
    s.settimeout(timeout)
    s.connect(addr)
    return s


def closed_by_peer(s, wait):
    """True when the server closes `s` within `wait` seconds."""
    s.settimeout(wait)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


def options_text(ip, port, first_line=None):
    return ('%s\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s;rport\r\nMax-Forwards: 70\r\n'
            'From: <sip:x@%s>;tag=%s\r\nTo: <sip:%s>\r\nCall-ID: %s@h\r\nCSeq: 1 OPTIONS\r\n'
            'Content-Length: 0\r\n\r\n' % (first_line or 'OPTIONS sip:%s SIP/2.0' % DOMAIN, ip, port, rand(),
                                           DOMAIN, rand(), DOMAIN, rand())).encode()


# --- attacks --------------------------------------------------------------------------

def attack_panic_inputs(v):
    """Request lines with non-ASCII versions and schemes once panicked the parser: each
    datagram killed a UDP receive loop, each TCP one leaked a connection."""
    ip = attacker(1)
    s = udp_from(ip)
    port = s.getsockname()[1]
    lines = ['OPTIONS sip:x SIP\u00e9', 'OPTIONS sip:x SIP/\u00e9', 'OPTIONS s\u00e9\u00e9:x SIP/2.0',
             'OPTIONS sip\u00e9 SIP/2.0', 'OPTIONS sip:x S\U0001F600']
    for _ in range(40):
        for line in lines:
            s.sendto(options_text(ip, port, line), v.udp)
    for line in lines * 4:
        c = tcp_from(ip, v.tcp)
        c.sendall(options_text(ip, port, line))
        c.close()
    time.sleep(0.5)
    st = v.status()['protection']
    R.check('panic inputs: nothing panicked', st['panics_contained'] == 0, str(st['panics_contained']))
    v.health('panic inputs')


def attack_relay(v):
    """An unauthenticated ACK naming the server in its Route was relayed to whatever its
    Request-URI said; a response with our branch prefix to whatever its next Via said."""
    ip = attacker(2)
    by_udp = udp_from('127.0.0.1')
    by_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    by_tcp.bind(('127.0.0.1', 0))
    by_tcp.listen(16)
    by_tcp.settimeout(2)
    bu, bt = by_udp.getsockname(), by_tcp.getsockname()
    s = udp_from(ip)
    sp = s.getsockname()[1]
    server = '%s:%d' % v.udp
    for target in ['sip:x@%s:%d' % bu, 'sip:x@%s:%d;transport=tcp' % bt,
                   'sip:x@192.0.2.1:5060;transport=tcp', 'sip:x@10.255.255.1:5060;transport=tcp']:
        for cookie in ('', ';sbt=0011223344556677.8899aabbccddeeff'):
            ack = ('ACK %s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s\r\nRoute: <sip:%s;lr%s>\r\n'
                   'Max-Forwards: 70\r\nFrom: <sip:m@%s>;tag=1\r\nTo: <sip:v@%s>;tag=2\r\nCall-ID: %s@x\r\n'
                   'CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n' % (target, ip, sp, rand(), server, cookie, DOMAIN,
                                                                  DOMAIN, rand()))
            s.sendto(ack.encode(), v.udp)
    for proto, nxt in (('UDP', bu), ('TCP', bt)):
        resp = ('SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKsb0123456789abcdef.0.0011223344556677\r\n'
                'Via: SIP/2.0/%s %s:%d;branch=z9hG4bKv\r\nFrom: <sip:a@%s>;tag=1\r\nTo: <sip:b@%s>;tag=2\r\n'
                'Call-ID: %s@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n' % (server, proto, nxt[0], nxt[1],
                                                                               DOMAIN, DOMAIN, rand()))
        s.sendto(resp.encode(), v.udp)
    by_udp.settimeout(2)
    heard = []
    try:
        d, _ = by_udp.recvfrom(65536)
        heard.append(d[:60])
    except (socket.timeout, TimeoutError):
        pass
    try:
        c, a = by_tcp.accept()
        heard.append(('tcp connection', a))
        c.close()
    except (socket.timeout, TimeoutError):
        pass
    R.check('relay: nothing reached the bystander', not heard, repr(heard))
    by_udp.close()
    by_tcp.close()
    v.health('relay attempts')


def attack_guessing(v):
    """Digest guessing: about 10,000 guesses a second used to be possible, unlimited."""
    ip = attacker(3)
    e = Endpoint('udp', v.udp, ip, user='alice', domain=DOMAIN)
    answers = []
    started = time.time()
    for i in range(25):
        r = e.register('guess-%d' % i)
        answers.append((r.status if r else None, (r.get('Warning') or '') if r else ''))
    took = time.time() - started
    wrong = sum(1 for st, w in answers if st == 403 and 'wrong user name or password' in w)
    locked = sum(1 for st, w in answers if st == 403 and 'too many failed sign-ins' in w)
    R.check('guessing: every guess refused', all(st == 403 for st, _ in answers), repr(answers[:3]))
    R.check('guessing: at most 5 guesses judged, the rest refused unread (lockout)',
            wrong <= 5 and locked >= 20, 'judged %d, locked %d, %.1f s' % (wrong, locked, took))
    r = e.register('pw-alice')
    R.check('guessing: the right password from the guessing address is refused too',
            r is not None and r.status == 403)
    e.close()
    # An unknown user and a wrong password look alike.
    x = Endpoint('udp', v.udp, attacker(4), user='nobody', domain=DOMAIN)
    y = Endpoint('udp', v.udp, attacker(4), user='bob', domain=DOMAIN)
    a, b = x.register('wrong'), y.register('wrong')
    R.check('guessing: unknown user and wrong password answered alike',
            a is not None and b is not None and (a.status, a.get('Warning')) == (b.status, b.get('Warning')),
            '%s / %s' % (a and a.get('Warning'), b and b.get('Warning')))
    x.close()
    y.close()
    st = v.status()['protection']
    R.check('guessing: counted in status', st['sign_in_failures'] >= 5 and st['sign_in_lockouts'] >= 1, repr(st))
    v.health('password guessing')


def attack_connection_flood(v):
    """One address used to be able to hold every connection slot."""
    ip = attacker(5)
    held = []
    for _ in range(250):
        try:
            c = tcp_from(ip, v.tcp, timeout=2)
            # A real request first, so the first-message deadline does not close it:
            # what holds it open is the per-source cap alone.
            c.sendall(options_text(ip, c.getsockname()[1]))
            held.append(c)
        except OSError:
            break
    time.sleep(1)
    alive = [c for c in held if not closed_by_peer(c, 0.05)]
    R.check('connection flood: the source holds its share (100) and no more', 90 <= len(alive) <= 100,
            '%d of %d still open (server-wide limit 150)' % (len(alive), len(held)))
    # While the flood holds its share, others are served over TCP.
    v.health('connection flood (held)', held=len(alive))
    for c in held:
        c.close()
    fds = v.settle_fds(v.baseline_fds + FD_SLACK)
    R.check('connection flood: descriptors released after', fds <= v.baseline_fds + FD_SLACK, str(fds))


def attack_slowloris(v):
    """Headers trickled a byte at a time used to hold connections (and cost a core)."""
    ip = attacker(6)
    conns = [tcp_from(ip, v.tcp) for _ in range(60)]
    text = options_text(ip, 5060)
    deadline = time.time() + 8
    i = 0
    while time.time() < deadline and i < len(text):
        for c in conns:
            try:
                c.send(text[i:i + 1])
            except OSError:
                pass
        i += 1
        time.sleep(0.25)
    closed = sum(1 for c in conns if closed_by_peer(c, 0.2))
    R.check('slowloris: every trickling connection closed', closed == len(conns), '%d of %d' % (closed, len(conns)))
    for c in conns:
        c.close()
    silent = [tcp_from(ip, v.tcp) for _ in range(30)]
    closed = sum(1 for c in silent if closed_by_peer(c, 6))
    R.check('idle openers: closed at the first-message deadline', closed == len(silent),
            '%d of %d' % (closed, len(silent)))
    for c in silent:
        c.close()
    v.health('slowloris')


def attack_tls_unfinished(v):
    ip = attacker(7)
    conns = [tcp_from(ip, v.tls) for _ in range(60)]
    # Half say nothing; half start a ClientHello and stop.
    for c in conns[::2]:
        try:
            c.send(b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + os.urandom(20))
        except OSError:
            pass
    closed = sum(1 for c in conns if closed_by_peer(c, 6))
    R.check('unfinished TLS handshakes: closed at the deadline', closed == len(conns),
            '%d of %d' % (closed, len(conns)))
    for c in conns:
        c.close()
    v.health('unfinished TLS handshakes', transport='tls')


def attack_oversized(v):
    ip = attacker(8)
    c = tcp_from(ip, v.tcp)
    body = b'x' * 300_000
    head = ('MESSAGE sip:bob@%s SIP/2.0\r\nVia: SIP/2.0/TCP %s:5060;branch=z9hG4bK%s\r\nMax-Forwards: 70\r\n'
            'From: <sip:m@%s>;tag=1\r\nTo: <sip:bob@%s>\r\nCall-ID: %s@x\r\nCSeq: 1 MESSAGE\r\n'
            'Content-Length: %d\r\n\r\n' % (DOMAIN, ip, rand(), DOMAIN, DOMAIN, rand(), len(body))).encode()
    try:
        c.sendall(head + body)
    except OSError:
        pass
    c.settimeout(5)
    got = b''
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
    except OSError:
        pass
    R.check('oversized over TCP: 513 then closed', got.startswith(b'SIP/2.0 513'), repr(got[:40]))
    c.close()
    # A header section that never ends.
    c = tcp_from(ip, v.tcp)
    try:
        c.sendall(b'OPTIONS sip:x SIP/2.0\r\n' + b'X-Pad: ' + b'y' * 200_000)
    except OSError:
        pass
    R.check('endless header over TCP: closed', closed_by_peer(c, 5))
    c.close()
    u = udp_from(ip)
    up = u.getsockname()[1]
    big = ('MESSAGE sip:bob@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s\r\nMax-Forwards: 70\r\n'
           'From: <sip:m@%s>;tag=1\r\nTo: <sip:bob@%s>\r\nCall-ID: %s@x\r\nCSeq: 1 MESSAGE\r\n'
           'Content-Length: 60000\r\n\r\n' % (DOMAIN, ip, up, rand(), DOMAIN, DOMAIN, rand())).encode() + b'z' * 60000
    u.sendto(big, v.udp)
    u.settimeout(3)
    try:
        d, _ = u.recvfrom(65536)
    except OSError:
        d = b''
    R.check('oversized over UDP: 513', d.startswith(b'SIP/2.0 513'), repr(d[:30]))
    u.close()
    v.health('oversized messages')


def attack_malformed(v):
    ip = attacker(9)
    u = udp_from(ip)
    rnd = random.Random(4475)
    seeds = []
    tdir = os.path.join(ROOT, 'crates', 'sip-message', 'tests', 'data', 'rfc4475')
    if os.path.isdir(tdir):
        for name in sorted(os.listdir(tdir)):
            with open(os.path.join(tdir, name), 'rb') as f:
                seeds.append(f.read())
    seeds.append(options_text(ip, 5060))
    sent = 0
    for _ in range(1500):
        m = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 8)):
            op = rnd.randint(0, 2)
            p = rnd.randrange(len(m)) if m else 0
            if op == 0 and m:
                m[p] = rnd.randrange(256)
            elif op == 1:
                m[p:p] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
            elif m:
                del m[p:p + rnd.randint(1, 16)]
        u.sendto(bytes(m[:65000]), v.udp)
        sent += 1
        if sent % 100 == 0:
            time.sleep(0.05)   # stay under the per-source rate: the point is parsing, not flooding
    for seed in seeds[:40]:
        try:
            c = tcp_from(ip, v.tcp)
            c.sendall(seed)
            c.close()
        except OSError:
            pass
    time.sleep(1)
    R.check('malformed: nothing panicked', v.status()['protection']['panics_contained'] == 0)
    u.close()
    v.health('malformed messages')


def attack_xml_bomb(v):
    """An authenticated user PUBLISHes entity-expansion and deeply nested documents."""
    e = Endpoint('tcp', v.tcp, attacker(10), user='mallory', domain=DOMAIN)
    r = e.register('pw-mallory')
    R.check('xml bomb: mallory signs in', r is not None and r.status == 200)
    lol = '<!DOCTYPE lolz [<!ENTITY lol "lol">' + ''.join(
        '<!ENTITY lol%d "%s">' % (i, ('&lol%d;' % (i - 1) if i else '&lol;') * 10) for i in range(9)) + ']>'
    bombs = [
        '<?xml version="1.0"?>' + lol + '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:mallory@%s">'
        '<tuple id="t"><status><basic>open</basic></status><note>&lol8;</note></tuple></presence>' % DOMAIN,
        '<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:mallory@%s">' % DOMAIN
        + '<a>' * 50000 + '</a>' * 50000 + '</presence>',
    ]
    answers = []
    for doc in bombs:
        pub = e.request('PUBLISH', 'sip:mallory@%s' % DOMAIN, extra=[
            ('Event', 'presence'), ('Expires', '60'), ('Content-Type', 'application/pidf+xml')],
            body=doc.encode())
        r = e.authenticated(pub, 'pw-mallory', timeout=10)
        answers.append(r.status if r else None)
    R.check('xml bomb: each document answered', all(a is not None for a in answers), repr(answers))
    e.close()
    v.health('XML bombs')


def attack_reflector(v):
    """A spoofed INVITE used to get five answers (the 407 retransmitted by Timer G)."""
    ip = attacker(11)
    u = udp_from(ip)
    up = u.getsockname()[1]
    inv = ('INVITE sip:bob@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s;rport\r\nMax-Forwards: 70\r\n'
           'From: <sip:alice@%s>;tag=%s\r\nTo: <sip:bob@%s>\r\nCall-ID: %s@x\r\nCSeq: 1 INVITE\r\n'
           'Contact: <sip:alice@%s:%d>\r\nContent-Length: 0\r\n\r\n'
           % (DOMAIN, ip, up, rand(), DOMAIN, rand(), DOMAIN, rand(), ip, up)).encode()
    u.sendto(inv, v.udp)
    u.settimeout(6)
    n = 0
    deadline = time.time() + 6
    while time.time() < deadline:
        try:
            u.recvfrom(65536)
            n += 1
        except OSError:
            break
    R.check('reflector: one answer to one spoofed INVITE', n == 1, '%d answers' % n)
    u.close()
    v.health('reflection')


def attack_udp_flood(v):
    ip = attacker(12)
    u = udp_from(ip)
    up = u.getsockname()[1]
    datagrams = [options_text(ip, up) for _ in range(200)]
    started = time.time()
    for i in range(30000):
        u.sendto(datagrams[i % len(datagrams)], v.udp)
    sent_for = time.time() - started
    st = v.status()['protection']
    R.check('udp flood: the source was banned', st['bans'] >= 1 and st['requests_dropped_over_rate'] > 0,
            'bans %d, dropped %d (30,000 sent in %.1f s)' % (st['bans'], st['requests_dropped_over_rate'], sent_for))
    u.close()
    v.health('UDP flood')


def attack_user_state(v):
    """A signed-in user making the server hold state for them: ad-hoc lists naming users
    who do not exist (each became a presentity: 1,000 × 60 → +240 MiB), and filling
    someone's offline mailbox so nobody else can leave a message."""
    e = Endpoint('tcp', v.tcp, attacker(13), user='mallory', domain=DOMAIN)
    r = e.register('pw-mallory')
    R.check('user state: mallory signs in', r is not None and r.status == 200)
    before = v.status()['presentities']
    aor = 'sip:mallory@%s' % DOMAIN
    answers = []
    for n in range(40):
        ghosts = ''.join('<resource uri="sip:ghost%d-%d@%s"/>' % (n, i, DOMAIN) for i in range(60))
        doc = ('<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="%s" name="">'
               '<action name="subscribe" id="1"><adhocList>%s</adhocList><categoryList '
               'xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="state"/>'
               '</categoryList></action></batchSub>' % (aor, ghosts))
        e.call_id = rand() + '@hostile'
        sub = e.request('SUBSCRIBE', aor, to=aor, extra=[
            ('Event', 'presence'), ('Expires', '600'), ('Supported', 'eventlist'),
            ('Content-Type', 'application/msrtc-adrl-categorylist+xml')], body=doc.encode())
        r = e.authenticated(sub, 'pw-mallory', timeout=8)
        answers.append(r.status if r else None)
    after = v.status()['presentities']
    R.check('user state: 2,400 entries naming nobody hold no presentities', after - before <= 5,
            'presentities %d -> %d, answers %s' % (before, after, sorted(set(answers), key=str)))
    # bob is signed out: mallory fills his mailbox as far as one sender may.
    refused = None
    for i in range(30):
        m = e.request('MESSAGE', 'sip:bob@%s' % DOMAIN, to='sip:bob@%s' % DOMAIN,
                      extra=[('Content-Type', 'text/plain')], body=b'spam %d' % i)
        r = e.authenticated(m, 'pw-mallory')
        if r is not None and r.status == 480:
            refused = (i, r.get('Warning'))
            break
    R.check('user state: one sender fills only its share of a mailbox', refused is not None and refused[0] <= 20,
            repr(refused))
    e.close()
    a = Endpoint('udp', v.udp, '127.0.0.1', user='alice', domain=DOMAIN)
    m = a.request('MESSAGE', 'sip:bob@%s' % DOMAIN, to='sip:bob@%s' % DOMAIN,
                  extra=[('Content-Type', 'text/plain')], body=b'from alice')
    r = a.authenticated(m, 'pw-alice')
    R.check('user state: others can still leave bob a message', r is not None and r.status == 202,
            r.start if r else 'no answer')
    a.close()
    v.health('per-user state')


ATTACKS = [
    ('panic', attack_panic_inputs),
    ('relay', attack_relay),
    ('guessing', attack_guessing),
    ('connections', attack_connection_flood),
    ('slowloris', attack_slowloris),
    ('tls', attack_tls_unfinished),
    ('oversized', attack_oversized),
    ('malformed', attack_malformed),
    ('xml', attack_xml_bomb),
    ('reflector', attack_reflector),
    ('state', attack_user_state),
    ('udpflood', attack_udp_flood),
]


def main():
    wanted = set(sys.argv[1:])
    v = Victim()
    try:
        # Warm up (first sign-ins, allocator arenas) before taking the baseline.
        for _ in range(3):
            v.im_works('tcp')
        v.baseline_rss, v.baseline_fds = v.rss_kib(), v.fds()
        print('baseline: %d KiB RSS, %d descriptors' % (v.baseline_rss, v.baseline_fds), flush=True)
        for name, attack in ATTACKS:
            if wanted and name not in wanted:
                continue
            print('--- %s' % name, flush=True)
            try:
                attack(v)
            except Exception as e:  # a broken attack is a failed check, not a crash of the suite
                R.check('%s: ran' % name, False, repr(e))
            if not v.alive():
                break
    finally:
        v.server.stop()
    R.exit(v.server)


if __name__ == '__main__':
    main()
