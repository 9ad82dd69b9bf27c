#!/usr/bin/env bash
# SIPp against Switchboard: Digest registration, a refused wrong password, pager-mode
# MESSAGE relayed to a registered SIPp recipient, session-mode IM (INVITE m=message,
# MESSAGE in the dialog, BYE) with its CDR, and presence (PUBLISH, SUBSCRIBE/NOTIFY,
# watchers notified), over UDP and over TCP.
# Usage: tests/sipp/run.sh        (SWITCHBOARD_BIN overrides the binary; needs sipp)
set -uo pipefail   # no -e: every check runs and is reported
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${SWITCHBOARD_BIN:-$ROOT/target/debug/switchboard}
WORK=$(mktemp -d /tmp/sb-sipp.XXXXXX)
DOMAIN=sipp.test
N=20      # pager-mode calls per transport
NS=10     # session-mode calls per transport
failed=0; passed=0
free_port() { python3 -c 'import socket
for _ in range(200):
    t=socket.socket(); t.bind(("127.0.0.1",0)); p=t.getsockname()[1]; t.close()
    try:
        u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(("127.0.0.1",p)); u.close(); print(p); break
    except OSError: pass'; }
last=  # the latest sipp_run, whose output a failure shows
result() {
  if [ "$1" = 0 ]; then echo "PASS sipp: $2"; passed=$((passed+1)); return; fi
  echo "FAIL sipp: $2 (exit $1, see $WORK)"; failed=$((failed+1))
  # What SIPp said, so a failure in CI (where $WORK is gone) can be diagnosed from the log.
  [ -n "$last" ] && tail -n 12 "$WORK/$last.out" "$WORK/$last.err" 2>/dev/null | sed 's/^/  | /'
  tail -n 5 "$WORK/server.log" | sed 's/^/  server| /'
}

for i in $(seq 0 9); do echo "u$i@$DOMAIN,pw-u$i"; done > "$WORK/users.csv"
"$BIN" --data-dir "$WORK/data" user import "$WORK/users.csv" >/dev/null || { echo "FAIL sipp: user import"; exit 1; }
{ echo SEQUENTIAL; for i in 0 1 2 3 4; do echo "u$i;pw-u$i"; done; } > "$WORK/reg.csv"
{ echo SEQUENTIAL; for i in 5 6 7 8 9; do echo "u$i;pw-u$i"; done; } > "$WORK/rcpt.csv"
{ echo SEQUENTIAL; for i in 0 1 2 3 4; do echo "u$i;pw-u$i;u$((i+5))"; done; } > "$WORK/msg.csv"

PORT=$(free_port)
"$BIN" --data-dir "$WORK/data" serve --sip-udp 127.0.0.1:$PORT --sip-tcp 127.0.0.1:$PORT --sip-tls off --http off \
  > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

sipp_run() {  # name, then sipp arguments; bounded by timeout
  local name=$1; shift
  last=$name
  timeout 60 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -timeout 30s -timeout_error -max_recv_loops 10000 \
    -trace_err -error_file "$WORK/$name.err" "$@" >"$WORK/$name.out" 2>&1
}

for tr in u1 t1; do
  t=$([ $tr = u1 ] && echo UDP || echo TCP)
  P1=$(free_port); P2=$(free_port); UAS=$(free_port)
  sipp_run "register-$tr" -sf "$HERE/register.xml" -inf "$WORK/reg.csv" -key domain $DOMAIN -key expires 300 \
    -key cport $P1 -p $P1 -t $tr -m $N -r 50
  result $? "$N REGISTER with Digest over $t"
  sipp_run "wrongpw-$tr" -sf "$HERE/register_wrong_password.xml" -inf "$WORK/reg.csv" -key domain $DOMAIN \
    -p $P2 -t $tr -m 3
  result $? "wrong password gets 403 over $t"
  sipp_run "rcpt-$tr" -sf "$HERE/register.xml" -inf "$WORK/rcpt.csv" -key domain $DOMAIN -key expires 300 \
    -key cport $UAS -p $P2 -t $tr -m 5
  result $? "recipients registered over $t"
  timeout 60 sipp -nostdin -i 127.0.0.1 -sf "$HERE/message_uas.xml" -p $UAS -t $tr -m $N -timeout 30s -timeout_error \
    > "$WORK/uas-$tr.out" 2>&1 &
  UASPID=$!
  sleep 0.3
  P3=$(free_port)
  sipp_run "message-$tr" -sf "$HERE/message_uac.xml" -inf "$WORK/msg.csv" -key domain $DOMAIN -p $P3 -t $tr -m $N -r 50
  result $? "$N MESSAGEs relayed and answered over $t"
  wait $UASPID; rc=$?; last=uas-$tr; result $rc "the recipient got all $N MESSAGEs over $t"

  # Session-mode IM: INVITE m=message, MESSAGE in the dialog, BYE, all through the server.
  timeout 60 sipp -nostdin -i 127.0.0.1 -sf "$HERE/session_uas.xml" -p $UAS -t $tr -m $NS -timeout 30s -timeout_error \
    > "$WORK/suas-$tr.out" 2>&1 &
  SUASPID=$!
  sleep 0.3
  P4=$(free_port)
  sipp_run "session-$tr" -sf "$HERE/session_uac.xml" -inf "$WORK/msg.csv" -key domain $DOMAIN -p $P4 -t $tr -m $NS -r 20
  result $? "$NS session-mode IM sessions (INVITE, MESSAGE, BYE) over $t"
  wait $SUASPID; rc=$?; last=suas-$tr; result $rc "the callee side completed $NS sessions over $t"

  # Presence (RFC 3903, RFC 6665): publications, subscriptions answered with a NOTIFY,
  # and watchers notified when a publication comes and goes.
  P5=$(free_port); PW=$(free_port)
  sipp_run "seed-$tr" -sf "$HERE/publish_once.xml" -inf "$WORK/rcpt.csv" -key domain $DOMAIN -key expires 300 \
    -p $P5 -t $tr -m 5
  result $? "5 presence publications (PUBLISH, SIP-ETag) over $t"
  sipp_run "subscribe-$tr" -sf "$HERE/subscribe.xml" -inf "$WORK/msg.csv" -key domain $DOMAIN -key expires 120 \
    -p $P5 -t $tr -m $N -r 50
  result $? "$N SUBSCRIBEs, each followed by its NOTIFY, over $t"
  mkdir -p "$WORK/watch-$tr"
  (cd "$WORK/watch-$tr" && exec timeout 30 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$HERE/watcher.xml" -inf "$WORK/msg.csv" \
    -key domain $DOMAIN -key expires 120 -p $PW -t $tr -m 5 -trace_counts -fd 1 -timeout 8s >out 2>&1) &
  WPID=$!
  sleep 1
  sipp_run "publish-$tr" -sf "$HERE/publish.xml" -inf "$WORK/rcpt.csv" -key domain $DOMAIN -key expires 300 \
    -p $P5 -t $tr -m 10 -r 20
  result $? "10 PUBLISH-and-remove pairs over $t"
  wait $WPID
  python3 - "$WORK/watch-$tr" <<'PY'
import csv, glob, sys
files = glob.glob(sys.argv[1] + '/*_counts.csv')
rows = list(csv.reader(open(files[0]), delimiter=';')) if files else []
head, last = (rows[0], rows[-1]) if len(rows) > 1 else ([], [])
got = sum(int(last[i] or 0) for i, h in enumerate(head) if h.endswith('_NOTIFY_Recv'))
print('watchers received %d NOTIFYs' % got)
# Each of the 5 watchers: its first NOTIFY, then at least one per publication change.
sys.exit(0 if got >= 10 else 1)
PY
  result $? "5 watchers notified of the publications over $t"
done

# Every session is in the CDR, ended by BYE, with the caller's message counted.
"$BIN" --data-dir "$WORK/data" cdr list --json > "$WORK/cdr.json" 2>"$WORK/cdr.err"
python3 - "$WORK/cdr.json" "$NS" <<'PY'
import json, sys
sessions = json.load(open(sys.argv[1])); n = int(sys.argv[2])
bye = [s for s in sessions if s['end_reason'] == 'bye']
ok = len(bye) == 2 * n and all(sum(p['messages'] for p in s['participants']) == 1 for s in bye)
sys.exit(0 if ok else 1)
PY
result $? "CDR: $((2 * NS)) session-mode sessions ended by BYE, one message each"
echo "sipp: $passed passed, $failed failed"
[ $failed = 0 ] && [ $passed -gt 0 ]
