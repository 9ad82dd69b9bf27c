#!/usr/bin/env bash
# Failover of an Enterprise pool, measured over repeated kills: three front ends (ids 1-3 on
# 127.0.0.2, .3 and .4, TCP port PORT) over one throwaway PostgreSQL cluster, N SIP clients
# (bench/failover_clients.py, Python asyncio, standard library only) signed in across them,
# half of them writing to a fixed partner every TALK_INTERVAL s. Then KILLS times: one front
# end (round-robin 1, 2, 3, 1, ...) is killed with SIGKILL and, per kill, it measures
#   - detection: from the kill until `pool status --json` no longer lists it (polled every
#     100 ms), and from its last heartbeat (its heartbeat_age_ms just before the kill added);
#   - clients back: for every client whose connection dropped, the time from the kill until
#     its REGISTER on the next front end of its list got 200 (p50, 95 %, 100 %);
#   - rejoin: the killed front end is restarted (same id and address) once it is reaped, and
#     the time until pool status lists all three again;
# and at the end the CDR against the 2xx the talkers counted: messages acknowledged but not
# counted in any session of their pair (lost), counted more than acknowledged (duplicates;
# certain only above acknowledged + unanswered), sessions of a pair open at once, sessions
# of a killed run left open.
#
#   bench/failover.sh                        # N=1000 KILLS=10 (~6 min after the build)
#   N=200 KILLS=3 DUR=15 bench/failover.sh   # a quick one
#
# Knobs: N (1000 clients, u0000@bench.local ... with password pw), KILLS (10), DUR (25 s from
# one kill to the next), TALK_INTERVAL (3 s between a talker's messages), WARMUP (10 s of
# talk before the first kill), SETTLE (5 s after the talkers stop, before the CDR is read),
# PORT (5070), WORK (/tmp/sb-failover), SEED (1: the clients' address orders), RESTART_AT
# (reaped: a killed front end is restarted once pool status no longer lists it; back: as soon
# as its clients are all back, before it is reaped, so the new run finds its old row alive).
# Loopback only; everything started here is stopped by pid (trap). The results go to
# WORK/results/<stamp>/ (results.json, summary.txt, the front ends' logs).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-1000}
KILLS=${KILLS:-10}
DUR=${DUR:-25}
TALK_INTERVAL=${TALK_INTERVAL:-3}
WARMUP=${WARMUP:-10}
SETTLE=${SETTLE:-5}
PORT=${PORT:-5070}
WORK=${WORK:-/tmp/sb-failover}
SEED=${SEED:-1}
RESTART_AT=${RESTART_AT:-reaped}
DOMAIN=bench.local
BIN=$ROOT/target/release/switchboard
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$WORK/results/$STAMP
RUN=$WORK/run
log() { echo "[$(date +%T)] $*" >&2; }

for c in python3 psql; do command -v $c >/dev/null || { log "needs $c"; exit 1; }; done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null \
  || { log "needs the postgresql package"; exit 1; }
if [ ! -x "$BIN" ] || [ -n "${BUILD:-}" ]; then
  log "building switchboard (release)"
  (cd "$ROOT" && cargo build --release -q -p switchboard) || exit 1
fi
# 1,000 client sockets in one process, as many on the front ends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rm -rf "$RUN" "$WORK/pg" "$WORK/fe"; mkdir -p "$OUT" "$RUN" "$WORK/pg" "$WORK/fe"
cleanup() {
  for f in "$RUN"/fe-*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f"); kill -KILL "$pid" 2>/dev/null
  done
  for f in "$WORK"/fe/*/log; do
    [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").log"
  done
  "$ROOT/scripts/pg-cluster.sh" stop "$WORK/pg"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGURL=$("$ROOT/scripts/pg-cluster.sh" start "$WORK/pg") || { log "cannot start PostgreSQL"; exit 1; }
log "PostgreSQL at $PGURL"
for i in $(seq 0 $((N - 1))); do printf 'u%04d@%s,pw\n' "$i" "$DOMAIN"; done > "$RUN/users.csv"
"$BIN" --database "$PGURL" user import "$RUN/users.csv" >/dev/null || { log "user import failed"; exit 1; }
# One client host plays every user: the per-source limits are lifted.
printf '[limits]\nsource_requests_per_sec = 0\nmax_connections_per_source = 0\n' > "$RUN/sb.toml"

# Starts front end $1 on 127.0.0.($1+1):PORT in the background; its pid in RUN/fe-$1.pid.
# The driver calls it again to restart a killed front end (its log is appended to).
cat > "$RUN/start-fe.sh" <<EOF
#!/usr/bin/env bash
n=\$1
mkdir -p "$WORK/fe/fe\$n"
echo "=== start \$(date +%T.%N)" >> "$WORK/fe/fe\$n/log"
setsid "$BIN" --data-dir "$WORK/fe/fe\$n/data" --database "$PGURL" --log-level info serve \\
  --config "$RUN/sb.toml" --front-end "\$n" --sip-udp off --sip-tls off --http off \\
  --sip-tcp "127.0.0.\$((n + 1)):$PORT" </dev/null >/dev/null 2>>"$WORK/fe/fe\$n/log" &
echo \$! > "$RUN/fe-\$n.pid"
EOF
chmod +x "$RUN/start-fe.sh"
for n in 1 2 3; do "$RUN/start-fe.sh" $n; done
members() { "$BIN" --database "$PGURL" pool status --json 2>/dev/null \
  | python3 -c 'import json,sys; print(" ".join(str(m["fe"]) for m in json.load(sys.stdin)["members"]))' 2>/dev/null; }
for _ in $(seq 1 300); do
  [ "$(members)" = "1 2 3" ] && break
  sleep 0.1
done
[ "$(members)" = "1 2 3" ] || { log "the pool did not form: members '$(members)'"; tail -n 20 "$WORK"/fe/*/log >&2; exit 1; }
log "pool of three formed; $N clients"

{
  echo "bench/failover.sh: N=$N KILLS=$KILLS RESTART_AT=$RESTART_AT DUR=$DUR TALK_INTERVAL=$TALK_INTERVAL WARMUP=$WARMUP SETTLE=$SETTLE"
  echo "commit $(cd "$ROOT" && git rev-parse --short HEAD), $(nproc) cores, $(date -u '+%F %T UTC')"
} > "$OUT/summary.txt"
python3 "$HERE/failover_clients.py" --bin "$BIN" --db "$PGURL" --run-dir "$RUN" --out "$OUT/results.json" \
  --fe 1=127.0.0.2:$PORT --fe 2=127.0.0.3:$PORT --fe 3=127.0.0.4:$PORT \
  --n "$N" --kills "$KILLS" --dur "$DUR" --talk-interval "$TALK_INTERVAL" --warmup "$WARMUP" \
  --settle "$SETTLE" --seed "$SEED" --restart-at "$RESTART_AT" | tee -a "$OUT/summary.txt"
rc=${PIPESTATUS[0]}
# What the database says, kept with the results.
psql "$PGURL" -c "SELECT owner, epoch, COALESCE(end_reason, '(open)') AS end_reason, count(*) FROM cdr_sessions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3" \
  > "$OUT/cdr_sessions.txt" 2>&1
log "results in $OUT"
exit "$rc"
