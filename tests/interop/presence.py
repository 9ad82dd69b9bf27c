#!/usr/bin/env python3
"""Presence through Switchboard, seen by real clients (Debian 12 linphonec 5.1, baresip 1.0).

carol's device is SIPp (tests/sipp/publish_states.xml), because neither client can publish
more than open/closed: it publishes open, busy, away, open again and then removes its
publication. While it is away, `switchboard presence meeting` puts carol in a calendar
meeting, so "open again" shows as busy, in a meeting.
- linphonec alice watches carol and must print each state: online, busy, away, in a
  meeting, offline (`Friend "carol" <sip:carol@127.0.0.1> is ...`; linphone words a
  meeting "Do not disturb", its reading of RFC 4480 `meeting`).
- baresip bob watches carol and must list her as Busy and then Offline (`contacts`).
- linphonec publishes its own presence (publish=1): bob's baresip sees alice Online, and
  the server's aggregation says so too (`switchboard presence show`).

Usage: presence.py      (needs linphonec, baresip, sipp and the switchboard binary)
"""
import json, os, re, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sbtest import ROOT, Results, Server, stop_all, free_port
from baresip_im import ANSI, Baresip
from linphonec_im import Linphonec

PAUSE_MS = 4000


def contact_status(b, who, domain='127.0.0.1'):
    """baresip's `contacts` listing: the status word shown beside `who`."""
    text = ANSI.sub('', b.ctrl.cmd('contacts')['data'])
    for line in text.splitlines():
        if '%s@%s' % (who, domain) in line:
            m = re.search(r'\b(Online|Offline|Busy|Away|Unknown)\b', line)
            return m.group(1) if m else line.strip()
    return None


def wait_status(b, who, want, timeout=10, domain='127.0.0.1'):
    end = time.time() + timeout
    seen = None
    while time.time() < end:
        seen = contact_status(b, who, domain)
        if seen == want:
            return True, seen
        time.sleep(0.2)
    return False, seen


def main():
    r = Results('presence')
    server = Server(['alice', 'bob', 'carol'])
    clients, publisher = [], None
    try:
        alice = Linphonec(server.dir, 'alice', server, publish=True, friends=['carol']); clients.append(alice)
        bob = Baresip(server.dir, 'bob', 'bob', server, 'udp', ['carol', 'alice'], presence=True); clients.append(bob)
        r.check('linphonec alice registers', alice.registered())
        r.check('baresip bob registers', bob.registered())

        # Before carol publishes anything: offline, not an error.
        ok, seen = wait_status(bob, 'carol', 'Offline')
        r.check('baresip bob sees carol (never published) Offline', ok, str(seen))
        # linphonec publishes its own "online"; a standard watcher and the server see it.
        ok, seen = wait_status(bob, 'alice', 'Online')
        r.check('baresip bob sees linphonec alice Online (alice\'s own PUBLISH)', ok, str(seen))
        show = json.loads(server.cli('presence', 'show', 'alice@127.0.0.1', '--as', 'bob@127.0.0.1', '--json'))
        r.check('the server aggregates alice as available', show.get('availability') == 'available', str(show))

        csv = os.path.join(server.dir, 'carol.csv')
        with open(csv, 'w') as f:
            f.write('SEQUENTIAL\ncarol;pw-carol\n')
        publisher = subprocess.Popen(
            ['timeout', '60', 'sipp', '127.0.0.1:%d' % server.port, '-nostdin', '-sf',
             os.path.join(ROOT, 'tests', 'sipp', 'publish_states.xml'), '-inf', csv, '-key', 'domain', '127.0.0.1',
             '-p', str(free_port(both=True)), '-t', 'u1', '-m', '1', '-d', str(PAUSE_MS), '-timeout', '50s',
             '-timeout_error', '-trace_err', '-error_file', os.path.join(server.dir, 'publisher.err')],
            stdout=open(os.path.join(server.dir, 'publisher.out'), 'w'), stderr=subprocess.STDOUT,
            start_new_session=True)

        def linphonec_sees(what, pattern):
            m = alice.wait(r'Friend .*carol@127\.0\.0\.1.* is (.*)$', PAUSE_MS / 1000 + 6)
            states = []
            while m and not re.search(pattern, m.group(1), re.I):
                states.append(m.group(1))
                m = alice.wait(r'Friend .*carol@127\.0\.0\.1.* is (.*)$', PAUSE_MS / 1000 + 6)
            r.check('linphonec alice sees carol %s' % what, bool(m), (m.group(0) if m else 'saw %s' % states))
            return bool(m)

        linphonec_sees('online', r'^Online')
        linphonec_sees('busy', r'^Busy')
        ok, seen = wait_status(bob, 'carol', 'Busy', PAUSE_MS / 1000 + 2)
        r.check('baresip bob sees carol Busy', ok, str(seen))
        linphonec_sees('away', r'^Away')
        # A calendar meeting, set without a client while carol is away.
        server.cli('presence', 'meeting', 'carol@127.0.0.1', '--from', '2000-01-01T00:00:00Z',
                   '--to', '2999-01-01T00:00:00Z', '--subject', 'Interop review')
        # linphone has no "meeting" status word: it shows RFC 4480 <rpid:meeting/> as
        # "Do not disturb"; its own log shows the activity it was given.
        if linphonec_sees('in a meeting (shown by linphonec as "Do not disturb")', r'^Do not disturb'):
            log = open(os.path.join(alice.home, 'linphone.log'), errors='replace').read()
            r.check('linphonec received <rpid:meeting/> with busy for carol',
                    re.search(r'<rpid:busy/><rpid:meeting/>', log) is not None)
        linphonec_sees('offline', r'^Offline')
        ok, seen = wait_status(bob, 'carol', 'Offline', PAUSE_MS / 1000 + 2)
        r.check('baresip bob sees carol Offline', ok, str(seen))
        publisher.wait(timeout=30)
        r.check('SIPp published every state (RFC 3903 modify with SIP-If-Match, then remove)',
                publisher.returncode == 0, open(os.path.join(server.dir, 'publisher.out')).read()[-400:])
    finally:
        if publisher and publisher.poll() is None:
            publisher.kill()
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
