#!/usr/bin/env python3
"""linphonec (Debian 12, linphone-cli 5.1) and baresip exchanging IM through Switchboard:
pager-mode MESSAGE both ways between different clients, a third person added with /invite
from linphonec, linphonec writing to the group chat, and the CDR checked afterwards.

Usage: linphonec_im.py      (needs linphonec, baresip and the switchboard binary)
linphonec is driven over stdin; it prints  Message received from <uri>: <text>.
"""
import json, os, queue, re, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbtest import Results, Server, stop_all, cdr_sessions, free_port, message_counts
from baresip_im import Baresip


class Linphonec:
    def __init__(self, workdir, user, server, publish=False, friends=(), domain='127.0.0.1'):
        self.home = os.path.join(workdir, 'lp-' + user)
        os.makedirs(os.path.join(self.home, '.local/share/linphone'), exist_ok=True)  # its chat database
        rc = os.path.join(self.home, 'linphonerc')
        sip, rtp = free_port(both=True), free_port(kind=2)
        host = getattr(server, 'host', '127.0.0.1')  # a pool's front end has an address of its own
        with open(rc, 'w') as f:
            # publish=1: PUBLISH "online" at registration; friends: SUBSCRIBE to their presence.
            f.write('\n'.join([
                '[sip]', 'sip_port=%d' % sip, 'sip_tcp_port=-1', 'sip_tls_port=-1', 'bind_address=127.0.0.1',
                'default_proxy=0', '[rtp]', 'audio_rtp_port=%d' % rtp, 'video_rtp_port=%d' % (rtp + 2),
                '[proxy_0]', 'reg_proxy=<sip:%s:%d;transport=udp>' % (host, server.port),
                'reg_route=<sip:%s:%d;transport=udp;lr>' % (host, server.port),
                'reg_identity=sip:%s@%s' % (user, domain), 'reg_expires=600', 'reg_sendregister=1', 'publish=%d' % publish, 'publish_expires=600',
                '[auth_info_0]', 'username=%s' % user, 'passwd=pw-%s' % user, 'realm=%s' % domain, 'domain=%s' % domain]
                + sum((['[friend_%d]' % i, 'url="%s" <sip:%s@%s>' % (f, f, domain), 'pol=accept', 'subscribe=1']
                       for i, f in enumerate(friends)), []) + ['']))
        self.lines = queue.Queue()
        self.seen = []
        self.proc = subprocess.Popen(['linphonec', '-c', rc, '-d', '6', '-l', os.path.join(self.home, 'linphone.log')],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, HOME=self.home), text=True, bufsize=1,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip('\n'))

    def cmd(self, c):
        self.proc.stdin.write(c + '\n')
        self.proc.stdin.flush()

    def wait(self, pattern, timeout=10):
        for i, line in enumerate(self.seen):
            m = re.search(pattern, line)
            if m:
                del self.seen[:i + 1]
                return m
        end = time.time() + timeout
        while time.time() < end:
            try:
                line = self.lines.get(timeout=max(0.05, end - time.time()))
            except queue.Empty:
                break
            m = re.search(pattern, line)
            if m:
                return m
            self.seen.append(line)
        return None

    def registered(self, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            self.cmd('status register')
            m = self.wait(r'registered(=-1|, identity=\S+)', 2)
            if m and m.group(1).startswith(','):
                return True
            time.sleep(0.2)
        return False

    def stop(self):
        try:
            self.cmd('quit')
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


def main():
    r = Results('linphonec')
    server = Server(['alice', 'bob', 'carol'])
    clients = []
    try:
        alice = Linphonec(server.dir, 'alice', server); clients.append(alice)
        bob = Baresip(server.dir, 'bob', 'bob', server, 'udp', ['alice']); clients.append(bob)
        carol = Baresip(server.dir, 'carol', 'carol', server, 'udp', ['alice']); clients.append(carol)
        r.check('linphonec alice registers with Digest', alice.registered())
        r.check('baresip bob registers', bob.registered())
        r.check('baresip carol registers', carol.registered())

        alice.cmd('chat sip:bob@127.0.0.1 hello bob, linphonec here')   # no quotes: linphonec sends them as text
        m = bob.cons.wait_for(r'sip:alice@127\.0\.0\.1: "hello bob, linphonec here"')
        r.check('baresip bob receives linphonec alice\'s MESSAGE', bool(m), '' if m else bob.cons.text[-300:])
        bob.ctrl.cmd('message', 'hi alice, baresip here')
        m = alice.wait(r'Message received from .*bob@127\.0\.0\.1.*: (.*)')
        r.check('linphonec alice receives baresip bob\'s reply', bool(m) and 'baresip here' in m.group(1),
                m.group(0) if m else '')

        alice.cmd('chat sip:bob@127.0.0.1 /invite carol@127.0.0.1')
        m = alice.wait(r'Message received from .*(sip:chat-[0-9a-f]+@127\.0\.0\.1).*started a group chat')
        r.check('linphonec alice is put in the group chat', bool(m), m.group(0) if m else '')
        group = m.group(1) if m else None
        for c, who in ((bob, 'bob'), (carol, 'carol')):
            g = c.cons.wait_for(r'sip:chat-[0-9a-f]+@127\.0\.0\.1: "\*\*\* alice started a group chat')
            r.check('baresip %s is put in the group chat' % who, bool(g), '' if g else c.cons.text[-300:])
        if group:
            alice.cmd('chat %s hello group' % group)
            for c, who in ((bob, 'bob'), (carol, 'carol')):
                g = c.cons.wait_for(re.escape(group) + r': "alice: hello group"')
                r.check('baresip %s receives alice\'s group message' % who, bool(g), '' if g else c.cons.text[-300:])

        pair, conf = cdr_sessions(server)
        counts = message_counts(pair[0]) if pair else {}
        r.check('CDR: the two-party session counts 1 message each',
                counts == {'sip:alice@127.0.0.1': 1, 'sip:bob@127.0.0.1': 1}, str(counts))
        cc = message_counts(conf[0]) if conf else {}
        r.check('CDR: the group chat, escalated from it, counts alice\'s message',
                len(conf) == 1 and pair and conf[0]['escalated_from'] == pair[0]['id'] and cc.get('sip:alice@127.0.0.1') == 1,
                str(cc))
    finally:
        stop_all(server, clients)
    r.exit(server)


if __name__ == '__main__':
    main()
