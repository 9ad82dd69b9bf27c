#!/usr/bin/env bash
# What the server spends per call at a fixed load, for comparing two builds where a rate
# search on a shared two-core machine is too noisy to show a change of a few per cent.
#
#   bench/callgrind.sh                         # MESSAGE over UDP, 1,000 calls, target/release
#   TEST=register TRANSPORT=tcp bench/callgrind.sh
#   BIN=/other/tree/target/release/switchboard bench/callgrind.sh   # another build, same load
#   TOOL=cpu N=60000 RATE=4000 bench/callgrind.sh   # CPU time (user + system) and context
#                                                   # switches per call, natively
#
# TOOL=callgrind (the default) counts instructions: repeatable whatever else the machine does,
# but blind to the kernel (system calls, wake-ups). TOOL=cpu runs the server natively and
# reads its CPU time and context switches from /proc: it sees the kernel, with some noise.
#
# The server runs under valgrind; SIPp registers the recipients (MESSAGE), seeds the
# presentities (SUBSCRIBE), sends WARM calls, then the counters are zeroed, N calls are
# sent at RATE calls/s, and the counters dumped. It prints instructions per call (Ir/call)
# and the functions with the most inclusive instructions, from callgrind_annotate.
# Knobs: TEST (message|register|subscribe|publish), TRANSPORT (udp|tcp), N (1000),
# WARM (200), RATE (100), BIN, WORK (/tmp/sb-callgrind), TOP (25), TOOL (callgrind|cpu),
# LEGACY (1: an empty config file, for builds older than the [limits] section),
# DATABASE (a postgres:// URL: the server on that database instead of SQLite; its own
# CPU is not counted).
# Everything listens on 127.0.0.1; the server is stopped by pid.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SCN=$ROOT/tests/sipp
TEST=${TEST:-message}
TRANSPORT=${TRANSPORT:-udp}
N=${N:-1000}
WARM=${WARM:-200}
RATE=${RATE:-100}
TOP=${TOP:-25}
BIN=${BIN:-$ROOT/target/release/switchboard}
WORK=${WORK:-/tmp/sb-callgrind}
DOMAIN=bench.local
log() { echo "[$(date +%T)] $*" >&2; }
TOOL=${TOOL:-callgrind}
LEGACY=${LEGACY:-0}
tools="sipp"; [ "$TOOL" = callgrind ] && tools="valgrind callgrind_control callgrind_annotate sipp"
for c in $tools; do
  command -v $c >/dev/null || { log "needs $c (apt: valgrind, sip-tester)"; exit 1; }
done
[ -x "$BIN" ] || { log "no binary at $BIN (cargo build --release -p switchboard)"; exit 1; }
free_port() { python3 -c 'import socket
for _ in range(200):
    t=socket.socket(); t.bind(("127.0.0.1",0)); p=t.getsockname()[1]; t.close()
    try:
        u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(("127.0.0.1",p)); u.close(); print(p); break
    except OSError: pass'; }

rm -rf "$WORK"; mkdir -p "$WORK"
u() { printf 'b%04d' "$1"; }
{ for i in $(seq 0 199); do echo "$(u $i)@$DOMAIN,pw"; done; } > "$WORK/users.csv"
{ echo SEQUENTIAL; for i in $(seq 0 99); do echo "$(u $i);pw"; done; } > "$WORK/reg.csv"
{ echo SEQUENTIAL; for i in $(seq 100 199); do echo "$(u $i);pw"; done; } > "$WORK/rcpt.csv"
{ echo SEQUENTIAL; for i in $(seq 0 99); do echo "$(u $i);pw;$(u $((100 + (i * 7) % 100)))"; done; } > "$WORK/msg.csv"
: > "$WORK/sb.toml"
[ "$LEGACY" = 1 ] || printf '[presence]\nnotify_interval_ms = 0\n[limits]\nsource_requests_per_sec = 0\nmax_connections_per_source = 0\n' > "$WORK/sb.toml"
db=(); [ -n "${DATABASE:-}" ] && db=(--database "$DATABASE")
"$BIN" --data-dir "$WORK/data" "${db[@]}" user import "$WORK/users.csv" >/dev/null || exit 1

PORT=$(free_port); UAS=$(free_port); C1=$(free_port); C2=$(free_port)
t=$([ "$TRANSPORT" = udp ] && echo u1 || echo t1)
run=(); [ "$TOOL" = callgrind ] && run=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p")
"${run[@]}" "$BIN" --data-dir "$WORK/data" "${db[@]}" --log-level warn serve --config "$WORK/sb.toml" \
  --sip-udp 127.0.0.1:$PORT --sip-tcp 127.0.0.1:$PORT --sip-tls off --http off >"$WORK/server.log" 2>&1 &
SERVER=$!
cleanup() {
  [ -n "${UASPID:-}" ] && kill "$UASPID" 2>/dev/null
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
}
trap cleanup EXIT
for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { log "server did not start (see $WORK/server.log)"; exit 1; }

sipp_calls() {  # name calls rate scenario inf [args]
  local name=$1 calls=$2 rate=$3 scen=$4 inf=$5; shift 5
  timeout 600 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$scen" -inf "$inf" -key domain $DOMAIN -key expires 3600 \
    -p "$C1" -t $t -m "$calls" -r "$rate" -timeout 500s -timeout_error -max_recv_loops 100000 "$@" \
    >"$WORK/$name.out" 2>&1 || { log "$name: SIPp failed (see $WORK/$name.out)"; exit 1; }
}
scen=$SCN/register.xml inf=$WORK/reg.csv
case $TEST in
  message)
    sipp_calls recipients 100 200 "$SCN/register.xml" "$WORK/rcpt.csv" -key cport "$UAS"
    timeout 900 sipp -nostdin -i 127.0.0.1 -sf "$SCN/message_uas.xml" -p "$UAS" -t $t -timeout 800s -max_recv_loops 100000 \
      >"$WORK/uas.out" 2>&1 &
    UASPID=$!
    sleep 0.5
    scen=$SCN/message_uac.xml inf=$WORK/msg.csv ;;
  subscribe)
    sipp_calls seed 100 200 "$SCN/publish_once.xml" "$WORK/rcpt.csv"
    scen=$SCN/subscribe.xml inf=$WORK/msg.csv ;;
  publish)
    scen=$SCN/publish.xml inf=$WORK/rcpt.csv ;;
  register) ;;
  *) log "TEST is message, register, subscribe or publish"; exit 1 ;;
esac
sipp_calls warm "$WARM" "$RATE" "$scen" "$inf" -key cport "$C1"
if [ "$TOOL" = cpu ]; then
  usage() {  # the server's CPU ticks (user + system, all threads) and its live threads' context switches
    local switches=0 t s
    s=$(cat /proc/$SERVER/stat); s=${s##*) }; set -- $s
    local ticks=$((${12} + ${13}))
    for t in /proc/$SERVER/task/*; do
      switches=$((switches + $(awk '/ctxt_switches/ {n += $2} END {print n + 0}' "$t/status" 2>/dev/null || echo 0)))
    done
    echo "$ticks $switches"
  }
  by_thread() {  # per thread name: threads, context switches, CPU ticks
    for t in /proc/$SERVER/task/*; do
      local s c; s=$(cat "$t/stat" 2>/dev/null) || continue; s=${s##*) }; set -- $s
      c=$(awk '/ctxt_switches/ {n += $2} END {print n + 0}' "$t/status" 2>/dev/null)
      echo "$(cat "$t/comm" 2>/dev/null | tr ' ' _) ${c:-0} $((${12} + ${13}))"
    done | awk '{c[$1] += $2; t[$1] += $3; k[$1]++} END {for (n in c) print n, k[n], c[n], t[n]}' | sort
  }
  by_thread > "$WORK/threads.before"
  read -r t0 x0 < <(usage)
  sipp_calls measured "$N" "$RATE" "$scen" "$inf" -key cport "$C1"
  read -r t1 x1 < <(usage)
  by_thread > "$WORK/threads.after"
  join -a 2 "$WORK/threads.before" "$WORK/threads.after" | awk -v n="$N" \
    'NF == 7 { printf "  %-24s %3d threads  %6.2f switches/call  %6.0f ticks\n", $1, $5, ($6 - $3) / n, $7 - $4 }
     NF == 4 { printf "  %-24s %3d threads  %6.2f switches/call  %6.0f ticks (new)\n", $1, $2, $3 / n, $4 }' >&2
  hz=$(getconf CLK_TCK)
  awk -v t=$((t1 - t0)) -v x=$((x1 - x0)) -v n="$N" -v hz="$hz" -v what="$TEST over $TRANSPORT" -v bin="$BIN" \
    'BEGIN { printf "%s: %d calls, %.2f s CPU, %.1f us CPU/call, %.2f context switches/call (%s)\n", what, n, t / hz, t / hz / n * 1e6, x / n, bin }'
  exit 0
fi
callgrind_control -z "$SERVER" >/dev/null
sipp_calls measured "$N" "$RATE" "$scen" "$inf" -key cport "$C1"
callgrind_control -d measured "$SERVER" >/dev/null
sleep 1
dump=$(ls -t "$WORK"/callgrind.out.* | head -1)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
echo "$TEST over $TRANSPORT: $N calls, $ir instructions, $((ir / N)) Ir/call ($BIN)"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -n $((TOP + 2))
