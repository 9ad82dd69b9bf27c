#!/usr/bin/env python3
"""The client side of bench/failover.sh: N SIP clients over TCP against a pool of front
ends, some of which it kills (SIGKILL) and restarts, measuring how the pool and the
clients come through. Python 3 asyncio, standard library only; a minimal SIP of its own:

- REGISTER with Digest MD5 (qop=auth) after a 401, Expires 600;
- MESSAGE with Digest MD5 after a 407 (every MESSAGE is challenged afresh);
- every request the server sends (a relayed MESSAGE) is answered 200;
- framing by Content-Length.

Each client is given the front ends' addresses in an order of its own (shuffled, as DNS
load balancing hands them out) and connects to its first. When its connection drops it
connects to the next address in its list at once (then with a backoff of 100 ms doubling to
1 s while connections are refused) and registers again. Half the clients are talkers: each
writes to a fixed partner (the other half) every TALK_INTERVAL s (jittered) and counts the
2xx answers per pair. After the kills, the CDR is checked against those counts with psql.

Run by bench/failover.sh, which starts PostgreSQL and the front ends and writes
WORK/run/start-fe.sh (starts front end N, writes WORK/run/fe-N.pid).
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time

CRLF = "\r\n"


def now():
    return time.monotonic()


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def rand_hex(n=8):
    return os.urandom(n).hex()


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def parse_auth(value):
    """Digest k=v, k="v" parameters of a challenge header."""
    v = value.strip()
    if v.lower().startswith("digest"):
        v = v[6:]
    out = {}
    i = 0
    while i < len(v):
        while i < len(v) and v[i] in " ,":
            i += 1
        j = v.find("=", i)
        if j < 0:
            break
        k = v[i:j].strip().lower()
        j += 1
        if j < len(v) and v[j] == '"':
            e = v.find('"', j + 1)
            out[k] = v[j + 1:e]
            i = e + 1
        else:
            e = v.find(",", j)
            e = len(v) if e < 0 else e
            out[k] = v[j:e].strip()
            i = e
    return out


class Msg:
    __slots__ = ("start", "headers", "body")

    def __init__(self, start, headers, body):
        self.start = start
        self.headers = headers  # list of (lower name, value)
        self.body = body

    def is_request(self):
        return not self.start.startswith("SIP/2.0")

    def status(self):
        return int(self.start.split(" ", 2)[1])

    def get(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name):
        return [v for k, v in self.headers if k == name]


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length",
           "m": "contact", "c": "content-type"}


async def read_msg(reader):
    """One SIP message off a stream (keepalive CRLFs skipped); None at EOF."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        text = head.decode("utf-8", "replace").lstrip("\r\n")
        if text:
            break
    lines = text.split(CRLF)
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        k, _, v = line.partition(":")
        k = k.strip().lower()
        headers.append((COMPACT.get(k, k), v.strip()))
    n = 0
    for k, v in headers:
        if k == "content-length":
            n = int(v)
    body = await reader.readexactly(n) if n else b""
    return Msg(start, headers, body)


NAMES = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}


def response_to(req, code, reason):
    out = [f"SIP/2.0 {code} {reason}"]
    for k in ("via", "from", "to", "call-id", "cseq"):
        for v in req.get_all(k):
            if k == "to" and "tag=" not in v:
                v += ";tag=" + rand_hex(4)
            out.append(f"{NAMES[k]}: {v}")
    out.append("Content-Length: 0")
    return (CRLF.join(out) + CRLF + CRLF).encode()


def owner_of(pair_key, ids):
    """switchboard_pool::rendezvous_owner: the highest sha256(key || fe as u32 BE)[..8]."""
    best, best_h = None, -1
    for fe in ids:
        h = int.from_bytes(hashlib.sha256(pair_key.encode() + fe.to_bytes(4, "big")).digest()[:8], "big")
        if h > best_h:
            best, best_h = fe, h
    return best


def pager_pair(a, b):
    return f"pager|{a}|{b}" if a <= b else f"pager|{b}|{a}"


class Stats:
    def __init__(self):
        self.kill = None          # (k, fe, t_kill) of the kill in progress
        self.drops = []           # (k, client, fe_was_on, t)
        self.backs = []           # (k, client, fe_now_on, t_back - t_kill, attempts)
        self.stray_drops = []     # drops with no kill in progress / from a live front end
        self.reg_failures = 0
        self.msg_status = {}      # status -> count
        self.pair = {}            # talker index -> {"acked", "unanswered", "refused", "ack_times"}
        self.received = 0
        self.bodies = set()       # the bodies of every MESSAGE the clients got (unique per send)
        self.last_kill = None     # the latest kill, kept after it is over
        self.refusals = []        # non-2xx answers to MESSAGEs, with when and where


class Client:
    def __init__(self, drv, i, addrs):
        self.drv = drv
        self.i = i
        self.user = f"u{i:04d}"
        self.aor = f"sip:{self.user}@{drv.domain}"
        self.addrs = addrs          # [(fe, host, port)] in this client's order
        self.at = 0
        self.reader = None
        self.writer = None
        self.call_id = rand_hex() + "@fo"
        self.cseq = 0
        self.pending = {}
        self.registered = False
        self.failing_over = False
        self.reader_task = None
        self.stop = False

    @property
    def fe(self):
        return self.addrs[self.at][0]

    async def connect(self):
        fe, host, port = self.addrs[self.at]
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
        self.reader, self.writer = r, w
        self.local = w.get_extra_info("sockname")
        self.registered = False
        self.reader_task = asyncio.ensure_future(self.read_loop(w))

    async def read_loop(self, w):
        try:
            while True:
                m = await read_msg(self.reader)
                if m.is_request():
                    if m.start.startswith("MESSAGE"):
                        self.drv.stats.received += 1
                        self.drv.stats.bodies.add(m.body)
                    if not m.start.startswith("ACK"):
                        w.write(response_to(m, 200, "OK"))
                    continue
                cseq = m.get("cseq") or ""
                key = (m.get("call-id"), cseq.split()[0] if cseq else "")
                if m.status() >= 200:
                    fut = self.pending.pop(key, None)
                    if fut and not fut.done():
                        fut.set_result(m)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            return
        if self.writer is w:
            self.on_drop()

    def on_drop(self):
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("dropped"))
        self.pending.clear()
        was = self.fe
        self.registered = False
        try:
            self.writer.close()
        except Exception:
            pass
        self.writer = None
        if self.stop:
            return
        st = self.drv.stats
        k = st.kill
        if k is None or k[1] != was:
            st.stray_drops.append((k[0] if k else None, self.i, was, now()))
        st.drops.append((k[0] if k else None, self.i, was, now()))
        if not self.failing_over:
            self.failing_over = True
            asyncio.ensure_future(self.fail_over(k))

    def build(self, method, uri, to, extra=(), body=b"", content_type=None, via_branch=None):
        self.cseq += 1
        host, port = self.local[0], self.local[1]
        h = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{via_branch or rand_hex()};rport",
             "Max-Forwards: 70",
             f"From: <{self.aor}>;tag={rand_hex(4)}",
             f"To: <{to}>",
             f"Call-ID: {self.call_id}",
             f"CSeq: {self.cseq} {method}"]
        if method == "REGISTER":
            h.append(f"Contact: <sip:{self.user}@{host}:{port};transport=tcp>")
        h.extend(extra)
        if content_type:
            h.append(f"Content-Type: {content_type}")
        h.append(f"Content-Length: {len(body)}")
        return method, uri, to, (CRLF.join(h) + CRLF + CRLF).encode() + body, str(self.cseq)

    async def transact(self, req, timeout):
        method, uri, to, data, cseq = req
        w = self.writer
        if w is None:
            raise ConnectionError("not connected")
        fut = asyncio.get_running_loop().create_future()
        self.pending[(self.call_id, cseq)] = fut
        w.write(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop((self.call_id, cseq), None)

    async def authed(self, method, uri, to, extra=(), body=b"", ctype=None, timeout=8):
        """Sends, answers one 401/407 with Digest MD5 qop=auth, returns the final response."""
        r = await self.transact(self.build(method, uri, to, extra, body, ctype), timeout)
        if r.status() not in (401, 407):
            return r
        hname, cname = ("www-authenticate", "Authorization") if r.status() == 401 else \
            ("proxy-authenticate", "Proxy-Authorization")
        ch = None
        for v in r.get_all(hname):
            p = parse_auth(v)
            if p.get("algorithm", "MD5").upper() == "MD5":
                ch = p
                break
        if ch is None:
            return r
        realm, nonce = ch["realm"], ch["nonce"]
        cnonce, nc = rand_hex(), "00000001"
        ha1 = md5(f"{self.user}:{realm}:{self.drv.password}")
        ha2 = md5(f"{method}:{uri}")
        resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        cred = (f'{cname}: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"')
        if "opaque" in ch:
            cred += f', opaque="{ch["opaque"]}"'
        return await self.transact(self.build(method, uri, to, list(extra) + [cred], body, ctype), timeout)

    async def register(self):
        r = await self.authed("REGISTER", f"sip:{self.drv.domain}", self.aor, ["Expires: 600"], timeout=10)
        ok = r.status() == 200
        self.registered = ok
        return ok

    async def sign_in(self):
        """The first sign-in, on the first front end of the list (next ones if it fails)."""
        for _ in range(len(self.addrs) * 3):
            try:
                await self.connect()
                if await self.register():
                    return True
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
            self.drop_quietly()
            self.at = (self.at + 1) % len(self.addrs)
            await asyncio.sleep(0.2)
        return False

    def drop_quietly(self):
        w = self.writer
        self.writer = None
        if self.reader_task:
            self.reader_task.cancel()
        if w:
            try:
                w.close()
            except Exception:
                pass

    async def fail_over(self, kill):
        backoff = 0.1
        attempts = 0
        try:
            while not self.stop:
                self.at = (self.at + 1) % len(self.addrs)
                attempts += 1
                t_c = now()
                try:
                    await self.connect()
                except (OSError, asyncio.TimeoutError):
                    self.writer = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                t_r = now()
                try:
                    if await self.register():
                        st = self.drv.stats
                        t_kill = kill[2] if kill else None
                        st.backs.append((kill[0] if kill else None, self.i, self.fe,
                                         (now() - t_kill) if t_kill else None, attempts,
                                         t_r - t_c, now() - t_r))
                        return
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    pass
                self.drv.stats.reg_failures += 1
                self.drop_quietly()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
        finally:
            self.failing_over = False

    async def talk(self, partner, interval, rec):
        to = partner.aor
        await asyncio.sleep(random.uniform(0, interval))
        n = 0
        while not self.drv.talk_stop:
            if self.registered and self.writer is not None:
                n += 1
                body = f"m{n} from {self.user}".encode()
                at_send = (now(), self.fe, partner.fe, partner.registered)
                try:
                    r = await self.authed("MESSAGE", to, to, body=body,
                                          ctype="text/plain", timeout=10)
                    s = r.status()
                    self.drv.stats.msg_status[s] = self.drv.stats.msg_status.get(s, 0) + 1
                    if 200 <= s < 300:
                        rec["acked"] += 1
                        rec["ack_times"].append(now())
                    else:
                        rec["refused"] += 1
                        st = self.drv.stats
                        last = st.last_kill
                        st.refusals.append({
                            "status": s, "reason": r.start, "body": body.decode(), "warning": r.get("warning"),
                            "since_kill_s": round(now() - last[2], 3) if last else None,
                            "kill": last[0] if last else None, "killed_fe": last[1] if last else None,
                            "sender_on": self.fe,
                            "keeper": owner_of(pager_pair(self.aor, to),
                                              sorted({f for f in (self.fe, partner.fe) if f is not None})
                                              or sorted(self.drv.fes)),
                            "partner_on": partner.fe,
                            "sent_since_kill_s": round(at_send[0] - last[2], 3) if last else None,
                            "sender_on_at_send": at_send[1], "partner_on_at_send": at_send[2],
                            "partner_registered_at_send": at_send[3]})
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    rec["unanswered"] += 1
                    rec["unanswered_times"].append(now())
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))


class Driver:
    def __init__(self, a):
        self.a = a
        self.domain = a.domain
        self.password = a.password
        self.stats = Stats()
        self.talk_stop = False
        self.fes = {}
        for spec in a.fe:
            n, addr = spec.split("=")
            host, port = addr.rsplit(":", 1)
            self.fes[int(n)] = (host, int(port))

    async def pool_status(self):
        p = await asyncio.create_subprocess_exec(
            self.a.bin, "--database", self.a.db, "pool", "status", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await p.communicate()
        if p.returncode != 0:
            return None
        try:
            return {m["fe"]: m for m in json.loads(out)["members"]}
        except (ValueError, KeyError):
            return None

    def pid_of(self, fe):
        with open(os.path.join(self.a.run_dir, f"fe-{fe}.pid")) as f:
            return int(f.read().strip())

    async def psql(self, sql):
        p = await asyncio.create_subprocess_exec(
            "psql", self.a.db, "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err.decode())
        return [l.split("\t") for l in out.decode().splitlines() if l]

    async def run(self):
        a = self.a
        ids = sorted(self.fes)
        rnd = random.Random(a.seed)
        clients = []
        for i in range(a.n):
            order = [(fe, *self.fes[fe]) for fe in ids]
            rnd.shuffle(order)
            clients.append(Client(self, i, order))
        # Sign in, a few hundred at a time.
        t0 = now()
        sem = asyncio.Semaphore(200)

        async def one(c):
            async with sem:
                return await c.sign_in()
        ok = await asyncio.gather(*(one(c) for c in clients))
        if not all(ok):
            log(f"{ok.count(False)} clients could not sign in")
        log(f"{sum(ok)} of {a.n} clients registered in {now() - t0:.1f} s")
        per_fe = {}
        for c in clients:
            per_fe[c.fe] = per_fe.get(c.fe, 0) + 1
        log("clients per front end:", dict(sorted(per_fe.items())))
        # Talkers: the first half, each to the client half a population away.
        half = a.n // 2
        talks = []
        for i in range(half):
            rec = {"acked": 0, "unanswered": 0, "refused": 0, "ack_times": [], "unanswered_times": []}
            self.stats.pair[i] = rec
            talks.append(asyncio.ensure_future(clients[i].talk(clients[i + half], a.talk_interval, rec)))
        await asyncio.sleep(a.warmup)
        status = await self.pool_status()
        log("pool before the kills:", {k: v.get("load") for k, v in (status or {}).items()})

        kills = []
        for k in range(1, a.kills + 1):
            fe = ids[(k - 1) % len(ids)]
            st = await self.pool_status()
            t_poll = now()
            old = st.get(fe) if st else None
            hb_age = old["heartbeat_age_ms"] if old else None
            old_epoch = old["epoch"] if old else None
            load = old.get("load") if old else None
            on_it = sum(1 for c in clients if c.fe == fe and c.writer is not None)
            pid = self.pid_of(fe)
            self.stats.kill = (k, fe, now())
            self.stats.last_kill = self.stats.kill
            lq0 = listen_counters()
            t_kill = self.stats.kill[2]
            os.kill(pid, signal.SIGKILL)
            log(f"kill {k}: front end {fe} (pid {pid}, epoch {old_epoch}), {on_it} clients on it, "
                f"heartbeat {hb_age} ms old {1000 * (t_kill - t_poll):.0f} ms before the kill")
            async def wait_back():
                # Clients back: every one that dropped because of this kill.
                deadline = t_kill + a.back_limit
                while now() < deadline:
                    dropped = {d[1] for d in self.stats.drops if d[0] == k}
                    back = {b[1] for b in self.stats.backs if b[0] == k}
                    if len(dropped) >= on_it and dropped <= back:
                        break
                    await asyncio.sleep(0.1)

            def restart():
                # Same id, same address.
                subprocess.run([os.path.join(a.run_dir, "start-fe.sh"), str(fe)], check=True)
                return now()

            t_rs = None
            if a.restart_at == "back":
                await wait_back()
                t_rs = restart()
            # Detection: until pool status no longer lists its epoch (polled every 100 ms);
            # restarted before that (RESTART_AT=back), the new run may replace it first.
            detected = None
            while now() - t_kill < a.detect_limit:
                st = await self.pool_status()
                if st is not None and (fe not in st or st[fe]["epoch"] != old_epoch):
                    detected = now() - t_kill
                    break
                await asyncio.sleep(0.1)
            if a.restart_at != "back":
                await wait_back()
            dropped = [d for d in self.stats.drops if d[0] == k]
            backs = sorted(b[3] for b in self.stats.backs if b[0] == k)
            kb = [b for b in self.stats.backs if b[0] == k]
            lq1 = listen_counters()
            if t_rs is None:
                t_rs = restart()
            # The time from the restart until pool status lists all of them again.
            joined = None
            new_epoch = None
            while now() - t_rs < a.join_limit:
                st = await self.pool_status()
                if st and fe in st and st[fe]["epoch"] != old_epoch and len(st) == len(ids):
                    joined = now() - t_rs
                    new_epoch = st[fe]["epoch"]
                    break
                await asyncio.sleep(0.1)
            rec = {
                "kill": k, "fe": fe, "t_kill": t_kill, "old_epoch": old_epoch, "new_epoch": new_epoch,
                "clients_on_it": on_it, "load_before": load,
                "hb_age_ms_before": hb_age, "poll_to_kill_ms": 1000 * (t_kill - t_poll),
                "detect_s": detected,
                "detect_from_heartbeat_s": (detected + (t_kill - t_poll) + hb_age / 1000)
                if detected is not None and hb_age is not None else None,
                "dropped": len(dropped), "back": len(backs),
                "back_p50_s": pct(backs, 50), "back_p95_s": pct_of_n(backs, 95, len(dropped)),
                "back_max_s": backs[-1] if backs and len(backs) == len(dropped) else None,
                "back_last_s": backs[-1] if backs else None,
                "rejoin_s": joined,
                "back_over_1s": sum(1 for x in backs if x > 1.0),
                "connect_max_s": max((b[5] for b in kb), default=None),
                "connect_over_0.9s": sum(1 for b in kb if b[5] > 0.9),
                "register_max_s": max((b[6] for b in kb), default=None),
                "attempts_max": max((b[4] for b in kb), default=None),
                "listen_overflows": lq1.get("ListenOverflows", 0) - lq0.get("ListenOverflows", 0),
                "listen_drops": lq1.get("ListenDrops", 0) - lq0.get("ListenDrops", 0),
            }
            kills.append(rec)
            log(f"kill {k}: detected {fmt(detected)} s, {len(backs)}/{len(dropped)} back "
                f"(p50 {fmt(rec['back_p50_s'])}, p95 {fmt(rec['back_p95_s'])}, max {fmt(rec['back_max_s'])} s), "
                f"rejoined in {fmt(joined)} s (epoch {new_epoch})")
            # The rest of the period between kills.
            rest = a.dur - (now() - t_kill)
            if rest > 0 and k < a.kills:
                await asyncio.sleep(rest)
        self.stats.kill = None
        # A last quiet while, then stop the talkers and let the CDR writes settle.
        await asyncio.sleep(a.tail)
        self.talk_stop = True
        await asyncio.gather(*talks)
        log(f"talkers stopped; waiting {a.settle} s for the CDR writes")
        await asyncio.sleep(a.settle)
        cdr = await self.check_cdr(clients, half, kills)
        for c in clients:
            c.stop = True
            c.drop_quietly()
        return kills, cdr

    async def check_cdr(self, clients, half, kills):
        rows = await self.psql(
            "SELECT s.id, s.owner, s.epoch, s.started_at_ms, COALESCE(s.ended_at_ms, -1), "
            "COALESCE(s.end_reason, ''), s.initiator, p.address, p.messages "
            "FROM cdr_sessions s JOIN cdr_participants p ON p.session_id = s.id "
            "WHERE s.kind = 'two-party'")
        sessions = {}
        for sid, owner, epoch, start, end, reason, init, addr, msgs in rows:
            s = sessions.setdefault(sid, {"owner": owner, "epoch": int(epoch), "start": int(start),
                                          "end": int(end), "reason": reason, "parts": {}})
            s["parts"][addr] = int(msgs)
        by_pair = {}
        for sid, s in sessions.items():
            key = tuple(sorted(s["parts"]))
            by_pair.setdefault(key, []).append(sid)
        killed_epochs = {k["old_epoch"] for k in kills}
        res = {"sessions": len(sessions), "pairs_with_sessions": len(by_pair)}
        # What a counter flush interval (1 s) could lose: acknowledged messages of pairs the
        # killed front end kept, in the last 1 s (and 2 s) before the kill.
        ids = sorted(self.fes)
        in_window = {1.0: 0, 2.0: 0}
        pair_window = {}
        for k in kills:
            t_kill = k["t_kill"]
            for i in range(half):
                key = pager_pair(clients[i].aor, clients[i + half].aor)
                if owner_of(key, ids) != k["fe"]:
                    continue
                for w in in_window:
                    n = sum(1 for t in self.stats.pair[i]["ack_times"] if t_kill - w < t <= t_kill)
                    in_window[w] += n
                    if w == 2.0:
                        pair_window[i] = pair_window.get(i, 0) + n
        acked = counted = lost = dup_excess = ambiguous_excess = 0
        pairs_lost = pairs_excess = 0
        overlaps = 0
        unexplained = 0
        lost_detail = []
        for i in range(half):
            a, b = clients[i].aor, clients[i + half].aor
            rec = self.stats.pair[i]
            sids = by_pair.get(tuple(sorted((a, b))), [])
            c = sum(sessions[s]["parts"].get(a, 0) for s in sids)
            acked += rec["acked"]
            counted += c
            if c < rec["acked"]:
                lost += rec["acked"] - c
                pairs_lost += 1
                unexplained += max(0, rec["acked"] - c - pair_window.get(i, 0))
                lost_detail.append({"pair": f"{a} -> {b}", "acked": rec["acked"], "counted": c,
                                    "unanswered": rec["unanswered"],
                                    "sessions": [(sessions[s]["owner"], sessions[s]["epoch"],
                                                  sessions[s]["reason"], sessions[s]["parts"].get(a, 0))
                                                 for s in sids]})
            elif c > rec["acked"]:
                pairs_excess += 1
                # Messages the talker got no answer for (its connection dropped or it timed
                # out) may have been counted: only a count above acked + unanswered is a
                # certain duplicate.
                extra = c - rec["acked"]
                certain = max(0, extra - rec["unanswered"])
                dup_excess += certain
                ambiguous_excess += extra - certain
            # Two sessions of the pair open at the same time (by their CDR times).
            iv = sorted((sessions[s]["start"], sessions[s]["end"] if sessions[s]["end"] >= 0 else 1 << 62)
                        for s in sids)
            for x, y in zip(iv, iv[1:]):
                if y[0] < x[1]:
                    overlaps += 1
        res["acked_by_killed_owner_last_1s"] = in_window[1.0]
        res["acked_by_killed_owner_last_2s"] = in_window[2.0]
        res.update({
            "acked": acked, "counted": counted, "lost": lost, "pairs_short": pairs_lost,
            "pairs_over": pairs_excess, "certain_duplicates": dup_excess,
            "over_by_unanswered": ambiguous_excess, "overlapping_sessions": overlaps,
            "lost_detail": lost_detail[:5],
            "lost_beyond_2s_window": unexplained,
        })
        if killed_epochs - {None}:
            ep = ",".join(str(e) for e in killed_epochs if e is not None)
            r = await self.psql(f"SELECT count(*) FROM cdr_sessions WHERE ended_at_ms IS NULL AND epoch IN ({ep})")
            res["open_of_killed_epochs"] = int(r[0][0])
            r = await self.psql(
                f"SELECT COALESCE(end_reason, '(open)'), count(*) FROM cdr_sessions WHERE epoch IN ({ep}) "
                "GROUP BY 1 ORDER BY 1")
            res["killed_epochs_sessions_by_reason"] = {x[0]: int(x[1]) for x in r}
        r = await self.psql("SELECT owner, COALESCE(end_reason, '(open)'), count(*) FROM cdr_sessions "
                            "GROUP BY 1, 2 ORDER BY 1, 2")
        res["sessions_by_owner_reason"] = [[x[0], x[1], int(x[2])] for x in r]
        return res


def listen_counters():
    """TcpExt ListenOverflows / ListenDrops (the whole machine's) from /proc/net/netstat."""
    try:
        lines = open("/proc/net/netstat").read().splitlines()
        for a, b in zip(lines, lines[1:]):
            if a.startswith("TcpExt:") and b.startswith("TcpExt:"):
                return dict(zip(a.split()[1:], map(int, b.split()[1:])))
    except OSError:
        pass
    return {}


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    i = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[i]


def pct_of_n(backs, p, n):
    """The time by which p % of the n dropped clients were back (None if they never were)."""
    need = -(-p * n // 100)
    if n == 0:
        return None
    if len(backs) < need:
        return None
    return sorted(backs)[need - 1]


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--fe", action="append", required=True, help="N=HOST:PORT")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--dur", type=float, default=25)
    ap.add_argument("--talk-interval", type=float, default=3)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--tail", type=float, default=5)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--detect-limit", type=float, default=30)
    ap.add_argument("--back-limit", type=float, default=60)
    ap.add_argument("--join-limit", type=float, default=30)
    ap.add_argument("--domain", default="bench.local")
    ap.add_argument("--password", default="pw")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--restart-at", choices=["reaped", "back"], default="reaped",
                    help="restart a killed front end once it is reaped, or as soon as its clients are back")
    a = ap.parse_args()
    drv = Driver(a)
    t0 = time.time()
    kills, cdr = asyncio.run(drv.run())
    st = drv.stats
    all_backs = [b[3] for b in st.backs if b[0] is not None and b[3] is not None]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "driver_cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "driver_wall_s": round(time.time() - t0, 1),
        "n": a.n, "kills": len(kills), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)),
        "detect_s": stats_of([k["detect_s"] for k in kills]),
        "detect_from_heartbeat_s": stats_of([k["detect_from_heartbeat_s"] for k in kills]),
        "back_p50_s": stats_of([k["back_p50_s"] for k in kills]),
        "back_p95_s": stats_of([k["back_p95_s"] for k in kills]),
        "back_max_s": stats_of([k["back_max_s"] for k in kills]),
        "rejoin_s": stats_of([k["rejoin_s"] for k in kills]),
        "dropped_total": sum(k["dropped"] for k in kills),
        "back_total": sum(k["back"] for k in kills),
        "all_backs_p50_s": pct(all_backs, 50), "all_backs_p95_s": pct(all_backs, 95),
        "all_backs_max_s": max(all_backs) if all_backs else None,
        "stray_drops": len(st.stray_drops), "register_failures_during_failover": st.reg_failures,
        "message_status": {str(k): v for k, v in sorted(st.msg_status.items())},
        "unanswered_messages": sum(r["unanswered"] for r in st.pair.values()),
        "messages_received": st.received,
        "refusals": st.refusals,
        "refused_yet_delivered": sum(1 for r in st.refusals if r["body"].encode() in st.bodies),
        "cdr": cdr,
    }
    with open(a.out, "w") as f:
        json.dump({"kills": kills, "summary": summary}, f, indent=1)
    # Tables.
    print()
    print("| kill | front end | clients on it | detected (s) | since last heartbeat (s) | back p50 (s) | "
          "95 % back (s) | 100 % back (s) | back / dropped | rejoin (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in kills:
        print(f"| {k['kill']} | {k['fe']} | {k['clients_on_it']} | {fmt(k['detect_s'])} | "
              f"{fmt(k['detect_from_heartbeat_s'])} | {fmt(k['back_p50_s'], 3)} | {fmt(k['back_p95_s'], 3)} | "
              f"{fmt(k['back_max_s'], 3)} | {k['back']} / {k['dropped']} | {fmt(k['rejoin_s'])} |")
    print()
    for name in ("detect_s", "detect_from_heartbeat_s", "back_p50_s", "back_p95_s", "back_max_s", "rejoin_s"):
        s = summary[name]
        print(f"{name:26} min {fmt(s['min'], 3)}  median {fmt(s['median'], 3)}  max {fmt(s['max'], 3)}")
    print(f"clients dropped {summary['dropped_total']}, back {summary['back_total']}; over all kills "
          f"p50 {fmt(summary['all_backs_p50_s'], 3)} s, p95 {fmt(summary['all_backs_p95_s'], 3)} s, "
          f"max {fmt(summary['all_backs_max_s'], 3)} s; drops not caused by the kill {summary['stray_drops']}; "
          f"REGISTER failures while failing over {summary['register_failures_during_failover']}")
    print(f"driver CPU {summary['driver_cpu_s']} s over {summary['driver_wall_s']} s")
    print(f"MESSAGE answers {summary['message_status']}, unanswered {summary['unanswered_messages']}, "
          f"delivered to partners {summary['messages_received']}; of the non-2xx ones, delivered anyway "
          f"(at once or later, by the end of the run): {summary['refused_yet_delivered']}")
    by = {}
    for r in st.refusals:
        key = (r["status"], r["warning"], r["kill"], r["killed_fe"] == r["keeper"],
               r["killed_fe"] == r["partner_on_at_send"] or not r["partner_registered_at_send"])
        by.setdefault(key, []).append(r["since_kill_s"])
    for (code, warn, k, keeper_killed, partner_killed), ts in sorted(by.items(), key=lambda x: (x[0][2] or 0)):
        print(f"  {len(ts)} x {code} ({warn}) after kill {k}, {min(ts):.2f}-{max(ts):.2f} s after it; "
              f"pair kept by the killed front end: {keeper_killed}; partner on it (or failing over) when sent: {partner_killed}")
    slow = [(k["kill"], k["back_over_1s"], k["connect_over_0.9s"], k["connect_max_s"], k["register_max_s"],
             k["attempts_max"], k["listen_overflows"], k["listen_drops"]) for k in kills]
    print("per kill: (kill, clients back after > 1 s, connects > 0.9 s, slowest connect s, slowest REGISTER s, "
          "most attempts, ListenOverflows, ListenDrops):")
    for x in slow:
        print("  ", x[0], x[1], x[2], fmt(x[3], 3), fmt(x[4], 3), x[5], x[6], x[7])
    c = dict(cdr)
    detail = c.pop("lost_detail")
    print("CDR:", json.dumps(c))
    for d in detail:
        print("  short:", json.dumps(d))
    print(f"(details in {a.out})")


def stats_of(xs):
    v = [x for x in xs if x is not None]
    return {"min": min(v) if v else None, "median": statistics.median(v) if v else None,
            "max": max(v) if v else None, "missing": len(xs) - len(v)}


if __name__ == "__main__":
    main()
