"""Shared helpers for the interop tests: start a Switchboard server on loopback with a
fresh data directory, add users, and stop it by pid. Every wait is bounded."""
import itertools, os, shutil, signal, socket, subprocess, tempfile, time, urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get('SWITCHBOARD_BIN', os.path.join(ROOT, 'target', 'debug', 'switchboard'))


class Results:
    def __init__(self, suite):
        self.suite, self.passed, self.failed = suite, 0, 0

    def check(self, name, ok, detail=''):
        print('%s %s: %s %s' % ('PASS' if ok else 'FAIL', self.suite, name, detail), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok

    def exit(self, server=None):
        if self.failed and server is not None:
            print(server.tail())
        print('%s: %d passed, %d failed' % (self.suite, self.passed, self.failed), flush=True)
        raise SystemExit(0 if self.failed == 0 and self.passed > 0 else 1)


def free_port(kind=socket.SOCK_STREAM, both=False):
    """A port free for TCP (and UDP if both) on 127.0.0.1."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        if both:
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(('127.0.0.1', port))
                u.close()
            except OSError:
                continue
        return port
    raise RuntimeError('no free port')


# A PostgreSQL server (a URL): when given, each Server runs on a database of its own
# there (created here), instead of SQLite in its data directory.
PG_SERVER = os.environ.get('SB_TEST_PG_URL')
_databases = itertools.count()


def new_pg_database(server_url):
    """A fresh, empty database on the PostgreSQL server `server_url`; its URL."""
    name = 'sb_interop_%d_%d' % (os.getpid(), next(_databases))
    subprocess.run(['psql', server_url, '-qc', 'CREATE DATABASE %s' % name], check=True,
                   capture_output=True, timeout=30)
    return urllib.parse.urlparse(server_url)._replace(path='/' + name).geturl()


class Server:
    """A switchboard process with its own data directory (and its own PostgreSQL
    database when SB_TEST_PG_URL names a server)."""

    def __init__(self, users, domain='127.0.0.1', workdir=None, config=None):
        self.dir = workdir or tempfile.mkdtemp(prefix='sb-interop-')
        self.data = os.path.join(self.dir, 'data')
        self.env = dict(os.environ)
        if PG_SERVER:
            self.env['SWITCHBOARD_DATABASE'] = new_pg_database(PG_SERVER)
        self.port = free_port(both=True)
        self.tls_port = free_port()
        self.http_port = free_port()
        for user in users:
            self.cli('user', 'add', '%s@%s' % (user, domain), '--password', 'pw-' + user)
        self.log_path = os.path.join(self.dir, 'server.log')
        self.log = open(self.log_path, 'w')
        extra = []
        if config is not None:
            # A config file (TOML text) for settings that have no flag, e.g. [limits].
            path = os.path.join(self.dir, 'switchboard.toml')
            with open(path, 'w') as f:
                f.write(config)
            extra = ['--config', path]
        self.proc = subprocess.Popen(
            [BIN, '--data-dir', self.data, '--log-level', os.environ.get('SB_LOG', 'info'), 'serve',
             '--sip-udp', '127.0.0.1:%d' % self.port, '--sip-tcp', '127.0.0.1:%d' % self.port,
             '--sip-tls', '127.0.0.1:%d' % self.tls_port, '--http', '127.0.0.1:%d' % self.http_port] + extra,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError('switchboard did not start; log:\n' + open(self.log_path).read())

    def cli(self, *args):
        # SWITCHBOARD_HTTP: where `presence show` finds this server's API.
        env = dict(self.env, SWITCHBOARD_HTTP='127.0.0.1:%d' % self.http_port)
        out = subprocess.run([BIN, '--data-dir', self.data] + list(args), capture_output=True, text=True, timeout=30,
                             env=env)
        if out.returncode != 0:
            raise RuntimeError('switchboard %s failed: %s' % (' '.join(args), out.stderr))
        return out.stdout

    def stop(self):
        stop_process(self.proc, self.log)

    def tail(self, n=40):
        return log_tail(self.log_path, n)


def stop_process(proc, log):
    """SIGTERM (a clean stop), SIGKILL after 10 s; then closes its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


def log_tail(path, n):
    """The last n lines of the log at path."""
    with open(path, errors='replace') as f:
        return ''.join(f.readlines()[-n:])


def stop_all(server, clients):
    """Stops the clients, then the server: every test ends here, passed or not."""
    for c in clients:
        c.stop()
    server.stop()


def cdr_sessions(server):
    """The server's CDR as (two-party sessions, conferences), read with `switchboard cdr list --json`.
    Waits a moment first: counters are written every second."""
    import json
    time.sleep(1.5)
    sessions = json.loads(server.cli('cdr', 'list', '--json'))
    return ([x for x in sessions if x['kind'] == 'two-party'], [x for x in sessions if x['kind'] == 'conference'])


def message_counts(session):
    return {p['address']: p['messages'] for p in session['participants']}
