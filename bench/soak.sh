#!/usr/bin/env bash
# Soak: Switchboard (release) under steady MESSAGE load with presence traffic beside it, for
# a long time, sampling its memory. The question it answers: does anything grow without
# bound? It reports failed transactions (goal: 0) and RSS over time (goal: flat once the
# time-bounded state is full — nonce-count memory, lingering transactions, idle
# conversations all have fixed lifetimes, the longest about ten minutes).
#
#   bench/soak.sh                          # an hour at 5,600 MESSAGE calls/s (80 % of the
#                                          # UDP maximum in bench/RESULTS.md) + presence
#   DUR=600 RATE=3500 bench/soak.sh        # the ten-minute run of the issue
#
# Knobs: DUR (3600 s), RATE (MESSAGE calls/s, 5600), PUB_RATE (PUBLISH-and-remove calls/s, 200),
# WATCHERS (1000 long-lived subscriptions), SAMPLE (10 s between samples), TRANSPORT (udp|tcp),
# WORK (/tmp/sb-soak). A MESSAGE call is MESSAGE → 407 → MESSAGE with credentials → relayed to
# a registered SIPp that answers 200 → 200, as in bench/run.sh. Everything listens on
# 127.0.0.1; the processes started here are stopped by pid. Output: $WORK/<stamp>/samples.csv
# (time, RSS, descriptors, the server's /status counts) and a summary on stdout.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SCN=$ROOT/tests/sipp
WORK=${WORK:-/tmp/sb-soak}
DUR=${DUR:-3600}
RATE=${RATE:-5600}
PUB_RATE=${PUB_RATE:-200}
WATCHERS=${WATCHERS:-1000}
SAMPLE=${SAMPLE:-10}
TRANSPORT=${TRANSPORT:-udp}
DOMAIN=soak.local
PORT=5190 UAS_PORT=5191 WATCH_PORT=5193 HTTP_PORT=5194
BIN=$ROOT/target/release/switchboard
OUT=$WORK/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" >&2; }
t=$([ "$TRANSPORT" = udp ] && echo u1 || echo t1)

command -v sipp >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
  apt-get install -y -q --no-install-recommends sip-tester >/dev/null; } || { log "cannot install SIPp"; exit 1; }
log "building switchboard (release)"
(cd "$ROOT" && cargo build --release -q -p switchboard) || exit 1

u() { printf 's%04d' "$1"; }
DATA=$OUT/data
mkdir -p "$DATA"
{ for i in $(seq 0 2999); do echo "$(u $i)@$DOMAIN,pw"; done; } > "$OUT/users.csv"
{ echo SEQUENTIAL; for i in $(seq 1000 1999); do echo "$(u $i);pw"; done; } > "$OUT/rcpt.csv"
{ echo RANDOM; for i in $(seq 0 999); do echo "$(u $i);pw;$(u $((1000 + (i * 7) % 1000)))"; done; } > "$OUT/msg.csv"
{ echo SEQUENTIAL; for i in $(seq 2000 2999); do echo "$(u $i);pw"; done; } > "$OUT/pub.csv"
{ echo SEQUENTIAL; for i in $(seq 0 $((WATCHERS - 1))); do echo "$(u $((i % 1000)));pw;$(u $((2000 + i % 1000)))"; done; } > "$OUT/watch.csv"
"$BIN" --data-dir "$DATA" user import "$OUT/users.csv" >/dev/null || exit 1
# One SIPp host plays thousands of users: the per-source limits are lifted (still accounted).
printf '[limits]\nsource_requests_per_sec = 0\nmax_connections_per_source = 0\n' > "$OUT/sb.toml"

"$BIN" --data-dir "$DATA" --log-level warn serve --config "$OUT/sb.toml" --sip-udp 127.0.0.1:$PORT \
  --sip-tcp 127.0.0.1:$PORT --sip-tls off --http 127.0.0.1:$HTTP_PORT >"$OUT/server.log" 2>&1 &
SERVER=$!
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

sipp_bg() {  # name, seconds, sipp arguments...
  local name=$1 secs=$2; shift 2
  (cd "$OUT" && exec timeout "$secs" sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -t $t -key domain $DOMAIN -max_recv_loops 100000 \
    -trace_stat -stf "$OUT/$name.csv" -fd 10 "$@" >"$OUT/$name.out" 2>&1) &
  pids+=($!)
}
# Recipients (registered, answering 200 to every MESSAGE for the whole run).
timeout 60 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/register.xml" -inf "$OUT/rcpt.csv" -key domain $DOMAIN \
  -key expires 7200 -key cport $UAS_PORT -p 5192 -t $t -m 1000 -r 2000 -timeout 30s >"$OUT/rcpt.out" 2>&1
sipp_bg uas $((DUR + 60)) -sf "$SCN/message_uas.xml" -p $UAS_PORT -timeout $((DUR + 50))s
# Long-lived watchers (they answer every NOTIFY), then publishers changing presence.
sipp_bg watch $((DUR + 60)) -sf "$SCN/watcher.xml" -inf "$OUT/watch.csv" -key expires 3600 -p $WATCH_PORT \
  -m "$WATCHERS" -r 500 -l "$WATCHERS" -timeout $((DUR + 50))s -trace_counts
sleep 3
sipp_bg publish $((DUR + 40)) -sf "$SCN/publish.xml" -inf "$OUT/pub.csv" -key expires 600 -p 5195 \
  -r "$PUB_RATE" -m $((PUB_RATE * DUR)) -l $((PUB_RATE * 2)) -timeout $((DUR + 30))s -recv_timeout 5000
sipp_bg message $((DUR + 40)) -sf "$SCN/message_uac.xml" -inf "$OUT/msg.csv" -key expires 3600 -key cport 5196 \
  -p 5196 -r "$RATE" -m $((RATE * DUR)) -l $((RATE * 2)) -timeout $((DUR + 30))s -recv_timeout 5000

log "soaking for $DUR s: $RATE MESSAGE calls/s, $PUB_RATE PUBLISH calls/s, $WATCHERS watchers ($TRANSPORT)"
echo "secs,rss_kib,fds,server_tx,client_tx,presentities,subscriptions,registered_devices,nonce_counts" > "$OUT/samples.csv"
start=$(date +%s)
while :; do
  now=$(( $(date +%s) - start ))
  [ "$now" -gt $((DUR + 5)) ] && break
  kill -0 "$SERVER" 2>/dev/null || { log "the server died"; break; }
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$SERVER/status)
  fds=$(ls /proc/$SERVER/fd | wc -l)
  st=$(curl -s --max-time 2 http://127.0.0.1:$HTTP_PORT/status 2>/dev/null || python3 -c "
import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/status',timeout=2).read().decode())" 2>/dev/null)
  python3 - "$now" "$rss" "$fds" "$st" >>"$OUT/samples.csv" <<'PY'
import json, sys
secs, rss, fds, st = sys.argv[1:5]
try:
    s = json.loads(st)
except ValueError:
    s = {}
print(','.join(str(x) for x in [secs, rss, fds, s.get('server_transactions', ''), s.get('client_transactions', ''),
                                 s.get('presentities', ''), s.get('subscriptions', ''), s.get('registered_devices', ''),
                                 s.get('nonce_counts_remembered', '')]))
PY
  sleep "$SAMPLE"
done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
alive=$(kill -0 "$SERVER" 2>/dev/null && echo yes || echo no)

python3 - "$OUT" "$alive" "$DUR" "$RATE" <<'PY'
import csv, glob, os, sys
out, alive, dur, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def last(name, col):
    f = os.path.join(out, name + '.csv')
    if not os.path.exists(f):
        return 0
    rows = [l.rstrip('\n').split(';') for l in open(f) if l.strip()]
    return int(rows[-1][rows[0].index(col)] or 0) if len(rows) > 1 and col in rows[0] else 0
samples = list(csv.DictReader(open(os.path.join(out, 'samples.csv'))))
rss = [(int(s['secs']), int(s['rss_kib'])) for s in samples if s['rss_kib']]
print('soak: %d s, %d MESSAGE calls/s, server alive at the end: %s' % (dur, rate, alive))
for name in ('message', 'publish', 'watch'):
    print('  %-8s successful %9d  failed %6d' % (name, last(name, 'SuccessfulCall(C)'), last(name, 'FailedCall(C)')))
if rss:
    half = [r for t, r in rss if t >= rss[-1][0] / 2]
    print('  RSS MiB: first %.0f, at 10 min %.0f, max %.0f, last %.0f; second half min %.0f max %.0f' % (
        rss[0][1] / 1024, next((r for t, r in rss if t >= 600), rss[-1][1]) / 1024, max(r for _, r in rss) / 1024,
        rss[-1][1] / 1024, min(half) / 1024, max(half) / 1024))
    # Growth over the second half, per minute (flat: about zero).
    t0, r0 = next((t, r) for t, r in rss if t >= rss[-1][0] / 2)
    t1, r1 = rss[-1]
    if t1 > t0:
        print('  RSS growth over the second half: %.2f MiB/min' % ((r1 - r0) / 1024 / ((t1 - t0) / 60)))
print('  samples: %s' % os.path.join(out, 'samples.csv'))
PY
