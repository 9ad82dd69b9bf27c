#!/usr/bin/env bash
# Signed Lync-dialect IM throughput (MS-SIPAE), beside the standard-SIP MESSAGE figures of
# Switchboard and Kamailio measured in the same run.
#
# The Lync side: crates/switchboard/examples/lync_load.rs signs in PAIRS pairs of users over
# TCP with NTLM, opens a session-mode IM dialog per pair, and keeps WINDOW signed in-dialog
# MESSAGEs outstanding per pair for DUR seconds (each costs the server a signature check,
# the IM service's accounting and two signatures). It is tried at several loads (LOADS:
# "pairs:window ...") and the best rate is reported with the server's CPU.
# Kamailio cannot sign in a Lync client at all, so the same-run reference is the
# standard-SIP MESSAGE test of bench/run.sh over TCP (SIPp, Digest, relayed), for both
# servers; SKIP_RUN=1 leaves it out.
#
#   bench/lync.sh                     # ~6 minutes
#   LOADS="20:4" DUR=10 SKIP_RUN=1 bench/lync.sh
#
# Everything listens on 127.0.0.1; the server started here is stopped by pid.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=${WORK:-/tmp/sb-bench-lync}
DUR=${DUR:-10}
LOADS=${LOADS:-"10:2 20:4 40:8"}
PORT=${PORT:-5094}
DOMAIN=bench.local
log() { echo "[$(date +%T)] $*" >&2; }

log "building switchboard and the load generator (release)"
(cd "$ROOT" && cargo build --release -q -p switchboard && cargo build --release -q -p switchboard --example lync_load) || exit 1
BIN=$ROOT/target/release/switchboard
LOAD=$ROOT/target/release/examples/lync_load

rm -rf "$WORK"; mkdir -p "$WORK"
max_pairs=0
for l in $LOADS; do p=${l%%:*}; ((p > max_pairs)) && max_pairs=$p; done
{ for i in $(seq 0 $((max_pairs - 1))); do
    echo "lu${i}a@$DOMAIN,pw-lu${i}a"; echo "lu${i}b@$DOMAIN,pw-lu${i}b"
  done; } > "$WORK/users.csv"
"$BIN" --data-dir "$WORK/data" user import "$WORK/users.csv" >/dev/null || exit 1
# A load generator, not people: one host, and each user far above a person's request
# rate. The guard still accounts every request; only its limits are lifted.
printf '[limits]\nsource_requests_per_sec = 0\nmax_connections_per_source = 0\nuser_requests_per_sec = 0\n' > "$WORK/sb.toml"

results=()
for l in $LOADS; do
  pairs=${l%%:*}; window=${l##*:}
  "$BIN" --data-dir "$WORK/data" --log-level warn serve --config "$WORK/sb.toml" --sip-udp off \
    --sip-tcp 127.0.0.1:$PORT --sip-tls off --http off >"$WORK/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  line=$("$LOAD" 127.0.0.1:$PORT "$DOMAIN" "$pairs" "$window" "$DUR" "$pid" 2>"$WORK/load.err" | tail -1)
  kill "$pid"; wait "$pid" 2>/dev/null
  log "pairs=$pairs window=$window: $line"
  grep -q 'pair failed' "$WORK/load.err" && log "failures: $(sort "$WORK/load.err" | uniq -c | head -3)"
  results+=("$pairs $window $line")
done

echo
echo "| signed Lync session MESSAGE (TCP) | pairs × window | messages/s | server CPU | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|"
for r in "${results[@]}"; do
  set -- $r
  rate=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<<"$*")
  cpu=$(sed -n 's/.*server_cpu_pct=\([0-9]*\).*/\1/p' <<<"$*")
  p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$*")
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$*")
  echo "| Switchboard | $1 × $2 | $rate | ${cpu} % | $p50 | $p99 |"
done

if [ "${SKIP_RUN:-0}" != 1 ]; then
  echo
  log "same-run reference: standard-SIP MESSAGE over TCP, Kamailio and Switchboard (bench/run.sh)"
  TESTS=message TRANSPORTS=tcp MEM_SUBS=0 START_message=${START_message:-4000} MAX_TRIALS=${MAX_TRIALS:-5} \
    "$HERE/run.sh"
fi
