#!/usr/bin/env python3
"""Lync conferencing and bridging with real clients: two pidgin-sipe 1.25 users (alice over
TCP, bob over TLS, NTLM-signed) and a baresip user (carol, standard SIP, pager mode).

- alice's Lync client chats with carol's baresip: the INVITE (first message inline) is answered
  by the IM service, which carries alice's messages to carol as pager MESSAGEs; carol's reply
  reaches alice in the same conversation;
- alice and bob chat two-party, then alice turns it into a conference the way Lync clients do
  (C3P: addConference at the focus factory named in provisioning, addUser at the focus, the
  conference event package, an INVITE to the IM MCU, an ms-conf-invite to bob, who joins by
  himself, and the two-party dialog ended);
- messages fan out with Ms-Sender: each Lync client shows the other's lines as theirs;
- alice adds carol (baresip): the service puts her in the chat in pager mode; both Lync clients
  see her join; she receives what they write and what she writes reaches both of them;
- alice leaves: bob sees her go;
- carol (baresip) turns her chat with alice into a group chat with bob (`/invite`): both Lync
  clients get an ms-conf-invite and join it as a conference; messages reach everyone;
- the CDR holds the conference, organised by alice, escalated from the alice-bob session, with
  each member's message count, and the alice-carol bridged session with both counts.

bitlbee starts a group chat with `chat with NICK` by clicking a buddy-menu item; the shim in
sipe.py makes sipe's "New chat" item findable. baresip can only write to a contact in its
list, so carol's second baresip is started with the conference's address as its contact.

Usage: sipe_conference.py   (needs bitlbee-libpurple, pidgin-sipe, baresip and the switchboard binary)
"""
import os, re, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sbtest import Results, Server, stop_all, cdr_sessions, message_counts
from sipe import Sipe
from baresip_im import Baresip
from sipe_lync import trust_server_certificate

DOMAIN = 'example.test'
ALICE, BOB, CAROL = ('sip:%s@%s' % (u, DOMAIN) for u in ('alice', 'bob', 'carol'))


def main():
    r = Results('lync-conference')
    server = Server(['alice', 'bob', 'carol'], domain=DOMAIN)
    server.cli('contacts', 'add', 'alice@' + DOMAIN, 'bob@' + DOMAIN)
    server.cli('contacts', 'add', 'alice@' + DOMAIN, 'carol@' + DOMAIN)
    server.cli('contacts', 'add', 'bob@' + DOMAIN, 'alice@' + DOMAIN)
    clients = []
    try:
        alice = Sipe(os.path.join(server.dir, 'sipe-alice')); clients.append(alice)
        m = alice.sign_in('alice@' + DOMAIN, 'pw-alice', server.port)
        r.check('alice signs in (TCP, NTLM)', bool(m) and m.group(1) == 'Logged in')
        bob_dir = os.path.join(server.dir, 'sipe-bob')
        trust_server_certificate(bob_dir, server)
        bob = Sipe(bob_dir); clients.append(bob)
        m = bob.sign_in('bob@' + DOMAIN, 'pw-bob', server.tls_port, transport='tls')
        r.check('bob signs in (TLS, NTLM)', bool(m) and m.group(1) == 'Logged in')
        carol = Baresip(server.dir, 'carol', 'carol', server, 'tcp', ['alice'], domain=DOMAIN)
        clients.append(carol)
        r.check('baresip carol registers', carol.registered())
        # Buddies appear once the contact lists and presence are in.
        alice.wait(r':sipcarol!\S+ JOIN', 15)
        bob.wait(r':sipalice!\S+ JOIN', 15)

        # Lync session IM with a pager-mode client, bridged by the IM service.
        alice.send('PRIVMSG sipcarol :hello carol, alice on Lync')
        m = carol.cons.wait_for(r'%s: "hello carol, alice on Lync"' % re.escape(ALICE), 10)
        r.check('alice (Lync INVITE, first message inline) -> carol (baresip) as a pager MESSAGE',
                bool(m), carol.cons.text[-300:])
        alice.send('PRIVMSG sipcarol :and a second line')
        m = carol.cons.wait_for(r'%s: "and a second line"' % re.escape(ALICE), 10)
        r.check('alice -> carol again (MESSAGE in the bridged dialog)', bool(m), carol.cons.text[-300:])
        carol.ctrl.cmd('message', 'hi alice, carol on baresip')
        m = alice.wait(r':sipcarol!\S+ PRIVMSG tester :hi alice, carol on baresip', 10)
        r.check('carol -> alice in the same conversation', bool(m), alice.text[-300:])
        r.check("alice's client reports no failed delivery",
                'could not be delivered' not in alice.text.lower(), alice.text[-300:])

        # Two-party first, then escalation as a Lync client does it.
        alice.send('PRIVMSG sipbob :hello bob')
        m = bob.wait(r'PRIVMSG tester :hello bob', 10)
        r.check('alice -> bob two-party', bool(m), bob.text[-300:])
        alice.command('chat with sipbob')
        a = alice.wait(r'JOIN :?(#\S+)', 15)
        r.check("alice's conference opens (focus factory, focus, IM MCU)", bool(a), alice.text[-400:])
        b = bob.wait(r'JOIN :?(#\S+)', 15)
        r.check('bob is invited (ms-conf-invite) and joins by himself', bool(b), bob.text[-400:])
        a_chan = a.group(1) if a else '#none'
        b_chan = b.group(1) if b else '#none'
        m = alice.wait(r':sipbob!\S+ JOIN :%s' % re.escape(a_chan), 10)
        r.check("alice's client lists bob in the chat (conference NOTIFY)", bool(m), alice.text[-300:])
        log = alice.debug_log()
        r.check('alice learnt the focus factory from provisioning and the IM MCU from the focus',
                'opaque=app:conf:focusfactory' in log and 'im_mcu_uri=sip:chat-' in log)
        end = time.time() + 10
        while time.time() < end and 'BYE sip:bob@' not in alice.debug_log():
            time.sleep(0.2)
        r.check('alice ends the two-party dialog with bob once he accepted',
                'BYE sip:bob@' in alice.debug_log())

        alice.send('PRIVMSG %s :hello both' % a_chan)
        m = bob.wait(r':sipalice!\S+ PRIVMSG %s :hello both' % re.escape(b_chan), 10)
        r.check("alice -> conference: bob's client shows it as alice's (Ms-Sender)", bool(m), bob.text[-300:])
        bob.send('PRIVMSG %s :hi from bob' % b_chan)
        m = alice.wait(r':sipbob!\S+ PRIVMSG %s :hi from bob' % re.escape(a_chan), 10)
        r.check("bob -> conference: alice's client shows it as bob's", bool(m), alice.text[-300:])

        # alice adds carol, whose client speaks only standard SIP.
        conf = re.search(r'sip:chat-[0-9a-f]+@' + re.escape(DOMAIN), alice.debug_log())
        conf = conf.group(0) if conf else 'sip:none@' + DOMAIN
        carol2 = Baresip(server.dir, 'carol2', 'carol', server, 'tcp', [conf], domain=DOMAIN)
        clients.append(carol2)
        r.check("carol's second baresip registers", carol2.registered())
        alice.send('INVITE sipcarol %s' % a_chan)
        m = carol.cons.wait_for(r'%s: "\*\*\* alice added you to a group chat' % re.escape(conf), 10)
        r.check('carol (baresip) is put in the conference and told so', bool(m), carol.cons.text[-300:])
        m1 = alice.wait(r':sipcarol!\S+ JOIN :%s' % re.escape(a_chan), 10)
        m2 = bob.wait(r':\S+!sip:carol@\S+ JOIN :%s' % re.escape(b_chan), 10)
        r.check('both Lync clients see carol join', bool(m1) and bool(m2), bob.text[-300:])
        alice.send('PRIVMSG %s :welcome carol' % a_chan)
        m = carol.cons.wait_for(r'%s: "alice: welcome carol"' % re.escape(conf), 10)
        r.check('alice -> conference reaches carol, headed by the author', bool(m), carol.cons.text[-300:])
        m = bob.wait(r':sipalice!\S+ PRIVMSG %s :welcome carol' % re.escape(b_chan), 10)
        r.check('... and bob', bool(m), bob.text[-300:])
        carol2.ctrl.cmd('message', 'thanks, carol here')
        m1 = alice.wait(r'PRIVMSG %s :thanks, carol here' % re.escape(a_chan), 10)
        m2 = bob.wait(r'PRIVMSG %s :thanks, carol here' % re.escape(b_chan), 10)
        r.check('carol -> conference reaches both Lync clients', bool(m1) and bool(m2),
                alice.text[-200:] + bob.text[-200:])

        # alice leaves; bob sees her go.
        alice.send('PART %s' % a_chan)
        m = bob.wait(r':sipalice!\S+ PART %s' % re.escape(b_chan), 10)
        r.check('alice leaves (BYE to the IM MCU and focus); bob sees her go', bool(m), bob.text[-300:])

        # carol (baresip) starts a group chat from her chat with alice: both Lync clients are
        # invited into it as a conference (ms-conf-invite) and join it by themselves.
        carol.ctrl.cmd('message', '/invite bob@' + DOMAIN)
        a2 = alice.wait(r'JOIN :?(#\S+)', 15)
        b2 = bob.wait(r'JOIN :?(#\S+)', 15)
        r.check("carol's group chat: both Lync clients are invited and join it as a conference",
                bool(a2) and bool(b2), alice.text[-300:] + bob.text[-300:])
        m = carol.cons.wait_for(r'(sip:chat-[0-9a-f]+@%s): "\*\*\* carol started a group chat' % re.escape(DOMAIN), 10)
        r.check('carol gets her group chat as pager MESSAGEs', bool(m), carol.cons.text[-300:])
        second = m.group(1) if m else 'none'
        # sipe drops what is typed before its chat session is up: wait until bob is in the
        # chat (alice's roster shows him) and his INVITE's answer has reached him.
        alice.wait(r':sipbob!\S+ JOIN :%s' % re.escape(a2.group(1) if a2 else '#none'), 10)
        time.sleep(0.5)
        bob.send('PRIVMSG %s :bob in carol\'s chat' % (b2.group(1) if b2 else '#none'))
        m = carol.cons.wait_for(r'%s: "bob: bob in carol\'s chat"' % re.escape(second), 10)
        r.check("bob -> carol's group chat reaches carol", bool(m), carol.cons.text[-300:])
        m = alice.wait(r':sipbob!\S+ PRIVMSG %s :bob in carol' % re.escape(a2.group(1) if a2 else '#none'), 10)
        r.check('... and alice', bool(m), alice.text[-300:])

        pairs, confs = cdr_sessions(server)
        ab = [s for s in pairs if {p['address'] for p in s['participants']} == {ALICE, BOB}]
        ac = [s for s in pairs if {p['address'] for p in s['participants']} == {ALICE, CAROL}]
        r.check('CDR: the bridged alice-carol session, alice 2 messages, carol 1',
                len(ac) == 1 and message_counts(ac[0]) == {ALICE: 2, CAROL: 1}, str(ac))
        mine = [x for x in confs if x['organiser'] == ALICE]
        c = mine[0] if len(mine) == 1 else {}
        r.check('CDR: one conference, organised by alice, escalated from the alice-bob session',
                bool(c) and len(ab) == 1 and c['organiser'] == ALICE and c['escalated_from'] == ab[0]['id'],
                str(confs)[:400])
        r.check('CDR: conference counts alice 2, bob 1, carol 1',
                bool(c) and message_counts(c) == {ALICE: 2, BOB: 1, CAROL: 1}, str(c)[:400])
        left = {p['address']: p['left_at_ms'] for p in c.get('participants', [])}
        r.check('CDR: alice has left the conference, bob has not', bool(left.get(ALICE)) and not left.get(BOB),
                str(left))
    finally:
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
