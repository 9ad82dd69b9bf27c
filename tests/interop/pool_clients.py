#!/usr/bin/env python3
"""Real clients on different front ends of an Enterprise pool: three switchboard processes
(front ends 1, 2, 3 on 127.0.0.2, 127.0.0.3, 127.0.0.4) sharing one fresh PostgreSQL
database on the server SB_TEST_PG_URL names, each client told only its own front end:

- pidgin-sipe alice (Lync dialect, TCP, NTLM) on front end 1, baresip bob (TCP, PIDF
  presence) on front end 2, linphonec carol (UDP, PIDF presence) on front end 3;
- all three sign in, and `pool status --json` counts a registered device on each front end;
- presence across front ends: alice sees bob available; bob's baresip and carol's linphonec
  see alice online, then busy when her Lync client publishes it;
- IM across front ends both ways: alice -> bob, bob -> alice, alice -> carol, carol -> alice
  (alice's Lync INVITE bridged to the pager-mode clients), each delivered once;
- the CDR (written by whichever front end owns each conversation) holds exactly one
  two-party session per pair, with each side's message count;
- SIPp: five recipients register on front end 2, five senders send 20 MESSAGEs through front
  end 1; every one is answered 200 and reaches its recipient once, and the CDR holds one
  session per pair with the 20 counted once;
- front end 2 is killed (SIGKILL): alice sees bob offline within 8 s (5 s reap timeout +
  heartbeat + presence follow interval) and `pool status` lists front ends 1 and 3 only;
  bob's baresip is started again on front end 3, alice sees him available again and her
  next message reaches him.

Usage: SB_TEST_PG_URL=postgres://... pool_clients.py
(needs bitlbee-libpurple, pidgin-sipe, baresip, linphonec, sipp, psql and the switchboard binary)
"""
import json, os, re, signal, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sbtest import BIN, Results, new_pg_database, message_counts, stop_process, log_tail
from sipe import Sipe
from baresip_im import Baresip
from linphonec_im import Linphonec
from presence import wait_status
from sipe_lync import wait_away

DOMAIN = 'example.test'
ALICE, BOB, CAROL = ('sip:%s@%s' % (u, DOMAIN) for u in ('alice', 'bob', 'carol'))
FRONT_ENDS = {1: '127.0.0.2', 2: '127.0.0.3', 3: '127.0.0.4'}
# A killed front end is reaped 5 s after its last heartbeat; its watchers elsewhere hear of it
# at their next follow of the presence change log.
LOSS_DEADLINE = 8.0
NOTHING = r'(?!)'  # a pattern that never matches: waiting on it just reads for a while
SIPP_SCENARIOS = os.path.join(os.path.dirname(HERE), 'sipp')
SIPP_PAIRS = 5      # s0..s4 write to s5..s9
SIPP_MESSAGES = 20


def free_port_on(ip, both=False, taken=()):
    """A port free for TCP (and UDP if both) on `ip` itself (not 127.0.0.1)."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((ip, 0))
        port = s.getsockname()[1]
        s.close()
        if port in taken:
            continue
        if both:
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((ip, port))
                u.close()
            except OSError:
                continue
        return port
    raise RuntimeError('no free port on %s' % ip)


class Pool:
    """The pool's database and the CLI against it."""

    def __init__(self, server_url):
        self.dir = tempfile.mkdtemp(prefix='sb-pool-clients-')
        self.url = new_pg_database(server_url)
        self.env = dict(os.environ, SWITCHBOARD_DATABASE=self.url)
        self.cli_data = os.path.join(self.dir, 'cli-data')

    def cli(self, *args):
        out = subprocess.run([BIN, '--data-dir', self.cli_data, '--database', self.url] + list(args),
                             capture_output=True, text=True, timeout=30, env=self.env)
        if out.returncode != 0:
            raise RuntimeError('switchboard %s failed: %s' % (' '.join(args), out.stderr))
        return out.stdout

    def members(self):
        """`pool status --json`: front end id -> its entry."""
        return {m['fe']: m for m in json.loads(self.cli('pool', 'status', '--json'))['members']}

    def wait_members(self, want, timeout, pred=lambda m: True):
        """Polls `pool status` until exactly the front ends `want` are listed, each passing pred."""
        end, seen = time.time() + timeout, {}
        while True:
            try:
                seen = self.members()
            except RuntimeError as e:
                seen = {'error': str(e)}
            if set(seen) == set(want) and all(pred(seen[fe]) for fe in want):
                return True, seen
            if time.time() >= end:
                return False, seen
            time.sleep(0.3)


class PoolFrontEnd:
    """One front end: a switchboard process on its own loopback address and data directory.
    Has what the client drivers read of a server: host, port (UDP and TCP), tls_port."""

    def __init__(self, pool, fe):
        self.pool, self.fe, self.host = pool, fe, FRONT_ENDS[fe]
        self.dir = os.path.join(pool.dir, 'fe%d' % fe)
        self.data = os.path.join(self.dir, 'data')
        os.makedirs(self.dir)
        self.port = free_port_on(self.host, both=True)
        self.tls_port = free_port_on(self.host, taken=(self.port,))
        self.http_port = free_port_on(self.host, taken=(self.port, self.tls_port))
        self.log_path = os.path.join(self.dir, 'server.log')
        self.log = open(self.log_path, 'w')
        addr = '%s:%d' % (self.host, self.port)
        self.proc = subprocess.Popen(
            [BIN, '--data-dir', self.data, '--database', pool.url, '--log-level', os.environ.get('SB_LOG', 'info'),
             'serve', '--front-end', str(fe), '--sip-udp', addr, '--sip-tcp', addr,
             '--sip-tls', '%s:%d' % (self.host, self.tls_port), '--http', '%s:%d' % (self.host, self.http_port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=pool.env)

    def wait_listening(self, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return True
            except OSError:
                if self.proc.poll() is not None:
                    return False
                time.sleep(0.05)
        return False

    def kill(self):
        """SIGKILL: no goodbye to the pool, as if its host died."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        stop_process(self.proc, self.log)

    def tail(self, n=60):
        return log_tail(self.log_path, n)


def pager_owner(a, b, members):
    """For diagnosis only: the member that keeps the pager conversation of a and b, computed
    as switchboard_pool's keeper_among does (rendezvous hashing of "pager|A|B" over the ids
    of the members holding either user's devices)."""
    import hashlib
    key = ('pager|%s|%s' % tuple(sorted((a, b)))).encode()
    return max(members, key=lambda fe: hashlib.sha256(key + fe.to_bytes(4, 'big')).digest()[:8])


def pair_sessions(pool, a, b):
    """The two-party CDR sessions between a and b (after the counters' next write)."""
    time.sleep(1.5)
    sessions = json.loads(pool.cli('cdr', 'list', '--json'))
    return [s for s in sessions if s['kind'] == 'two-party'
            and {p['address'] for p in s['participants']} == {a, b}], sessions


def sipp_across(pool, fes, r):
    """SIPp recipients registered on front end 2 (UDP), SIPp senders through front end 1: every
    MESSAGE crosses the pool. Checks the answers, the deliveries and the CDR."""
    work = os.path.join(pool.dir, 'sipp')
    os.makedirs(work)
    senders = ['s%d' % i for i in range(SIPP_PAIRS)]
    rcpts = ['s%d' % (i + SIPP_PAIRS) for i in range(SIPP_PAIRS)]
    with open(os.path.join(work, 'rcpt.csv'), 'w') as f:
        f.write('SEQUENTIAL\n' + ''.join('%s;pw-%s\n' % (u, u) for u in rcpts))
    with open(os.path.join(work, 'msg.csv'), 'w') as f:
        f.write('SEQUENTIAL\n' + ''.join('%s;pw-%s;%s\n' % (a, a, b) for a, b in zip(senders, rcpts)))
    taken = set()
    def port():
        p = free_port_on('127.0.0.1', both=True, taken=tuple(taken))
        taken.add(p)
        return p
    uas_port, reg_port, uac_port = port(), port(), port()
    common = ['-nostdin', '-timeout', '30s', '-timeout_error', '-max_recv_loops', '10000',
              '-i', '127.0.0.1', '-t', 'u1', '-key', 'domain', DOMAIN]
    def run(name, target, args):
        with open(os.path.join(work, name + '.out'), 'w') as out:
            rc = subprocess.call(['timeout', '60', 'sipp', target] + args + common,
                                 stdout=out, stderr=subprocess.STDOUT)
        return rc, open(os.path.join(work, name + '.out'), errors='replace').read()[-1500:]
    rc, out = run('register', '%s:%d' % (fes[2].host, fes[2].port),
                  ['-sf', os.path.join(SIPP_SCENARIOS, 'register.xml'), '-inf', os.path.join(work, 'rcpt.csv'),
                   '-key', 'expires', '300', '-key', 'cport', str(uas_port), '-p', str(reg_port),
                   '-m', str(SIPP_PAIRS)])
    r.check('SIPp: %d recipients register on front end 2' % SIPP_PAIRS, rc == 0, out)
    uas_out = open(os.path.join(work, 'uas.out'), 'w')
    uas = subprocess.Popen(['timeout', '60', 'sipp', '-sf', os.path.join(SIPP_SCENARIOS, 'message_uas.xml'),
                            '-p', str(uas_port), '-m', str(SIPP_MESSAGES), '-nostdin', '-timeout', '30s',
                            '-timeout_error', '-i', '127.0.0.1', '-t', 'u1'],
                           stdout=uas_out, stderr=subprocess.STDOUT)
    time.sleep(0.3)
    rc, out = run('message', '%s:%d' % (fes[1].host, fes[1].port),
                  ['-sf', os.path.join(SIPP_SCENARIOS, 'message_uac.xml'), '-inf', os.path.join(work, 'msg.csv'),
                   '-p', str(uac_port), '-m', str(SIPP_MESSAGES), '-r', '20'])
    r.check('SIPp: %d MESSAGEs sent through front end 1 answered 200' % SIPP_MESSAGES, rc == 0, out)
    try:
        uas_rc = uas.wait(timeout=60)
    except subprocess.TimeoutExpired:
        uas.kill()
        uas_rc = -1
    uas_out.close()
    r.check('SIPp: the recipients on front end 2 got all %d, once' % SIPP_MESSAGES, uas_rc == 0,
            open(os.path.join(work, 'uas.out'), errors='replace').read()[-1500:])
    time.sleep(1.5)  # the counters' next write
    sessions = json.loads(pool.cli('cdr', 'list', '--json'))
    pairs = {frozenset(('sip:%s@%s' % (a, DOMAIN), 'sip:%s@%s' % (b, DOMAIN))) for a, b in zip(senders, rcpts)}
    ours = [s for s in sessions if frozenset(p['address'] for p in s['participants']) in pairs]
    counted = sum(m for s in ours for m in message_counts(s).values())
    r.check('SIPp: CDR holds one session per pair and the %d MESSAGEs counted once' % SIPP_MESSAGES,
            len(ours) == SIPP_PAIRS and counted == SIPP_MESSAGES, json.dumps(ours))


def main():
    r = Results('pool-clients')
    server_url = os.environ.get('SB_TEST_PG_URL')
    if not server_url:
        print('pool_clients.py needs SB_TEST_PG_URL (a PostgreSQL server URL, e.g. from '
              'scripts/pg-cluster.sh start DIR): an Enterprise pool shares one PostgreSQL database', flush=True)
        raise SystemExit(2)
    started = time.time()
    pool = Pool(server_url)
    for u in ['alice', 'bob', 'carol'] + ['s%d' % i for i in range(2 * SIPP_PAIRS)]:
        pool.cli('user', 'add', '%s@%s' % (u, DOMAIN), '--password', 'pw-' + u)
    pool.cli('contacts', 'add', 'alice@' + DOMAIN, 'bob@' + DOMAIN, '--group', 'Team')
    pool.cli('contacts', 'add', 'alice@' + DOMAIN, 'carol@' + DOMAIN)
    pool.cli('contacts', 'add', 'bob@' + DOMAIN, 'alice@' + DOMAIN)
    pool.cli('contacts', 'add', 'carol@' + DOMAIN, 'alice@' + DOMAIN)
    fes, clients = {}, []
    try:
        for fe in FRONT_ENDS:
            fes[fe] = PoolFrontEnd(pool, fe)
        for fe, s in fes.items():
            if not s.wait_listening():
                raise RuntimeError('front end %d did not start; log:\n%s' % (fe, s.tail()))
        ok, seen = pool.wait_members([1, 2, 3], 15, lambda m: m['heartbeat_age_ms'] < 3000)
        if not r.check('pool status lists front ends 1, 2, 3 at their addresses',
                       ok and all(seen[fe]['sip_addr'] == '%s:%d' % (fes[fe].host, fes[fe].port) for fe in fes),
                       json.dumps(seen)):
            raise RuntimeError('the pool did not form')
        print('pool formed in %.1f s' % (time.time() - started), flush=True)

        # 1. Sign-in, each client on its own front end.
        alice = Sipe(os.path.join(pool.dir, 'sipe-alice')); clients.append(alice)
        m = alice.sign_in('alice@' + DOMAIN, 'pw-alice', fes[1].port, host=fes[1].host)
        r.check('alice (pidgin-sipe, NTLM) signs in on front end 1', bool(m) and m.group(1) == 'Logged in',
                m.group(0) if m else alice.text[-300:])
        bob = Baresip(pool.dir, 'bob', 'bob', fes[2], 'tcp', ['alice'], presence=True, domain=DOMAIN)
        clients.append(bob)
        r.check('bob (baresip) registers on front end 2', bob.registered())
        carol = Linphonec(pool.dir, 'carol', fes[3], publish=True, friends=['alice'], domain=DOMAIN)
        clients.append(carol)
        r.check('carol (linphonec) registers on front end 3', carol.registered())
        ok, seen = pool.wait_members([1, 2, 3], 5, lambda m: m['load']['registered'] >= 1)
        r.check('pool status counts a registered device on each front end', ok,
                json.dumps({fe: m.get('load') for fe, m in seen.items()} if ok or 'error' not in seen else seen))

        # 2. Presence across front ends.
        ok, seen = wait_away(alice, 'sipbob', None, timeout=20)
        r.check('alice (FE 1) sees bob (FE 2) available', ok, str(seen))
        ok, seen = wait_status(bob, 'alice', 'Online', timeout=15, domain=DOMAIN)
        r.check("bob's baresip (FE 2) sees alice (FE 1) online", ok, str(seen))
        m = carol.wait(r'Friend .*alice@%s.* is (Online.*)$' % re.escape(DOMAIN), 15)
        r.check("carol's linphonec (FE 3) sees alice (FE 1) online", bool(m),
                m.group(0) if m else str(carol.seen[-5:]))
        alice.send('AWAY :Busy')
        ok, seen = wait_status(bob, 'alice', 'Busy', domain=DOMAIN)
        r.check("bob's baresip (FE 2) sees alice busy as her Lync client published it (FE 1)", ok, str(seen))
        m = carol.wait(r'Friend .*alice@%s.* is (Busy.*)$' % re.escape(DOMAIN), 10)
        r.check("carol's linphonec (FE 3) sees alice busy", bool(m), m.group(0) if m else str(carol.seen[-5:]))
        alice.send('AWAY')
        ok, seen = wait_status(bob, 'alice', 'Online', domain=DOMAIN)
        r.check("bob's baresip sees alice online again when she clears busy", ok, str(seen))

        # 3. IM across front ends, both ways. alice's Lync client opens a session (INVITE with
        # the first message inline), bridged to the pager-mode clients.
        alice.send('PRIVMSG sipbob :hello bob, alice on FE1')
        m = bob.cons.wait_for(r'%s: "hello bob, alice on FE1"' % re.escape(ALICE), 10)
        r.check('alice (FE 1) -> bob (FE 2)', bool(m), '' if m else bob.cons.text[-300:])
        bob.ctrl.cmd('message', 'hi alice, bob on FE2')
        m = alice.wait(r':sipbob!\S+ PRIVMSG tester :(hi alice, bob on FE2)', 10)
        r.check('bob (FE 2) -> alice (FE 1)', bool(m), '' if m else alice.text[-300:])
        alice.send('PRIVMSG sipcarol :hello carol, alice on FE1')
        carol.seen.clear()  # what it printed before; from here on only what follows counts
        m = carol.wait(r'Message received from .*alice@%s.*: (.*)' % re.escape(DOMAIN), 10)
        r.check('alice (FE 1) -> carol (FE 3)', bool(m) and 'hello carol, alice on FE1' in m.group(1),
                m.group(0) if m else str(carol.seen[-5:]))
        carol.cmd('chat %s hi alice, carol on FE3' % ALICE)  # no quotes: linphonec would send them
        m = alice.wait(r':sipcarol!\S+ PRIVMSG tester :(hi alice, carol on FE3)', 10)
        r.check('carol (FE 3) -> alice (FE 1)', bool(m), '' if m else alice.text[-300:])
        # Each once: nothing repeated a little later.
        time.sleep(2)
        alice.wait(NOTHING, 0.5)  # drain alice's IRC lines into alice.text
        bob.cons.wait_for(NOTHING, 0.5)
        carol.wait(NOTHING, 0.5)
        carol_got = [l for l in carol.seen if re.search(r'Message received from .*alice@', l)]
        r.check('each message delivered once',
                len(re.findall(r'"hello bob, alice on FE1"', bob.cons.text)) == 1
                and alice.text.count('PRIVMSG tester :hi alice, bob on FE2') == 1
                and alice.text.count('PRIVMSG tester :hi alice, carol on FE3') == 1
                and len(carol_got) == 0,  # carol's one message was consumed by the wait above
                'bob %d, alice %d/%d, carol extra %s' % (
                    len(re.findall(r'"hello bob, alice on FE1"', bob.cons.text)),
                    alice.text.count('PRIVMSG tester :hi alice, bob on FE2'),
                    alice.text.count('PRIVMSG tester :hi alice, carol on FE3'), carol_got))

        # 4. The CDR: one session per pair, whichever front end owns it, counted once. (alice's
        # Lync INVITE is bridged on her front end; the pager side's replies go through the
        # member that keeps the pair's pager conversation: printed to tell the cases apart.)
        print('pager conversation owners: alice-bob FE %d, alice-carol FE %d' % (
            pager_owner(ALICE, BOB, [1, 2]), pager_owner(ALICE, CAROL, [1, 3])), flush=True)
        ab, everything = pair_sessions(pool, ALICE, BOB)
        counts = message_counts(ab[0]) if ab else {}
        r.check('CDR: one alice-bob session, alice 1 message, bob 1',
                len(ab) == 1 and counts == {ALICE: 1, BOB: 1}, json.dumps(ab))
        ac, _ = pair_sessions(pool, ALICE, CAROL)
        counts = message_counts(ac[0]) if ac else {}
        r.check('CDR: one alice-carol session, alice 1 message, carol 1',
                len(ac) == 1 and counts == {ALICE: 1, CAROL: 1}, json.dumps(ac))
        r.check('CDR: no other session', len(everything) == 2, json.dumps(everything))

        # 4b. SIPp across front ends, 20 MESSAGEs.
        sipp_across(pool, fes, r)

        # 5. Front end 2 (bob's) dies without a word.
        fes[2].kill()
        killed = time.time()
        m = alice.wait(r':sipbob!\S+ (QUIT|PART)', LOSS_DEADLINE)
        lost = time.time() - killed
        r.check('alice sees bob offline within %.0f s of front end 2 being killed' % LOSS_DEADLINE,
                bool(m), 'after %.1f s' % lost if m else alice.text[-300:])
        ok, seen = pool.wait_members([1, 3], max(0.5, LOSS_DEADLINE - (time.time() - killed)))
        r.check('pool status lists front ends 1 and 3 only', ok,
                'after %.1f s: %s' % (time.time() - killed, json.dumps(sorted(seen))))
        # A real client has no failover here (no DNS SRV with several targets on loopback, and
        # baresip's outbound proxy is one address): bob's client is started again, pointed at
        # front end 3, as a user would do, or as DNS would send him on a real deployment.
        bob.stop()
        clients.remove(bob)
        bob = Baresip(pool.dir, 'bob-fe3', 'bob', fes[3], 'tcp', ['alice'], presence=True, domain=DOMAIN)
        clients.append(bob)
        r.check("bob's baresip registers again on front end 3", bob.registered())
        ok, seen = wait_away(alice, 'sipbob', None, timeout=15)
        r.check('alice sees bob (now on FE 3) available again', ok, str(seen))
        alice.send('PRIVMSG sipbob :welcome back bob')
        m = bob.cons.wait_for(r'%s: "welcome back bob"' % re.escape(ALICE), 10)
        r.check('alice (FE 1) -> bob (FE 3) after the loss', bool(m), '' if m else bob.cons.text[-300:])
        ab, everything = pair_sessions(pool, ALICE, BOB)
        print('CDR after the loss: %s' % json.dumps(everything), flush=True)
        r.check('CDR after the loss: exactly one alice-bob session still open',
                len([s for s in ab if s.get('ended') is None]) == 1, json.dumps(ab))
    finally:
        for c in clients:
            try:
                c.stop()
            except Exception as e:
                print('stopping a client: %s' % e, flush=True)
        for s in fes.values():
            s.stop()
        print('took %.1f s' % (time.time() - started), flush=True)
        if r.failed or sys.exc_info()[0] is not None:
            for fe, s in fes.items():
                print('--- front end %d (%s) log tail:\n%s' % (fe, s.host, s.tail()), flush=True)
    r.exit()


if __name__ == '__main__':
    main()
