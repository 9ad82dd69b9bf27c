#!/usr/bin/env python3
"""The Lync dialect with real clients: two pidgin-sipe 1.25 users (alice over TCP, bob over TLS,
both NTLM-signed) and a baresip user (carol, standard SIP) on one Switchboard.

- alice's stored contact list arrives (bob in group Team, carol): bitlbee shows both buddies;
- alice sees bob's presence change: available, busy as bob's client publishes it, and offline
  when bob signs off; and carol's, published as PIDF by baresip: available, in a meeting from
  the server's calendar, away as set by hand on the server, in the meeting again once cleared;
- alice publishes her own state (busy) and two standard clients watching her with PIDF see it:
  carol's baresip and dave's linphonec;
- IM both ways between the two sipe users (session mode, INVITE with the first message in
  ms-text-format), and carol's pager-mode MESSAGE reaches alice;
- the CDR holds the sipe-to-sipe session with each side's message count.

Two pidgin-sipe processes started in the same second pick the same Call-IDs and tags
(sipe seeds its generator with the time); the server keeps their dialogs apart.

Usage: sipe_lync.py      (needs bitlbee-libpurple, pidgin-sipe, baresip and the switchboard binary)
"""
import datetime, os, re, shutil, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sbtest import Results, Server, stop_all, cdr_sessions, message_counts
from sipe import Sipe
from baresip_im import Baresip
from linphonec_im import Linphonec
from presence import wait_status

DOMAIN = 'example.test'


def trust_server_certificate(sipe_dir, server):
    """libpurple checks a TLS peer after the handshake; with the server's certificate in its peer
    cache (named after the host it connects to) it compares that and does not prompt."""
    peers = os.path.join(sipe_dir, 'purple', 'tester', 'certificates', 'x509', 'tls_peers')
    os.makedirs(peers, exist_ok=True)
    pem = open(os.path.join(server.data, 'tls', 'server.pem')).read()
    leaf = pem[:pem.index('-----END CERTIFICATE-----') + len('-----END CERTIFICATE-----')] + '\n'
    with open(os.path.join(peers, '127.0.0.1'), 'w') as f:
        f.write(leaf)


def whois_away(client, nick, timeout=3):
    """The away text bitlbee gives for a buddy (None when available), or 'gone'."""
    client.send('WHOIS ' + nick)
    m = client.wait(r' (301|318|401) tester %s :(.*)' % nick, timeout)
    if not m:
        return 'no answer'
    if m.group(1) == '301':
        client.wait(r' 318 tester %s ' % nick, timeout)
        return m.group(2)
    return None if m.group(1) == '318' else 'gone'


def wait_away(client, nick, want, timeout=10):
    """Polls WHOIS until the away text matches `want` (a regex; None: available)."""
    end, seen = time.time() + timeout, None
    while time.time() < end:
        seen = whois_away(client, nick)
        if (want is None and seen is None) or (want and seen and re.search(want, seen, re.I)):
            return True, seen
        time.sleep(0.3)
    return False, seen


def iso(dt):
    return dt.strftime('%Y-%m-%dT%H:%M:%SZ')


def main():
    r = Results('lync')
    server = Server(['alice', 'bob', 'carol', 'dave'], domain=DOMAIN)
    server.cli('contacts', 'add', 'alice@' + DOMAIN, 'bob@' + DOMAIN, '--group', 'Team')
    server.cli('contacts', 'add', 'alice@' + DOMAIN, 'carol@' + DOMAIN)
    server.cli('contacts', 'add', 'bob@' + DOMAIN, 'alice@' + DOMAIN)
    clients = []
    try:
        alice = Sipe(os.path.join(server.dir, 'sipe-alice')); clients.append(alice)
        m = alice.sign_in('alice@' + DOMAIN, 'pw-alice', server.port)
        r.check('alice signs in over TCP with NTLM', bool(m) and m.group(1) == 'Logged in',
                m.group(0) if m else alice.text[-300:])
        end, log = time.time() + 10, ''
        while time.time() < end:
            log = alice.debug_log()
            if all('Added buddy sip:%s@%s' % (u, DOMAIN) in log for u in ('bob', 'carol')):
                break
            time.sleep(0.2)
        r.check("alice's stored contact list arrives (bob in Team, and carol)",
                'added buddy sip:bob@%s to group Team' % DOMAIN in log
                and 'Added buddy sip:carol@%s' % DOMAIN in log)

        bob_dir = os.path.join(server.dir, 'sipe-bob')
        trust_server_certificate(bob_dir, server)
        bob = Sipe(bob_dir); clients.append(bob)
        m = bob.sign_in('bob@' + DOMAIN, 'pw-bob', server.tls_port, transport='tls')
        r.check('bob signs in over TLS with NTLM', bool(m) and m.group(1) == 'Logged in',
                m.group(0) if m else bob.text[-300:])
        r.check('every server message to bob was signed and validated',
                'signature of incoming message validated' in bob.debug_log()
                and 'Invalid message signature' not in bob.debug_log()
                and 'message without authentication data' not in bob.debug_log())

        carol = Baresip(server.dir, 'carol', 'carol', server, 'tcp', ['alice'], presence=True,
                        domain=DOMAIN)
        clients.append(carol)
        r.check('baresip carol registers', carol.registered())
        dave = Linphonec(server.dir, 'dave', server, friends=['alice'], domain=DOMAIN)
        clients.append(dave)
        r.check('linphonec dave registers', dave.registered())

        # bob's presence as alice sees it, as his Lync client publishes it.
        ok, seen = wait_away(alice, 'sipbob', None, timeout=20)
        r.check('alice sees bob available', ok, str(seen))
        bob.send('AWAY :Busy')
        ok, seen = wait_away(alice, 'sipbob', r'^busy \(busy\)$')
        r.check("alice sees bob busy (bob's client published it)", ok, str(seen))

        # carol's presence (PIDF from baresip, the server's calendar, a hand-set state) as
        # alice sees it: categories.
        ok, seen = wait_away(alice, 'sipcarol', None, timeout=20)
        r.check("alice sees carol available (baresip's PIDF)", ok, str(seen))
        now = datetime.datetime.now(datetime.timezone.utc)
        server.cli('presence', 'meeting', 'carol@' + DOMAIN, '--from', iso(now - datetime.timedelta(minutes=1)),
                   '--to', iso(now + datetime.timedelta(hours=1)), '--subject', 'Plans')
        ok, seen = wait_away(alice, 'sipcarol', r'^busy \(in a meeting\)$')
        r.check("alice sees carol in a meeting (the server's calendar)", ok, str(seen))
        server.cli('presence', 'set', 'carol@' + DOMAIN, '--availability', 'away')
        ok, seen = wait_away(alice, 'sipcarol', '^away')
        r.check('alice sees carol away (set by hand on the server)', ok, str(seen))
        server.cli('presence', 'clear', 'carol@' + DOMAIN)
        ok, seen = wait_away(alice, 'sipcarol', r'^busy \(in a meeting\)$')
        r.check('alice sees carol in her meeting again once the hand-set state is cleared', ok, str(seen))

        # alice's own state, seen by a standard client.
        ok, seen = wait_status(carol, 'alice', 'Online', domain=DOMAIN)
        r.check("carol's baresip sees alice online (PIDF from alice's categories)", ok, str(seen))
        alice.send('AWAY :Busy')
        ok, seen = wait_status(carol, 'alice', 'Busy', domain=DOMAIN)
        r.check("carol's baresip sees alice busy as alice's client published it", ok, str(seen))
        m = dave.wait(r'Friend .*alice@%s.* is (Busy.*)$' % re.escape(DOMAIN), 10)
        r.check("dave's linphonec sees alice busy too", bool(m), m.group(0) if m else str(dave.seen[-5:]))
        alice.send('AWAY')

        # IM between the two Lync clients, both ways, and from the standard client.
        alice.send('PRIVMSG sipbob :hello bob, from alice')
        m = bob.wait(r'PRIVMSG tester :(hello bob, from alice)', 10)
        r.check('alice -> bob (INVITE with the first message inline)', bool(m), bob.text[-300:])
        bob.send('PRIVMSG sipalice :hi alice, bob here')
        m = alice.wait(r':sipbob!\S+ PRIVMSG tester :(hi alice, bob here)', 10)
        r.check('bob -> alice in the same conversation', bool(m), alice.text[-300:])
        alice.send('PRIVMSG sipbob :second line')
        m = bob.wait(r'PRIVMSG tester :second line', 10)
        r.check('alice -> bob again (in-dialog MESSAGE)', bool(m))
        carol.ctrl.cmd('message', 'hello alice, carol on baresip')
        m = alice.wait(r':sipcarol!\S+ PRIVMSG tester :hello alice, carol on baresip', 10)
        r.check('carol (baresip, pager mode) -> alice', bool(m), alice.text[-300:])

        # bob signs off: alice sees him offline.
        bob.command('account sipe off')
        m = alice.wait(r':sipbob!\S+ (QUIT|PART)', 15)
        r.check('alice sees bob offline when he signs off', bool(m), alice.text[-300:])

        alice.command('account sipe off')
        alice.wait(r'sipe - Signing off', 5)
        pairs, _ = cdr_sessions(server)
        ab = [s for s in pairs if {p['address'] for p in s['participants']}
              == {'sip:alice@' + DOMAIN, 'sip:bob@' + DOMAIN}]
        counts = message_counts(ab[0]) if ab else {}
        r.check('CDR: one alice-bob session, alice 2 messages, bob 1',
                len(ab) == 1 and counts == {'sip:alice@' + DOMAIN: 2, 'sip:bob@' + DOMAIN: 1},
                str(pairs))
    finally:
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
