#!/usr/bin/env bash
# Switchboard and Kamailio side by side, in one run, on the same SIPp scenarios
# (tests/sipp/*.xml): Digest REGISTER, pager-mode MESSAGE relay, presence SUBSCRIBE (with
# its NOTIFY) and PUBLISH-and-remove with a watcher per presentity, over UDP and TCP.
#
# For each server, test and transport it searches the highest rate (calls/s) that passes:
# fewer than 1 % of calls failed or slower than LAT_MAX_MS end to end, and at least 95 % of
# the target rate achieved. Each trial starts the server afresh. It reports calls/s, the
# server's CPU (100 % = one core) and the ratios, as a table and as CSV.
#
#   bench/run.sh                                   # everything (~15 min)
#   TESTS=register TRANSPORTS=udp DUR=10 bench/run.sh
#   SERVERS="kamailio switchboard switchboard-pg" bench/run.sh   # and Switchboard on PostgreSQL
#
# `switchboard-pg` is Switchboard with `--database` on a throwaway PostgreSQL cluster
# (scripts/pg-cluster.sh, in WORK, stopped at the end); its CPU column is Switchboard's
# alone (PostgreSQL's own processes are not counted).
#
# `kamailio-pg` is the database-backed registrar anchor: bench/kamailio.cfg with WITH_PGSQL,
# usrloc in db_mode 3 (DB-only) and auth_db on a `kamailio` database of the same throwaway
# cluster (one cluster when both -pg servers run; the `location` table is emptied before
# each trial, as a restarted in-memory registrar is empty). Its CPU column is Kamailio's
# processes alone too; PostgreSQL's CPU in each trial (same time base) is logged and kept in the trial's
# directory (pg_cpu.txt), with the rows left in `location` (location_rows.txt).
#   TESTS="register message" TRANSPORTS=udp SERVERS="kamailio kamailio-pg" bench/run.sh
# A run with kamailio-pg and no Switchboard server builds no Switchboard.
#
# `switchboard-pool` is the Enterprise pool: three front ends (`serve --front-end 1|2|3`) on
# one database of that same cluster, front end 1 on 127.0.0.1:PORT (where SIPp goes by
# default), 2 on 127.0.0.3:PORT, 3 on 127.0.0.4:PORT (the pool link is each one's SIP TCP
# address). Every trial gets a fresh database (a copy of a template holding the imported
# users, dropped after the trial) and starts the three afresh, waiting until `pool status`
# lists all three. REGISTER: SIPp instance i goes to front end i (mod 3). MESSAGE: the
# recipients register on front end 2 and the senders send to front end 1, so every MESSAGE
# crosses front ends. Its CPU column is the three front ends' together; PostgreSQL's CPU is
# kept per trial (pg_cpu.txt), and so are the database's commits and rows written per second
# over the trial (pg_stats.txt; pg_stat_database.xact_commit and pg_stat_user_tables'
# n_tup_ins + n_tup_upd + n_tup_del, read POOL_SETTLE s after the load stops so that every
# backend has flushed its counters; the pool's idle background is measured once and shown
# beside them) and, after a REGISTER trial, the rows of pool_bindings, pool_members and
# pool_presence (pool_rows.txt). All of it is in pool_pg.csv and the summary.
#   SERVERS="kamailio kamailio-pg switchboard switchboard-pool" TESTS="register message" TRANSPORTS=udp bench/run.sh
#
# Knobs: TESTS ("register message subscribe publish"), TRANSPORTS ("udp tcp"),
# SERVERS ("kamailio switchboard"), DUR (10 s per trial), PAR (2 SIPp client instances),
# MAX_TRIALS (7), LAT_MAX_MS (500), START_register (4000), START_message (2000),
# START_subscribe (4000), START_publish (2000), MEM_SUBS (100000: Switchboard's memory per
# subscription at that many subscriptions; 0 skips it), WORK (/tmp/sb-bench), POOL_SETTLE
# (11 s: PostgreSQL backends flush their statistics within 10 s of going idle), WARM (0; 1:
# before a MESSAGE trial is measured, every sender writes once to its recipient at
# WARM_RATE (500) calls/s, so the trial measures conversations under way, as on a server
# that has been up a while, not the start of a thousand new ones in its first second;
# done for every server alike, outside the measured time and counters).
# The PUBLISH test passes only if the watchers got at least 99 % of the NOTIFYs due (two
# per publish-and-remove). Switchboard runs with notify_interval_ms = 0 here (Kamailio does
# not pace NOTIFYs either).
# Everything listens on 127.0.0.1; processes started here are stopped by pid.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SCN=$ROOT/tests/sipp
WORK=${WORK:-/tmp/sb-bench}
TESTS=${TESTS:-"register message subscribe publish"}
TRANSPORTS=${TRANSPORTS:-"udp tcp"}
SERVERS=${SERVERS:-"kamailio switchboard"}
DUR=${DUR:-10}
PAR=${PAR:-2}
MAX_TRIALS=${MAX_TRIALS:-7}
LAT_MAX_MS=${LAT_MAX_MS:-500}
: "${START_register:=4000}" "${START_message:=2000}" "${START_subscribe:=4000}" "${START_publish:=2000}"
MEM_SUBS=${MEM_SUBS:-100000}
DOMAIN=bench.local
PORT=5090            # the server under test
UAS_PORT=5091        # the MESSAGE recipients' SIPp
WATCH_PORT=5093      # the PUBLISH test's watchers' SIPp
CLK_TCK=$(getconf CLK_TCK)
BIN=$ROOT/target/release/switchboard
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$WORK/results/$STAMP
mkdir -p "$OUT" "$WORK/run"
log() { echo "[$(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- setup
need=()
command -v kamailio >/dev/null || need+=(kamailio)
[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_sqlite.so ] || need+=(kamailio-sqlite-modules)
# bench/kamailio.cfg loads presence and presence_xml for the SUBSCRIBE/PUBLISH tests.
[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so ] || need+=(kamailio-presence-modules)
command -v sipp >/dev/null || need+=(sip-tester)
command -v sqlite3 >/dev/null || need+=(sqlite3)
# switchboard-pg, kamailio-pg: scripts/pg-cluster.sh (PostgreSQL, and openssl for its TLS
# certificate).
PG_SERVERS=0
[[ " $SERVERS " == *" switchboard-pg "* || " $SERVERS " == *" kamailio-pg "* ]] && PG_SERVERS=1
POOL=0
[[ " $SERVERS " == *" switchboard-pool "* ]] && POOL=1 PG_SERVERS=1
POOL_IPS=(127.0.0.1 127.0.0.3 127.0.0.4)   # front ends 1, 2, 3
POOL_SETTLE=${POOL_SETTLE:-11}
WARM=${WARM:-0}
SB_LOG=${SB_LOG:-warn}  # the pool's front ends' log level (their logs are kept per trial)
WARM_RATE=${WARM_RATE:-500}
if [ "$PG_SERVERS" = 1 ]; then
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  command -v openssl >/dev/null || need+=(openssl)
fi
# kamailio-pg: db_postgres and the PostgreSQL schema (/usr/share/kamailio/postgres), psql.
if [[ " $SERVERS " == *" kamailio-pg "* ]]; then
  [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_postgres.so ] || need+=(kamailio-postgres-modules)
  command -v psql >/dev/null || need+=(postgresql-client)
fi
# switchboard-pool: psql (its databases and statistics).
[ "$POOL" = 1 ] && ! command -v psql >/dev/null && need+=(postgresql-client)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null || { log "apt-get failed"; exit 1; }
fi
# Switchboard is built (and its users imported below) unless the run is Kamailio only and
# asks for kamailio-pg; without kamailio-pg this is as it always was.
SB_NEEDED=1
[[ " $SERVERS " == *" kamailio-pg "* && " $SERVERS " != *" switchboard"* ]] && SB_NEEDED=0
if [ "$SB_NEEDED" = 1 ]; then
  log "building switchboard (release)"
  (cd "$ROOT" && cargo build --release -q -p switchboard) || exit 1
fi

DATA=$WORK/data
rm -rf "$DATA"; mkdir -p "$DATA"
u() { printf 'b%04d' "$1"; }
{ for i in $(seq 0 1999); do echo "$(u $i)@$DOMAIN,pw"; done; } > "$DATA/users.csv"
{ echo RANDOM; for i in $(seq 0 999); do echo "$(u $i);pw"; done; } > "$DATA/reg.csv"
{ echo SEQUENTIAL; for i in $(seq 1000 1999); do echo "$(u $i);pw"; done; } > "$DATA/rcpt.csv"
{ echo RANDOM; for i in $(seq 0 999); do echo "$(u $i);pw;$(u $((1000 + (i * 7) % 1000)))"; done; } > "$DATA/msg.csv"
sed 1s/RANDOM/SEQUENTIAL/ "$DATA/msg.csv" > "$DATA/warm.csv"
{ echo RANDOM; for i in $(seq 1000 1999); do echo "$(u $i);pw"; done; } > "$DATA/pub.csv"
{ echo SEQUENTIAL; for i in $(seq 0 999); do echo "$(u $i);pw;$(u $((1000 + i)))"; done; } > "$DATA/watch.csv"
# PUBLISH: each SIPp instance cycles through its own presentities in order, so no two
# publish-and-remove pairs for one presentity overlap (overlapping changes may be told in
# one NOTIFY: RFC 6665 lets a notifier send only the newest state).
for i in $(seq 1 "$PAR"); do
  { echo SEQUENTIAL; for j in $(seq $((1000 + (i - 1) * 1000 / PAR)) $((999 + i * 1000 / PAR))); do echo "$(u $j);pw"; done; } > "$DATA/pub$i.csv"
done
# One SIPp host plays thousands of users: the per-source request rate (a flood guard for
# the internet, which Kamailio here runs without too) is lifted; it is still accounted.
printf '[presence]\nnotify_interval_ms = 0\n[limits]\nsource_requests_per_sec = 0\nmax_connections_per_source = 0\n' > "$DATA/sb.toml"
[ "$SB_NEEDED" = 1 ] && { "$BIN" --data-dir "$DATA/sb" user import "$DATA/users.csv" >/dev/null || exit 1; }
PGURL=
if [ "$PG_SERVERS" = 1 ]; then
  rm -rf "$WORK/pg"; mkdir -p "$WORK/pg"
  PGURL=$("$ROOT/scripts/pg-cluster.sh" start "$WORK/pg") || { log "cannot start PostgreSQL"; exit 1; }
  trap '"$ROOT/scripts/pg-cluster.sh" stop "$WORK/pg"' EXIT
fi
if [[ " $SERVERS " == *" switchboard-pg "* ]]; then
  "$BIN" --data-dir "$DATA/sbpg" --database "$PGURL" user import "$DATA/users.csv" >/dev/null || exit 1
fi
# switchboard-pool: a template database with the same users (imported as switchboard-pg's);
# each trial runs on a fresh copy of it. The front ends' addresses must be free.
POOL_DB= POOLURL=
if [ "$POOL" = 1 ]; then
  for ip in "${POOL_IPS[@]}"; do
    python3 - "$ip" "$PORT" <<'PY' || { log "$ip:$PORT (UDP or TCP) is in use: switchboard-pool needs it"; exit 1; }
import socket, sys
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.close()
PY
  done
  psql -q -X -v ON_ERROR_STOP=1 "$PGURL" -c 'CREATE DATABASE sbpool_tmpl' >/dev/null || { log "cannot create the pool's database"; exit 1; }
  "$BIN" --data-dir "$DATA/sbpool0" --database "${PGURL%/*}/sbpool_tmpl" user import "$DATA/users.csv" >/dev/null || exit 1
fi
pool_sql() { psql -q -X -t -A -F ' ' -v ON_ERROR_STOP=1 "$POOLURL" -c "$1"; }
pool_members() { "$BIN" --data-dir "$DATA/sbpool0" --database "$POOLURL" pool status --json 2>/dev/null |
  python3 -c 'import json, sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0; }
pool_pgstat() {  # seconds since the epoch, commits, rows written (insert+update+delete) in the pool's database
  pool_sql "SELECT extract(epoch FROM clock_timestamp()),
    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
    (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables)"
}
pool_tables() { pool_sql "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables ORDER BY relname"; }
# kamailio-pg: its own database on the cluster, Kamailio's PostgreSQL schema (version table,
# location, subscriber) and the same subscribers as the SQLite database below.
KAMURL=
if [[ " $SERVERS " == *" kamailio-pg "* ]]; then
  KAMURL=${PGURL%/*}/kamailio
  psql -q -X -v ON_ERROR_STOP=1 "$PGURL" -c 'CREATE DATABASE kamailio' >/dev/null || { log "cannot create the kamailio database"; exit 1; }
  PGSQL=/usr/share/kamailio/postgres
  { cat "$PGSQL/standard-create.sql" "$PGSQL/usrloc-create.sql" "$PGSQL/auth_db-create.sql"
    echo "BEGIN;"
    for i in $(seq 0 1999); do echo "INSERT INTO subscriber (username, domain, password) VALUES ('$(u $i)', '$DOMAIN', 'pw');"; done
    echo "COMMIT;"; } | psql -q -X -v ON_ERROR_STOP=1 "$KAMURL" >/dev/null || { log "cannot load the kamailio schema"; exit 1; }
fi
kam_sql() { psql -q -X -t -A -v ON_ERROR_STOP=1 "$KAMURL" -c "$1"; }
pg_ticks() {  # total utime+stime of the PostgreSQL cluster's processes (postmaster and children)
  local pm t=0 p s
  pm=$(head -n 1 "$WORK/pg/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  for p in $pm $(ps -o pid= --ppid "$pm" 2>/dev/null); do
    s=$(cat /proc/$p/stat 2>/dev/null) || continue
    s=${s##*) }; set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
SQL=/usr/share/kamailio/db_sqlite
{ cat "$SQL/standard-create.sql" "$SQL/auth_db-create.sql"
  echo "BEGIN;"
  for i in $(seq 0 1999); do echo "INSERT INTO subscriber (username, domain, password) VALUES ('$(u $i)', '$DOMAIN', 'pw');"; done
  echo "COMMIT;"; } | sqlite3 "$DATA/kamailio.sqlite" || exit 1

# ---------------------------------------------------------------- servers
SERVER_PID=   # the server's pid; switchboard-pool: its three front ends' pids
server_pids() {
  [ -n "$SERVER_PID" ] || return
  local p
  for p in $SERVER_PID; do
    echo "$p"
    ps -o pid= --ppid "$p" 2>/dev/null
  done
}
cpu_ticks() {  # total utime+stime of the server's processes
  local t=0 p s
  for p in $(server_pids); do
    s=$(cat /proc/$p/stat 2>/dev/null) || continue
    s=${s##*) }; set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/${1:-127.0.0.1}/$PORT) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start_pool() {  # $1 = log (front end n logs to ${1%.log}-fe$n.log)
  # A fresh database, a copy of the template with the users: no registrations, presence,
  # conversations or members from the previous trial.
  POOL_DB=sbpool_$(date +%s%N); POOLURL=${PGURL%/*}/$POOL_DB
  psql -q -X -v ON_ERROR_STOP=1 "$PGURL" -c "CREATE DATABASE $POOL_DB TEMPLATE sbpool_tmpl" >/dev/null 2>&1 ||
    { log "cannot create $POOL_DB"; return 1; }
  local n ip pids=
  for n in 1 2 3; do
    ip=${POOL_IPS[n - 1]}
    "$BIN" --data-dir "$DATA/sbpool$n" --database "$POOLURL" --log-level "$SB_LOG" serve --config "$DATA/sb.toml" \
      --front-end $n --sip-udp $ip:$PORT --sip-tcp $ip:$PORT --sip-tls off --http off >"${1%.log}-fe$n.log" 2>&1 &
    pids="$pids $!"
  done
  SERVER_PID=${pids# }
  for ip in "${POOL_IPS[@]}"; do wait_port "$ip" || { log "switchboard-pool: no front end on $ip:$PORT (see ${1%.log}-fe*.log)"; return 1; }; done
  for _ in $(seq 150); do [ "$(pool_members)" = 3 ] && return 0; sleep 0.2; done
  log "switchboard-pool: pool status does not list three front ends (see ${1%.log}-fe*.log)"; return 1
}
start_server() {  # $1 = kamailio|kamailio-pg|switchboard|switchboard-pg|switchboard-pool, $2 = log, $3 = Switchboard's HTTP address (off)
  case $1 in
    switchboard-pool) start_pool "$2"; return ;;
    kamailio)
      kamailio -f "$HERE/kamailio.cfg" -DD -E -m 512 -M 16 -P "$WORK/run/kamailio.pid" -Y "$WORK/run" \
        -A "DBURL=\"sqlite://$DATA/kamailio.sqlite\"" -A "DOMAIN=\"$DOMAIN\"" -A "ADDR=127.0.0.1" -A "PORT=$PORT" \
        -A "UDPWORKERS=4" -A "TCPWORKERS=4" >"$2" 2>&1 &
      ;;
    kamailio-pg)  # a fresh start: no registrations left from the previous trial
      kam_sql 'TRUNCATE location, location_attrs' >/dev/null || { log "cannot empty the location table"; return 1; }
      kamailio -f "$HERE/kamailio.cfg" -DD -E -m 512 -M 16 -P "$WORK/run/kamailio.pid" -Y "$WORK/run" \
        -A WITH_PGSQL -A "DBURL=\"$KAMURL\"" -A "DOMAIN=\"$DOMAIN\"" -A "ADDR=127.0.0.1" -A "PORT=$PORT" \
        -A "UDPWORKERS=4" -A "TCPWORKERS=4" >"$2" 2>&1 &
      ;;
    switchboard)
      "$BIN" --data-dir "$DATA/sb" --log-level warn serve --config "$DATA/sb.toml" \
        --sip-udp 127.0.0.1:$PORT --sip-tcp 127.0.0.1:$PORT --sip-tls off --http "${3:-off}" >"$2" 2>&1 &
      ;;
    switchboard-pg)
      "$BIN" --data-dir "$DATA/sbpg" --database "$PGURL" --log-level warn serve --config "$DATA/sb.toml" \
        --sip-udp 127.0.0.1:$PORT --sip-tcp 127.0.0.1:$PORT --sip-tls off --http "${3:-off}" >"$2" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_port || { log "$1 did not start (see $2)"; return 1; }
}
stop_server() {
  [ -n "$SERVER_PID" ] || return
  local p
  kill $SERVER_PID 2>/dev/null
  for p in $SERVER_PID; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  SERVER_PID=
  if [ -n "$POOL_DB" ]; then  # switchboard-pool: its trial's database goes
    psql -q -X "$PGURL" -c "DROP DATABASE IF EXISTS $POOL_DB WITH (FORCE)" >/dev/null 2>&1
    POOL_DB=
  fi
}

# ---------------------------------------------------------------- one trial
# Prints: passed(0/1) achieved_rate server_cpu_pct failed_pct slow_pct avg_rtd_ms
stat_field() {  # file, column name -> value in the last row
  python3 - "$1" "$2" <<'PY'
import sys
rows = [l.rstrip('\n').split(';') for l in open(sys.argv[1]) if l.strip()]
head, last = rows[0], rows[-1]
print(last[head.index(sys.argv[2])] if sys.argv[2] in head else 0)
PY
}
slow_calls() {  # calls whose first-request-to-final time exceeded LAT_MAX_MS
  python3 - "$1" "$LAT_MAX_MS" <<'PY'
import sys
rows = [l.rstrip('\n').split(';') for l in open(sys.argv[1]) if l.strip()]
head, last, lim = rows[0], rows[-1], int(sys.argv[2])
n = 0
for i, h in enumerate(head):
    if h.startswith('ResponseTimeRepartition1_'):
        b = h.split('_', 1)[1]
        edge = int(b.lstrip('<>='))
        if (b.startswith('<') and edge > lim) or b.startswith('>='):
            n += int(last[i] or 0)
print(n)
PY
}
creation_rate() {  # stat file, calls -> successful calls / time SIPp took to create them all
  # Interpolated between the per-second rows, so a handful of lost calls left waiting
  # for their timeout at the end does not count as a slow server (the calls count as
  # failed instead).
  python3 - "$1" "$2" <<'PY'
import sys
rows = [l.rstrip('\n').split(';') for l in open(sys.argv[1]) if l.strip()]
head, data, n = rows[0], rows[1:], int(sys.argv[2])
col = lambda r, name: r[head.index(name)]
epoch = lambda v: float(v.split('\t')[-1])
start = epoch(col(data[0], 'StartTime'))
prev_t, prev_out, t_done = start, 0, None
for r in data:
    t, out = epoch(col(r, 'CurrentTime')), int(col(r, 'OutgoingCall(C)'))
    if out >= n:
        t_done = prev_t + (n - prev_out) / max(out - prev_out, 1) * (t - prev_t)
        break
    prev_t, prev_out = t, out
ok = int(col(data[-1], 'SuccessfulCall(C)'))
print(round(ok / (t_done - start)) if t_done and t_done > start else 0)
PY
}
notify_count() {  # NOTIFYs the watchers received so far (SIPp -trace_counts file in dir $1)
  python3 - "$1" <<'PY'
import csv, glob, sys
files = glob.glob(sys.argv[1] + '/*_counts.csv')
rows = list(csv.reader(open(files[0]), delimiter=';')) if files else []
head, last = (rows[0], rows[-1]) if len(rows) > 1 else ([], [])
print(sum(int(last[i] or 0) for i, h in enumerate(head) if h.endswith('_NOTIFY_Recv')))
PY
}
trial() {  # server test transport rate
  local srv=$1 test=$2 tr=$3 rate=$4 dir=$OUT/$1-$2-$3-$4
  mkdir -p "$dir"
  local t=$([ "$tr" = udp ] && echo u1 || echo t1)
  start_server "$srv" "$dir/server.log" || { stop_server; echo "0 0 0 100 0 0"; return; }
  # Where SIPp goes: 127.0.0.1 (front end 1 of switchboard-pool). switchboard-pool: the
  # MESSAGE recipients register on front end 2 (the senders stay on front end 1), and
  # REGISTER instance i goes to front end i (mod 3).
  local rcpt_host=127.0.0.1
  [ "$srv" = switchboard-pool ] && rcpt_host=${POOL_IPS[1]}
  local uas=
  if [ "$test" = message ]; then
    timeout 60 sipp $rcpt_host:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/register.xml" -inf "$DATA/rcpt.csv" -key domain $DOMAIN \
      -key expires 3600 -key cport $UAS_PORT -p 5092 -t $t -m 1000 -r 2000 -timeout 30s >"$dir/rcpt.out" 2>&1
    timeout $((DUR + 40)) sipp -nostdin -i 127.0.0.1 -sf "$SCN/message_uas.xml" -p $UAS_PORT -t $t -timeout $((DUR + 30))s \
      -max_recv_loops 100000 >"$dir/uas.out" 2>&1 &
    uas=$!
    sleep 0.3
  fi
  local watcher= notif0=0
  case $test in
    subscribe)  # the presentities publish once; each call subscribes to one of them
      timeout 60 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/publish_once.xml" -inf "$DATA/pub.csv" -key domain $DOMAIN \
        -key expires 3600 -p 5092 -t $t -m 1000 -r 2000 -timeout 30s >"$dir/seed.out" 2>&1 ;;
    publish)    # one long-lived watcher per presentity, counting its NOTIFYs
      mkdir -p "$dir/watch"
      (cd "$dir/watch" && exec timeout $((DUR + 90)) sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/watcher.xml" \
        -inf "$DATA/watch.csv" -key domain $DOMAIN -key expires 3600 -p $WATCH_PORT -t $t -m 1000 -r 2000 -l 1000 \
        -trace_counts -fd 1 -timeout $((DUR + 80))s -max_recv_loops 100000 >out 2>&1) &
      watcher=$!
      for _ in $(seq 100); do
        notif0=$(notify_count "$dir/watch"); [ "$notif0" -ge 1000 ] && break; sleep 0.2
      done ;;
  esac
  if [ "$test" = message ] && [ "$WARM" = 1 ]; then
    timeout 60 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/message_uac.xml" -inf "$DATA/warm.csv" -key domain $DOMAIN \
      -key expires 3600 -key cport 5100 -p 5100 -t $t -m 1000 -r "$WARM_RATE" -timeout 30s \
      >"$dir/warm.out" 2>&1
  fi
  local scen=$SCN/register.xml inf=$DATA/reg.csv
  [ "$test" = message ] && scen=$SCN/message_uac.xml inf=$DATA/msg.csv
  [ "$test" = subscribe ] && scen=$SCN/subscribe.xml inf=$DATA/msg.csv
  [ "$test" = publish ] && scen=$SCN/publish.xml inf=$DATA/pub.csv
  local per=$(( (rate + PAR - 1) / PAR )) calls=$(( rate * DUR / PAR )) pids=() i
  local c0 t0 c1 t1 pg0=0 pg1=0 st0= st1= host
  if [ "$srv" = switchboard-pool ]; then  # the database's counters, once every backend flushed its own
    sleep "$POOL_SETTLE"; st0=$(pool_pgstat); pool_tables > "$dir/pg_tables_before.txt"
  fi
  [ "$srv" = kamailio-pg ] || [ "$srv" = switchboard-pool ] && pg0=$(pg_ticks)
  c0=$(cpu_ticks); t0=$(date +%s.%N)
  for i in $(seq 1 "$PAR"); do
    local p=$((5100 + i))
    [ "$test" = publish ] && inf=$DATA/pub$i.csv
    host=127.0.0.1
    [ "$srv" = switchboard-pool ] && [ "$test" = register ] && host=${POOL_IPS[(i - 1) % 3]}
    timeout $((DUR + 60)) sipp $host:$PORT -nostdin -i 127.0.0.1 -sf "$scen" -inf "$inf" -key domain $DOMAIN -key expires 3600 \
      -key cport $p -p $p -t $t -r $per -m $calls -l $((per * 2)) -timeout $((DUR + 30))s -recv_timeout 5000 \
      -max_recv_loops 100000 \
      -trace_stat -stf "$dir/stat$i.csv" -fd 1 >"$dir/sipp$i.out" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(date +%s.%N); c1=$(cpu_ticks)
  [ "$srv" = kamailio-pg ] || [ "$srv" = switchboard-pool ] && pg1=$(pg_ticks)
  if [ "$srv" = switchboard-pool ]; then
    sleep "$POOL_SETTLE"; st1=$(pool_pgstat); pool_tables > "$dir/pg_tables_after.txt"
    [ "$test" = register ] && pool_sql "SELECT (SELECT count(*) FROM pool_bindings), (SELECT count(*) FROM pool_members),
      (SELECT count(*) FROM pool_presence), (SELECT count(DISTINCT aor) FROM pool_bindings)" > "$dir/pool_rows.txt" 2>&1
  fi
  [ -n "$uas" ] && { kill "$uas" 2>/dev/null; wait "$uas" 2>/dev/null; }
  local notified=-1
  if [ -n "$watcher" ]; then
    sleep 2   # the last NOTIFYs
    notified=$(( $(notify_count "$dir/watch") - notif0 ))
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  fi
  stop_server
  local ok=0 bad=0 slow=0 rate_sum=0 f
  for i in $(seq 1 "$PAR"); do
    f=$dir/stat$i.csv
    [ -s "$f" ] || { bad=$((bad + calls)); continue; }
    rate_sum=$((rate_sum + $(creation_rate "$f" "$calls")))
    ok=$((ok + $(stat_field "$f" 'SuccessfulCall(C)')))
    bad=$((bad + $(stat_field "$f" 'FailedCall(C)')))
    slow=$((slow + $(slow_calls "$f")))
  done
  if [ "$srv" = kamailio-pg ]; then  # PostgreSQL's share (same time base as the server's), and
    # proof that the registrar wrote there
    python3 -c 'import sys; p0, p1, t0, t1, tck, n, r = map(float, sys.argv[1:]); print(round((p1 - p0) / tck / min(max(t1 - t0, 0.001), max(n / max(r, 1), 0.001)) * 100))' \
      "$pg0" "$pg1" "$t0" "$t1" "$CLK_TCK" "$((calls * PAR))" "$rate_sum" > "$dir/pg_cpu.txt"
    kam_sql 'SELECT count(*) FROM location' > "$dir/location_rows.txt" 2>&1
    log "kamailio-pg $test/$tr target $rate/s: PostgreSQL CPU $(cat "$dir/pg_cpu.txt") %, $(cat "$dir/location_rows.txt") rows in location"
  fi
  if [ "$srv" = switchboard-pool ]; then  # PostgreSQL's CPU (as kamailio-pg's), commits and rows written
    python3 -c 'import sys; p0, p1, t0, t1, tck, n, r = map(float, sys.argv[1:]); print(round((p1 - p0) / tck / min(max(t1 - t0, 0.001), max(n / max(r, 1), 0.001)) * 100))' \
      "$pg0" "$pg1" "$t0" "$t1" "$CLK_TCK" "$((calls * PAR))" "$rate_sum" > "$dir/pg_cpu.txt"
    python3 - "$st0" "$st1" "$t0" "$t1" "$((calls * PAR))" "$rate_sum" "$ok" "$POOL_BG" "$(cat "$dir/pool_rows.txt" 2>/dev/null)" > "$dir/pg_stats.txt" <<'PY'
import sys
a, b = sys.argv[1].split(), sys.argv[2].split()
t0, t1, total, achieved, ok = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
bg = [float(x) for x in sys.argv[8].split()] or [0.0, 0.0]
rows = sys.argv[9].split() + ['', '', '', '']
# The load's duration: as for the CPU, calls / achieved rate (the tail after the last call is idle).
dur = min(max(t1 - t0, 0.001), max(total / max(achieved, 1), 0.001))
span = float(b[0]) - float(a[0])           # between the two readings (the settle included)
commits, written = int(b[1]) - int(a[1]), int(b[2]) - int(a[2])
net_c, net_w = commits - bg[0] * span, written - bg[1] * span   # less the idle pool's background
print(f'duration_s={dur:.2f} between_readings_s={span:.2f} successful_calls={ok} achieved_per_s={achieved}')
print(f'commits={commits} rows_written={written} background_commits_per_s={bg[0]:.1f} background_rows_per_s={bg[1]:.1f}')
print(f'commits_per_s={net_c / dur:.0f} rows_written_per_s={net_w / dur:.0f}')
print(f'commits_per_1000_calls={1000 * net_c / max(ok, 1):.0f} rows_written_per_1000_calls={1000 * net_w / max(ok, 1):.0f}')
if rows[0]:
    print(f'pool_bindings={rows[0]} pool_members={rows[1]} pool_presence={rows[2]} distinct_aors_bound={rows[3]}')
PY
    log "switchboard-pool $test/$tr target $rate/s: PostgreSQL CPU $(cat "$dir/pg_cpu.txt") %, $(tr '\n' ' ' < "$dir/pg_stats.txt")"
  fi
  python3 - "$ok" "$bad" "$slow" "$rate" "$t0" "$t1" "$c0" "$c1" "$CLK_TCK" "$((calls * PAR))" "$rate_sum" "$notified" <<'PY'
import sys
ok, bad, slow, rate = map(int, sys.argv[1:5]); t0, t1 = float(sys.argv[5]), float(sys.argv[6])
c0, c1, tck, total = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
achieved, notified = int(sys.argv[11]), int(sys.argv[12])
wall = max(t1 - t0, 0.001)
# CPU over the whole run; the tail after the last call is idle time for the server.
cpu = (c1 - c0) / tck / min(wall, max(total / max(achieved, 1), 0.001)) * 100
failed_pct = 100.0 * (bad + max(total - ok - bad, 0)) / max(total, 1)
slow_pct = 100.0 * slow / max(total, 1)
passed = failed_pct + slow_pct < 1.0 and achieved >= 0.95 * rate
if notified >= 0:  # PUBLISH: two NOTIFYs per successful call reached the watcher
    passed = passed and notified >= 0.99 * 2 * ok
    print('notified %d of %d' % (notified, 2 * ok), file=sys.stderr)
print(int(passed), round(achieved), round(cpu), round(failed_pct, 2), round(slow_pct, 2))
PY
}

# ---------------------------------------------------------------- the pool's background
# What the idle pool writes (heartbeats, the reaper, the presence change log followed):
# commits and rows written per second, subtracted from each trial's figures.
POOL_BG="0 0"
POOL_COLS=target,achieved,passed,pg_cpu_pct,commits_per_s,rows_written_per_s,commits_per_1000_calls,rows_written_per_1000_calls,pool_bindings,pool_members,pool_presence
pool_row() {  # trial directory -> the POOL_COLS after test,transport (pg_cpu.txt, pg_stats.txt)
  python3 - "$1" "$POOL_COLS" <<'PY'
import sys
d, cols = sys.argv[1], sys.argv[2].split(',')
kv = {}
try:
    for line in open(d + '/pg_stats.txt'):
        kv.update(w.split('=', 1) for w in line.split() if '=' in w)
    kv['pg_cpu_pct'] = open(d + '/pg_cpu.txt').read().strip()
except OSError:
    pass
print(','.join(kv.get(c, '') for c in cols[3:]))
PY
}
if [ "$POOL" = 1 ]; then
  dir=$OUT/switchboard-pool-idle; mkdir -p "$dir"
  if start_server switchboard-pool "$dir/server.log"; then
    sleep "$POOL_SETTLE"; a=$(pool_pgstat); sleep 20; b=$(pool_pgstat)
    POOL_BG=$(python3 -c 'import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); s = float(b[0]) - float(a[0]); print(f"{(int(b[1]) - int(a[1])) / s:.1f} {(int(b[2]) - int(a[2])) / s:.1f}")' "$a" "$b")
    echo "$POOL_BG" > "$OUT/pool_background.txt"
    log "switchboard-pool idle: $POOL_BG (commits/s, rows written/s) in the background"
  fi
  stop_server
  echo "test,transport,$POOL_COLS" > "$OUT/pool_pg.csv"
  echo "test,transport,$POOL_COLS" > "$OUT/pool_pg_summary.csv"
fi

# ---------------------------------------------------------------- search
echo "server,test,transport,target,achieved,server_cpu_pct,failed_pct,slow_pct,passed" > "$OUT/trials.csv"
echo "server,test,transport,best_rate,server_cpu_pct" > "$OUT/summary.csv"
for test in $TESTS; do
  for tr in $TRANSPORTS; do
    for srv in $SERVERS; do
      start=START_$test; rate=${!start}; best=0; best_cpu=0; fail=0; best_target=0
      for n in $(seq 1 "$MAX_TRIALS"); do
        read -r passed achieved cpu failed slow < <(trial "$srv" "$test" "$tr" "$rate")
        log "$srv $test/$tr target $rate/s: achieved $achieved/s, server CPU $cpu %, failed $failed %, slow $slow % -> $([ "$passed" = 1 ] && echo pass || echo fail)"
        echo "$srv,$test,$tr,$rate,$achieved,$cpu,$failed,$slow,$passed" >> "$OUT/trials.csv"
        [ "$srv" = switchboard-pool ] && echo "$test,$tr,$rate,$achieved,$passed,$(pool_row "$OUT/$srv-$test-$tr-$rate")" >> "$OUT/pool_pg.csv"
        if [ "$passed" = 1 ]; then
          best=$achieved; best_cpu=$cpu; best_target=$rate
          if [ "$fail" = 0 ]; then rate=$((rate * 13 / 10)); else rate=$(((rate + fail) / 2)); fi
        else
          fail=$rate
          if [ "$best" = 0 ]; then rate=$((rate * 6 / 10)); else rate=$(((best + fail) / 2)); fi
        fi
        if [ "$best" != 0 ] && [ "$fail" != 0 ] && [ $((fail * 100)) -le $((best * 108)) ]; then break; fi
      done
      echo "$srv,$test,$tr,$best,$best_cpu" >> "$OUT/summary.csv"
      [ "$srv" = switchboard-pool ] && [ "$best_target" != 0 ] &&
        echo "$test,$tr,$best_target,$best,1,$(pool_row "$OUT/$srv-$test-$tr-$best_target")" >> "$OUT/pool_pg_summary.csv"
    done
  done
done

# ---------------------------------------------------------------- memory per subscription
if [ "$MEM_SUBS" -gt 0 ] && [[ " $SERVERS " == *" switchboard "* ]]; then
  dir=$OUT/memory; mkdir -p "$dir"
  start_server switchboard "$dir/server.log" 127.0.0.1:5094 || exit 1
  rss() { awk '/^VmRSS/ {print $2}' /proc/$SERVER_PID/status; }
  timeout 60 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/publish_once.xml" -inf "$DATA/pub.csv" -key domain $DOMAIN \
    -key expires 3600 -p 5092 -t u1 -m 1000 -r 2000 -timeout 30s >"$dir/seed.out" 2>&1
  sleep 1; rss0=$(rss)
  # Unanswered calls are still subscriptions on the server; SIPp's verdict is not needed.
  # Two halves, each followed by 40 s so that finished transactions (Timer J: 32 s) are
  # gone: the second half's growth is the memory a subscription itself takes.
  subscribe_half() {
    timeout 300 sipp 127.0.0.1:$PORT -nostdin -i 127.0.0.1 -sf "$SCN/subscribe.xml" -inf "$DATA/msg.csv" -key domain $DOMAIN \
      -key expires 3600 -p 5101 -t u1 -m $((MEM_SUBS / 2)) -r 4000 -l 8000 -timeout 240s -max_recv_loops 100000 \
      >>"$dir/subscribe.out" 2>&1
    sleep 40
  }
  count_subs() { python3 -c 'import json,urllib.request; print(json.load(urllib.request.urlopen("http://127.0.0.1:5094/status"))["subscriptions"])'; }
  subscribe_half; rss1=$(rss); subs1=$(count_subs)
  subscribe_half; rss2=$(rss); subs2=$(count_subs)
  stop_server
  python3 - "$rss0" "$rss1" "$subs1" "$rss2" "$subs2" <<'PY' | tee "$OUT/memory.txt"
import sys
r0, r1, n1, r2, n2 = map(int, sys.argv[1:6])
print(f'Switchboard memory: RSS {r0 // 1024} MiB with 1000 publications; {r1 // 1024} MiB at {n1} '
      f'subscriptions; {r2 // 1024} MiB at {n2}: {(r2 - r0) * 1024 / max(n2, 1):.0f} bytes per subscription '
      f'all in, {(r2 - r1) * 1024 / max(n2 - n1, 1):.0f} bytes per further subscription')
PY
fi

# ---------------------------------------------------------------- report
python3 - "$OUT/summary.csv" "$OUT/pool_pg_summary.csv" "$OUT/pool_background.txt" <<'PY' | tee "$OUT/results.txt"
import csv, os, sys
rows = list(csv.DictReader(open(sys.argv[1])))
best = {(r['server'], r['test'], r['transport']): (int(r['best_rate']), int(r['server_cpu_pct'])) for r in rows}
keys = sorted({(r['test'], r['transport']) for r in rows})
pg = any(r['server'] == 'switchboard-pg' for r in rows)
kpg = any(r['server'] == 'kamailio-pg' for r in rows)
pool = any(r['server'] == 'switchboard-pool' for r in rows)
extra_h = ' Switchboard on PostgreSQL calls/s | its CPU | PostgreSQL rate ratio |' if pg else ''
extra_h += ' Kamailio db_mode=3 on PostgreSQL calls/s | its CPU |' if kpg else ''
extra_h += ' Switchboard-pg / Kamailio-pg rate ratio | per-core ratio |' if pg and kpg else ''
extra_h += ' pool of 3 calls/s | its CPU (3 front ends) | pool / Kamailio rate ratio |' if pool else ''
extra_h += ' pool / Kamailio-pg per-core ratio |' if pool and kpg else ''
print('| test | transport | Kamailio calls/s | Kamailio CPU | Switchboard calls/s | Switchboard CPU | rate ratio | per-core ratio |' + extra_h)
print('|---|---|---|---|---|---|---|---|' + ('---|---|---|' if pg else '') + ('---|---|' if kpg else '') + ('---|---|' if pg and kpg else '')
      + ('---|---|---|' if pool else '') + ('---|' if pool and kpg else ''))
pcr = lambda a, b: (a[0] / max(a[1], 1)) / (b[0] / max(b[1], 1)) if a[0] and b[0] else float('nan')
for t, tr in keys:
    k = best.get(('kamailio', t, tr), (0, 0)); s = best.get(('switchboard', t, tr), (0, 0))
    ratio = s[0] / k[0] if k[0] else float('nan')
    per_core = (s[0] / max(s[1], 1)) / (k[0] / max(k[1], 1)) if k[0] and s[0] else float('nan')
    extra = ''
    if pg:
        q = best.get(('switchboard-pg', t, tr), (0, 0))
        extra = f' {q[0]} | {q[1]} % | {q[0] / k[0] if k[0] else float("nan"):.2f} |'
    if kpg:
        kp = best.get(('kamailio-pg', t, tr), (0, 0))
        extra += f' {kp[0]} | {kp[1]} % |'
        if pg:
            extra += f' {q[0] / kp[0] if kp[0] else float("nan"):.2f} |'
            extra += f' {(q[0] / max(q[1], 1)) / (kp[0] / max(kp[1], 1)) if kp[0] and q[0] else float("nan"):.2f} |'
    if pool:
        pl = best.get(('switchboard-pool', t, tr), (0, 0))
        extra += f' {pl[0]} | {pl[1]} % | {pl[0] / k[0] if k[0] else float("nan"):.2f} |'
        if kpg:
            extra += f' {pcr(pl, best.get(("kamailio-pg", t, tr), (0, 0))):.2f} |'
    print(f'| {t} | {tr} | {k[0]} | {k[1]} % | {s[0]} | {s[1]} % | {ratio:.2f} | {per_core:.2f} |' + extra)
if pool:
    # The Enterprise pool's goals: REGISTER per server CPU-second at least twice Kamailio's on
    # PostgreSQL (db_mode=3), and MESSAGE across front ends at least Kamailio's single-node rate.
    print()
    for t, tr in keys:
        pl = best.get(('switchboard-pool', t, tr), (0, 0))
        if t == 'register' and kpg:
            kp = best.get(("kamailio-pg", t, tr), (0, 0)); v = pcr(pl, kp)
            print(f'(a) REGISTER/{tr} per server CPU-second: pool {pl[0] / max(pl[1], 1) * 100:.0f}, Kamailio-pg '
                  f'{kp[0] / max(kp[1], 1) * 100 if kp[0] else 0:.0f}: ratio {v:.2f} (goal >= 2: {"met" if v >= 2 else "NOT met"})')
        if t == 'message':
            k = best.get(('kamailio', t, tr), (0, 0)); v = pl[0] / k[0] if k[0] else float('nan')
            print(f'(b) MESSAGE/{tr} across front ends: pool {pl[0]}/s, Kamailio {k[0]}/s: ratio {v:.2f} '
                  f'(goal >= 1: {"met" if v >= 1 else "NOT met"})')
    if os.path.exists(sys.argv[2]):
        bg = open(sys.argv[3]).read().split() if os.path.exists(sys.argv[3]) else ['?', '?']
        print(f'\nswitchboard-pool on PostgreSQL, at the best passing rate (less the idle pool: {bg[0]} commits/s, {bg[1]} rows/s):')
        print('| test | transport | calls/s | PostgreSQL CPU | commits/s | rows written/s | commits per 1000 calls | rows per 1000 calls | pool_bindings | pool_members | pool_presence |')
        print('|---|---|---|---|---|---|---|---|---|---|---|')
        for r in csv.DictReader(open(sys.argv[2])):
            print(f"| {r['test']} | {r['transport']} | {r['achieved']} | {r['pg_cpu_pct']} % | {r['commits_per_s']} | {r['rows_written_per_s']} | "
                  f"{r['commits_per_1000_calls']} | {r['rows_written_per_1000_calls']} | {r['pool_bindings']} | {r['pool_members']} | {r['pool_presence']} |")
PY
log "results in $OUT"
