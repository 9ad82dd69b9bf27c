#!/usr/bin/env python3
"""pidgin-sipe 1.25 (Debian 12), the Lync-dialect reference client, signs in to Switchboard over
TCP with NTLM (MS-SIPAE): the 401/401/200 handshake, and sipe checks the server's signature on the
200. A wrong password is refused. (The Lync services after sign-in are later work.)

pidgin-sipe is a libpurple plugin; it runs headless inside bitlbee (libpurple build) in inetd
mode, driven over IRC on a socketpair, so no port is opened. What it says comes from its own IRC
messages and its libpurple debug log (every SIP message and its signature checks).

Usage: sipe_signin.py      (needs bitlbee-libpurple, pidgin-sipe and the switchboard binary)
"""
import os, re, socket, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbtest import Results, Server, stop_all


class Sipe:
    """One bitlbee process hosting one sipe account."""

    def __init__(self, workdir):
        os.makedirs(workdir, exist_ok=True)
        conf = os.path.join(workdir, 'bitlbee.conf')
        with open(conf, 'w') as f:
            f.write('[settings]\nRunMode = Inetd\nAuthMode = Open\nConfigDir = %s\n' % workdir)
        self.debug_path = os.path.join(workdir, 'purple-debug.log')
        self.debug = open(self.debug_path, 'w')
        ours, theirs = socket.socketpair()
        # BITLBEE_DEBUG + PURPLE_*: libpurple's debug output, with every SIP message sipe
        # sends and receives, goes to stdout (our log file); IRC runs over fd 0.
        env = dict(os.environ, BITLBEE_DEBUG='1', PURPLE_VERBOSE_DEBUG='1', PURPLE_UNSAFE_DEBUG='1')
        self.proc = subprocess.Popen(['bitlbee', '-I', '-c', conf, '-d', workdir], stdin=theirs,
                                     stdout=self.debug, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        theirs.close()
        self.sock, self.buf, self.text = ours, b'', ''
        self.sock.settimeout(0.2)
        self.send('NICK tester')
        self.send('USER tester 0 * :tester')
        if not self.wait(r'JOIN :?&bitlbee', 15):
            raise RuntimeError('bitlbee did not start: ' + self.text[-500:])

    def send(self, line):
        self.sock.sendall(line.encode() + b'\r\n')

    def command(self, line):
        self.send('PRIVMSG &bitlbee :' + line)

    def wait(self, pattern, timeout):
        """The first IRC line from now on matching pattern (bounded wait)."""
        end = time.time() + timeout
        while time.time() < end:
            while b'\n' in self.buf:
                line, self.buf = self.buf.split(b'\n', 1)
                line = line.decode(errors='replace').rstrip('\r')
                self.text += line + '\n'
                if line.startswith('PING'):
                    self.send('PONG' + line[4:])
                m = re.search(pattern, line)
                if m:
                    return m
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return None
            self.buf += data
        return None

    def sign_in(self, address, password, port):
        self.command('account add sipe %s %s' % (address, password))
        self.command('account sipe set server 127.0.0.1:%d' % port)
        self.command('account sipe set transport tcp')
        self.command('account sipe set authentication ntlm')
        self.command('account sipe on')
        return self.wait(r'sipe - (?:Logging in: )?(Logged in|Login error.*|Signing off.*|Couldn\'t log in.*)', 30)

    def debug_log(self):
        self.debug.flush()
        with open(self.debug_path, errors='replace') as f:
            return f.read()

    def stop(self):
        try:
            self.send('QUIT :bye')
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.debug.close()


def main():
    r = Results('sipe')
    server = Server(['alice', 'bob'], domain='example.test')
    clients = []
    try:
        alice = Sipe(os.path.join(server.dir, 'sipe-alice')); clients.append(alice)
        m = alice.sign_in('alice@example.test', 'pw-alice', server.port)
        r.check('pidgin-sipe alice signs in with NTLM', bool(m) and m.group(1) == 'Logged in',
                m.group(0) if m else alice.text[-300:])
        log = alice.debug_log()
        r.check('sipe was offered NTLM and answered the CHALLENGE',
                re.search(r'Authorization: NTLM .*gssapi-data="TlRMTVNTUAAD', log) is not None)
        r.check("sipe validated the server's signature on the 200 (rspauth)",
                'signature of incoming message validated' in log)

        bob = Sipe(os.path.join(server.dir, 'sipe-bob')); clients.append(bob)
        m = bob.sign_in('bob@example.test', 'not-his-password', server.port)
        r.check('a wrong password is refused, with the Warning shown',
                bool(m) and 'wrong user name or password' in m.group(1),
                m.group(0) if m else bob.text[-300:])
        r.check('the refusal is the 403 of the NTLM check',
                re.search(r'SIP/2.0 403 .*\n(.*\n)*?Warning: 310', bob.debug_log()) is not None)
    finally:
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
