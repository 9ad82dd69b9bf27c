#!/usr/bin/env python3
"""pidgin-sipe 1.25 (Debian 12), the Lync-dialect reference client, signs in to Switchboard over
TCP with NTLM (MS-SIPAE): the 401/401/200 handshake, and sipe checks the server's signature on the
200. A wrong password is refused. (The Lync services after sign-in are later work.)

pidgin-sipe is a libpurple plugin; it runs headless inside bitlbee (libpurple build) in inetd
mode, driven over IRC on a socketpair, so no port is opened. What it says comes from its own IRC
messages and its libpurple debug log (every SIP message and its signature checks).

Usage: sipe_signin.py      (needs bitlbee-libpurple, pidgin-sipe and the switchboard binary)
"""
import os, re, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbtest import Results, Server, stop_all
from sipe import Sipe


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
