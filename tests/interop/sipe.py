"""Drives pidgin-sipe 1.25 (Debian 12), the Lync-dialect reference client, headless: sipe is a
libpurple plugin, run inside bitlbee (libpurple build) in inetd mode and driven over IRC on a
socketpair, so no port is opened. What it shows comes from its IRC messages and its libpurple
debug log (every SIP message and its signature checks).

shim/sipe_shim.c is preloaded (built here on first use) for two harness problems: Debian 12's
libxml2 no longer calls the SAX1 callbacks sipe's XML parser registers, so every XML body would
look empty; and bitlbee's `chat with` looks for a buddy-menu item sipe names differently."""
import os, re, socket, subprocess, time

HERE = os.path.dirname(os.path.abspath(__file__))


def shim():
    """Builds the LD_PRELOAD shim once per checkout (needs cc and libxml2-dev)."""
    out = os.path.join(HERE, 'shim', 'sipe_shim.so')
    src = os.path.join(HERE, 'shim', 'sipe_shim.c')
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        cflags = subprocess.run(['pkg-config', '--cflags', 'libxml-2.0'], capture_output=True,
                                text=True, check=True).stdout.split()
        subprocess.run(['cc', '-shared', '-fPIC', '-O2'] + cflags + ['-o', out, src, '-ldl'], check=True)
    return out


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
        env = dict(os.environ, BITLBEE_DEBUG='1', PURPLE_VERBOSE_DEBUG='1', PURPLE_UNSAFE_DEBUG='1',
                   LD_PRELOAD=shim())
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

    def sign_in(self, address, password, port, transport='tcp', host='127.0.0.1'):
        self.command('account add sipe %s %s' % (address, password))
        self.command('account sipe set server %s:%d' % (host, port))
        self.command('account sipe set transport %s' % transport)
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


