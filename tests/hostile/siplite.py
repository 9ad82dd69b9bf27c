"""A small SIP client for the hostile suite: builds requests, frames and parses what
comes back, answers Digest challenges (RFC 3261 §22, MD5, qop=auth). Written here for
these tests; every socket it opens is bound to a loopback source address the caller
chooses (attackers 127.0.0.2 and up, the legitimate users 127.0.0.1)."""
import hashlib
import os
import re
import socket
import time


def rand():
    return os.urandom(6).hex()


class Msg:
    def __init__(self, start, headers, body=b''):
        self.start, self.headers, self.body = start, headers, body

    @staticmethod
    def parse(data):
        head, _, body = data.partition(b'\r\n\r\n')
        lines = head.decode('utf-8', 'replace').split('\r\n')
        headers = []
        for line in lines[1:]:
            if ':' in line:
                n, v = line.split(':', 1)
                headers.append((n.strip(), v.strip()))
        return Msg(lines[0], headers, body)

    @property
    def status(self):
        if self.start.startswith('SIP/2.0 '):
            try:
                return int(self.start.split(' ')[1])
            except ValueError:
                return None
        return None

    @property
    def method(self):
        return None if self.start.startswith('SIP/') else self.start.split(' ')[0]

    def get(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def encode(self):
        out = self.start + '\r\n'
        for n, v in self.headers:
            if n.lower() != 'content-length':
                out += '%s: %s\r\n' % (n, v)
        out += 'Content-Length: %d\r\n\r\n' % len(self.body)
        return out.encode() + self.body

    def response(self, status, reason='OK', tag='uas'):
        hs = [(n, v) for n, v in self.headers if n.lower() in ('via', 'from', 'call-id', 'cseq')]
        to = self.get('To')
        if to and ';tag=' not in to:
            to += ';tag=' + tag
        hs.append(('To', to))
        return Msg('SIP/2.0 %d %s' % (status, reason), hs)


def digest_header(user, pw, method, uri, challenge, nc=1):
    realm = re.search(r'realm="([^"]*)"', challenge).group(1)
    nonce = re.search(r'nonce="([^"]*)"', challenge).group(1)
    h = lambda s: hashlib.md5(s.encode()).hexdigest()
    cnonce = rand()
    ncs = '%08x' % nc
    resp = h('%s:%s:%s:%s:auth:%s' % (h('%s:%s:%s' % (user, realm, pw)), nonce, ncs, cnonce, h('%s:%s' % (method, uri))))
    return ('Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s", algorithm=MD5, '
            'qop=auth, nc=%s, cnonce="%s"' % (user, realm, nonce, uri, resp, ncs, cnonce))


class Endpoint:
    """One SIP endpoint over UDP, TCP or TLS from a chosen local address."""

    def __init__(self, transport, server, local_ip='127.0.0.1', ssl_context=None, user='', domain='127.0.0.1'):
        self.transport, self.server, self.user, self.domain = transport, server, user, domain
        if transport == 'udp':
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_ip, 0))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind((local_ip, 0))
            self.sock.settimeout(5)
            self.sock.connect(server)
            if transport == 'tls':
                self.sock = ssl_context.wrap_socket(self.sock, server_hostname='127.0.0.1')
        self.local = self.sock.getsockname()
        self.buf = b''
        self.cseq = 0
        self.call_id = rand() + '@hostile'

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, msg):
        data = msg.encode() if isinstance(msg, Msg) else msg
        if self.transport == 'udp':
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv(self, timeout=5.0):
        """The next message, or None on timeout or close."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.transport == 'udp':
                    data, _ = self.sock.recvfrom(65536)
                    return Msg.parse(data)
                m = self._frame()
                if m is not None:
                    return m
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buf += chunk
            except (socket.timeout, TimeoutError):
                return None
            except OSError:
                return None

    def _frame(self):
        while self.buf.startswith(b'\r\n'):
            self.buf = self.buf[2:]
        end = self.buf.find(b'\r\n\r\n')
        if end < 0:
            return None
        head = self.buf[:end].decode('utf-8', 'replace')
        m = re.search(r'(?im)^(?:content-length|l)\s*:\s*(\d+)', head)
        n = int(m.group(1)) if m else 0
        total = end + 4 + n
        if len(self.buf) < total:
            return None
        msg = Msg.parse(self.buf[:total])
        self.buf = self.buf[total:]
        return msg

    def request(self, method, ruri, to=None, extra=(), body=b'', from_tag=None):
        self.cseq += 1
        proto = {'udp': 'UDP', 'tcp': 'TCP', 'tls': 'TLS'}[self.transport]
        aor = 'sip:%s@%s' % (self.user, self.domain)
        hs = [('Via', 'SIP/2.0/%s %s:%d;branch=z9hG4bK%s;rport' % (proto, self.local[0], self.local[1], rand())),
              ('Max-Forwards', '70'), ('From', '<%s>;tag=%s' % (aor, from_tag or rand())),
              ('To', '<%s>' % (to or aor)), ('Call-ID', self.call_id), ('CSeq', '%d %s' % (self.cseq, method)),
              ('Contact', '<sip:%s@%s:%d;transport=%s>' % (self.user, self.local[0], self.local[1], self.transport))]
        hs.extend(extra)
        return Msg('%s %s SIP/2.0' % (method, ruri), hs, body)

    def final(self, timeout=5.0, answer_requests=True):
        """The next final response; requests arriving meanwhile are answered 200."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.recv(deadline - time.time())
            if m is None:
                return None
            if m.method is not None:
                if answer_requests and m.method != 'ACK':
                    self.send(m.response(200))
                continue
            if m.status and m.status >= 200:
                return m
        return None

    def authenticated(self, msg, password, timeout=5.0):
        """Sends msg, answers one challenge with password; the final response."""
        self.send(msg)
        first = self.final(timeout)
        if first is None or first.status not in (401, 407):
            return first
        hdr = 'WWW-Authenticate' if first.status == 401 else 'Proxy-Authenticate'
        cred = 'Authorization' if first.status == 401 else 'Proxy-Authorization'
        method = msg.method
        uri = msg.start.split(' ')[1]
        again = Msg(msg.start, list(msg.headers), msg.body)
        self.cseq += 1
        again.headers = [(n, v) for n, v in again.headers if n.lower() not in ('cseq', 'via')]
        proto = {'udp': 'UDP', 'tcp': 'TCP', 'tls': 'TLS'}[self.transport]
        again.headers.insert(0, ('Via', 'SIP/2.0/%s %s:%d;branch=z9hG4bK%s;rport' % (
            proto, self.local[0], self.local[1], rand())))
        again.headers.append(('CSeq', '%d %s' % (self.cseq, method)))
        again.headers.append((cred, digest_header(self.user, password, method, uri, first.get(hdr))))
        self.send(again)
        return self.final(timeout)

    def register(self, password, expires=300):
        reg = self.request('REGISTER', 'sip:%s' % self.domain, extra=[('Expires', str(expires))])
        return self.authenticated(reg, password)
