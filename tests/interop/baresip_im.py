#!/usr/bin/env python3
"""baresip (Debian 12, 1.0.0) against Switchboard: registration with Digest, pager-mode
MESSAGE both ways, a MESSAGE forked to both of a user's devices, a third person added
with /invite (group chat), and the CDR checked afterwards.

Usage: baresip_im.py udp|tcp|tls     (needs the switchboard binary built; see sbtest.py)

baresip is driven through its ctrl_tcp module (netstring JSON) and its 'cons' console,
where each incoming MESSAGE is printed as  sip:peer: "text".
"""
import json, os, re, socket, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbtest import Results, Server, stop_all, cdr_sessions, free_port, message_counts

ANSI = re.compile(r'\x1b\[[0-9;]*m')


def connect(port, timeout=15):
    """A TCP connection to baresip's port, retried while baresip starts."""
    end = time.time() + timeout
    while True:
        try:
            return socket.create_connection(('127.0.0.1', port), timeout=1)
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.1)


class Ctrl:
    """ctrl_tcp client: netstring-framed JSON commands and responses."""

    def __init__(self, port):
        self.sock = connect(port)
        self.buf, self.seq = b'', 0

    def _frame(self, timeout):
        self.sock.settimeout(timeout)
        while True:
            head, sep, rest = self.buf.partition(b':')
            if sep and head.isdigit() and len(rest) > int(head):
                n = int(head)
                self.buf = rest[n + 1:]
                return json.loads(rest[:n])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError('baresip closed its control socket')
            self.buf += chunk

    def cmd(self, command, params='', timeout=5):
        self.seq += 1
        token = 'q%d' % self.seq
        body = json.dumps({'command': command, 'params': params, 'token': token}).encode()
        self.sock.sendall(b'%d:%s,' % (len(body), body))
        end = time.time() + timeout
        while time.time() < end:
            msg = self._frame(max(0.05, end - time.time()))
            if msg.get('response') and msg.get('token') == token:
                return msg
        raise TimeoutError(command)


class Console:
    """The 'cons' module: after one key press, UI output (incoming IM) streams here."""

    def __init__(self, port):
        self.sock = connect(port)
        self.sock.sendall(b'r')
        self.text = ''

    def wait_for(self, pattern, timeout=8):
        end = time.time() + timeout
        while True:
            m = re.search(pattern, ANSI.sub('', self.text))
            if m or time.time() >= end:
                return m
            self.sock.settimeout(max(0.05, end - time.time()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return None
            self.text += data.decode(errors='replace')


class Baresip:
    def __init__(self, workdir, name, user, server, transport, contacts, presence=False, domain='127.0.0.1'):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        # A port picked free may be taken before baresip binds it (other programs open
        # connections meanwhile): then baresip does not come up, and it is started again
        # on fresh ports.
        for attempt in range(3):
            try:
                self._start(user, server, transport, contacts, presence, domain)
                break
            except OSError:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                if attempt == 2:
                    raise
        self.aor = 'sip:%s@%s' % (user, domain)

    def _start(self, user, server, transport, contacts, presence, domain):
        sip, self.ctrl_port, self.cons_port = free_port(both=True), free_port(), free_port()
        port = server.tls_port if transport == 'tls' else server.port
        host = getattr(server, 'host', '127.0.0.1')  # a pool's front end has an address of its own
        with open(os.path.join(self.dir, 'config'), 'w') as f:
            f.write('\n'.join([
                'poll_method epoll', 'sip_listen 127.0.0.1:%d' % sip, 'sip_trans_def %s' % transport,
                'audio_player none', 'audio_source none', 'audio_alert none', 'video_source none',
                'module_path /usr/lib/baresip/modules', 'module g711.so',
                'module_app account.so', 'module_app contact.so', 'module_app menu.so',
                'module_app ctrl_tcp.so', 'ctrl_tcp_listen 127.0.0.1:%d' % self.ctrl_port,
                'module_app cons.so', 'cons_listen 127.0.0.1:%d' % self.cons_port,
                # presence: PUBLISH open/closed (pubint) and SUBSCRIBE to ;presence=p2p contacts.
                'module_app presence.so' if presence else '',
                'dns_server 127.0.0.1:53', '']))
        with open(os.path.join(self.dir, 'accounts'), 'w') as f:
            f.write('<sip:%s@%s>;auth_user=%s;auth_pass=pw-%s;outbound="sip:%s:%d;transport=%s";regint=600%s\n'
                    % (user, domain, user, user, host, port, transport, ';pubint=300' if presence else ''))
        with open(os.path.join(self.dir, 'contacts'), 'w') as f:
            for c in contacts:
                # A user name, or a whole address (a conference's).
                uri = c if c.startswith('sip:') else 'sip:%s@%s' % (c, domain)
                f.write('"%s" <%s>%s\n' % (c, uri, ';presence=p2p' if presence else ''))
        self.log = open(self.dir + '.log', 'w')
        self.proc = subprocess.Popen(['baresip', '-f', self.dir], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ctrl = Ctrl(self.ctrl_port)
        self.cons = Console(self.cons_port)

    def registered(self, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            info = ANSI.sub('', self.ctrl.cmd('reginfo')['data'])
            if re.search(re.escape(self.aor) + r'\s+OK', info):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        try:
            self.ctrl.cmd('quit', timeout=2)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main():
    transport = sys.argv[1] if len(sys.argv) > 1 else 'udp'
    r = Results('baresip-' + transport)
    server = Server(['alice', 'bob', 'carol'])
    clients = []
    try:
        alice = Baresip(server.dir, 'alice', 'alice', server, transport, ['bob']); clients.append(alice)
        bob1 = Baresip(server.dir, 'bob1', 'bob', server, transport, ['alice']); clients.append(bob1)
        bob2 = Baresip(server.dir, 'bob2', 'bob', server, transport, ['alice']); clients.append(bob2)
        for c, who in ((alice, 'alice'), (bob1, 'bob device 1'), (bob2, 'bob device 2')):
            r.check('%s registers with Digest' % who, c.registered())
        status = json.loads(__import__('urllib.request').request.urlopen(
            'http://127.0.0.1:%d/status' % server.http_port, timeout=5).read())
        r.check('server counts 3 devices of 2 users', status['registered_devices'] == 3 and status['registered_users'] == 2, str(status))

        alice.ctrl.cmd('message', 'hello bob, from alice')
        for c, who in ((bob1, 'device 1'), (bob2, 'device 2')):
            m = c.cons.wait_for(r'sip:alice@127\.0\.0\.1: "hello bob, from alice"')
            r.check('bob %s receives alice\'s MESSAGE' % who, bool(m), '' if m else c.cons.text[-300:])
        bob1.ctrl.cmd('message', 'hi alice, bob here')
        m = alice.cons.wait_for(r'sip:bob@127\.0\.0\.1: "hi alice, bob here"')
        r.check('alice receives bob\'s reply', bool(m), '' if m else alice.cons.text[-300:])

        # A third person: alice types /invite in her chat with bob. The IM service answers
        # it (bob never sees the command) and opens a group chat holding all three.
        carol = Baresip(server.dir, 'carol', 'carol', server, transport, ['alice']); clients.append(carol)
        r.check('carol registers', carol.registered())
        alice.ctrl.cmd('message', '/invite carol@127.0.0.1')
        group = None
        for c, who in ((alice, 'alice'), (bob1, 'bob'), (carol, 'carol')):
            m = c.cons.wait_for(r'(sip:chat-[0-9a-f]+@127\.0\.0\.1): "\*\*\* alice started a group chat')
            r.check('%s is put in the group chat' % who, bool(m), '' if m else c.cons.text[-300:])
            group = m.group(1) if m else group
        r.check('bob never sees the command as a message', '/invite' not in bob1.cons.text, bob1.cons.text[-200:])

        # The CDR afterwards: the two-person session with its counts, and the group chat
        # that grew from it.
        pair, conf = cdr_sessions(server)
        counts = message_counts(pair[0]) if pair else {}
        r.check('CDR: one two-party session with 1 message each',
                len(pair) == 1 and counts == {'sip:alice@127.0.0.1': 1, 'sip:bob@127.0.0.1': 1}, str(counts))
        r.check('CDR: a conference escalated from it, organised by alice',
                len(conf) == 1 and conf[0]['escalated_from'] == pair[0]['id']
                and conf[0]['organiser'] == 'sip:alice@127.0.0.1' and len(conf[0]['participants']) == 3,
                json.dumps(conf)[:300])
    finally:
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
