#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what the tests need
# (SIPp, baresip, linphonec, pidgin-sipe in bitlbee, PostgreSQL), checks formatting and lints, runs the Rust unit and
# socket-level tests, the store's conformance suite and the CLI's scenarios again on a throwaway PostgreSQL cluster, then the real-client
# interop tests (SIPp scenarios, baresip over UDP/TCP/TLS,
# linphonec, presence watched by linphonec and baresip, pidgin-sipe's NTLM sign-in, presence
# and IM between pidgin-sipe and baresip users, a Lync conference shared with baresip), then
# the hostile suite (tests/hostile: attacks from 127.0.0.2 and up, health checks after each).
# Usage: scripts/test.sh            Exit status 0 only if everything passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
failed=()
LOGS=$(mktemp -d)
why=()  # per failed step: the lines that say what failed, repeated at the end

step() { echo; echo "=== $*"; }
run() {  # name, command...
  local name=$1; shift
  step "$name"
  local log="$LOGS/step.log"
  # The step's output goes to the screen and to a log; a failed step's FAIL and panic lines
  # are printed again in the summary, since CI keeps only the end of a long run.
  if "$@" 2>&1 | tee "$log"; then echo "--- ok: $name"; else
    echo "--- FAILED: $name"; failed+=("$name")
    why+=("$name:"$'\n'"$(grep -a -E '^(FAIL|not ok)|FAIL |panicked at|^error|Error:' "$log" | head -n 30)")
  fi
}

# 1. System packages the interop tests drive (only what is missing is installed).
need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v baresip >/dev/null || need+=(baresip-core)
command -v linphonec >/dev/null || need+=(linphone-cli)
command -v bitlbee >/dev/null || need+=(bitlbee-libpurple)
[ -e /usr/lib/purple-2/libsipe.so ] || need+=(pidgin-sipe)
# The pidgin-sipe tests build a small LD_PRELOAD shim against libxml2 (tests/interop/shim).
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -e /usr/include/libxml2/libxml/parser.h ] || need+=(libxml2-dev)
command -v python3 >/dev/null || need+=(python3)
# The store's conformance suite, the CLI, the IM/presence/Lync socket tests and one real-client
# suite run again on a throwaway PostgreSQL cluster (scripts/pg-cluster.sh; psql makes databases).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
# scripts/pg-cluster.sh makes the test cluster's TLS certificate with openssl.
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  step "installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" \
    || { echo "cannot install ${need[*]}"; exit 1; }
fi

# 2. Build, format, lints.
run "cargo build" cargo build --workspace --all-targets --locked
run "cargo fmt --check" cargo fmt --all -- --check
run "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings

# 3. Unit tests, RFC 4475 torture tests, transaction timers, socket-level server tests.
if cargo nextest --version >/dev/null 2>&1; then
  run "rust tests (nextest)" cargo nextest run --workspace --locked --no-fail-fast
else
  run "rust tests" cargo test --workspace --locked --no-fail-fast
fi

# 3b. On PostgreSQL: the store's conformance suite and its unit tests (those that need a
# server, such as the user cache's LISTEN/NOTIFY, skip without one), every CLI scenario
# (tests/it/cli_postgres.rs: each command on PostgreSQL, printing what it prints on SQLite),
# the IM, presence and Lync socket tests with the server on PostgreSQL (each test server
# on a fresh database), and the Enterprise pool's (tests/it/pool.rs: front ends sharing one
# database; tests/it/pool_faults.rs: front end processes killed and stopped, and a cluster of
# its own stopped for ten seconds; the store's tests/pool.rs for its tables). A throwaway cluster on loopback, in a temporary directory; it stays up
# for one real-client suite in step 4 and is stopped at exit.
PG_DIR=$(mktemp -d)
trap '"$ROOT/scripts/pg-cluster.sh" stop "$PG_DIR"; rm -rf "$PG_DIR" "$LOGS"' EXIT
if PG_URL=$("$ROOT/scripts/pg-cluster.sh" start "$PG_DIR"); then
  pg_env=(env SWITCHBOARD_TEST_STORE=postgres SWITCHBOARD_TEST_PG_URL="$PG_URL"
          SWITCHBOARD_TEST_PG_CA="$PG_DIR/tls/ca.crt")
  if cargo nextest --version >/dev/null 2>&1; then
    run "store conformance, pool data and store unit tests on PostgreSQL (nextest)" "${pg_env[@]}" \
      cargo nextest run -p switchboard-store --lib --test conformance --test pool --locked --no-fail-fast
    run "Enterprise pool: three front ends on PostgreSQL (nextest)" "${pg_env[@]}" \
      cargo nextest run -p switchboard --test it --locked --no-fail-fast pool:: pool_faults::
    run "CLI on PostgreSQL (nextest)" "${pg_env[@]}" \
      cargo nextest run -p switchboard --test it --locked --no-fail-fast cli_postgres::
    run "IM, presence and Lync socket tests, server on PostgreSQL (nextest)" \
      "${pg_env[@]}" SWITCHBOARD_TEST_SERVER_STORE=postgres \
      cargo nextest run -p switchboard --test it --locked --no-fail-fast \
      -E 'test(/^(im|im_caps|presence|presence_caps|lync|lync_im|lync_guard|registration)::/)'
  else
    run "store conformance, pool data and store unit tests on PostgreSQL" "${pg_env[@]}" \
      cargo test -p switchboard-store --lib --test conformance --test pool --locked --no-fail-fast
    run "Enterprise pool: three front ends on PostgreSQL" "${pg_env[@]}" \
      cargo test -p switchboard --test it --locked --no-fail-fast pool
    run "CLI on PostgreSQL" "${pg_env[@]}" \
      cargo test -p switchboard --test it --locked --no-fail-fast cli_postgres::
    for m in im im_caps presence presence_caps lync lync_im lync_guard registration; do
      run "$m socket tests, server on PostgreSQL" "${pg_env[@]}" SWITCHBOARD_TEST_SERVER_STORE=postgres \
        cargo test -p switchboard --test it --locked --no-fail-fast "$m::"
    done
  fi
else
  PG_URL=
  step "store conformance and CLI on PostgreSQL"; echo "--- FAILED: no PostgreSQL cluster"
  failed+=("store conformance and CLI on PostgreSQL")
fi

# 4. Real clients nobody here wrote.
export SWITCHBOARD_BIN="$ROOT/target/debug/switchboard"
run "SIPp scenarios (UDP, TCP)" timeout 600 tests/sipp/run.sh
for t in udp tcp tls; do
  run "baresip over $t" timeout 300 python3 tests/interop/baresip_im.py "$t"
done
run "linphonec with baresip" timeout 300 python3 tests/interop/linphonec_im.py
run "presence: linphonec and baresip watch a SIPp device" timeout 300 python3 tests/interop/presence.py
run "pidgin-sipe NTLM sign-in (Lync dialect)" timeout 300 python3 tests/interop/sipe_signin.py
run "pidgin-sipe presence and IM with pidgin-sipe and baresip" timeout 300 python3 tests/interop/sipe_lync.py
run "pidgin-sipe conference (C3P) with pidgin-sipe and baresip, and bridged IM" timeout 300 python3 tests/interop/sipe_conference.py
# The same presence and IM among pidgin-sipe, baresip and linphonec, the server and its CLI on
# PostgreSQL (a database of its own on the cluster of step 3b).
if [ -n "$PG_URL" ]; then
  run "pidgin-sipe, baresip and linphonec: presence and IM, server on PostgreSQL" \
    env SB_TEST_PG_URL="$PG_URL" timeout 300 python3 tests/interop/sipe_lync.py
  # An Enterprise pool: three front ends (127.0.0.2-4) on one database of that cluster, the
  # same clients each signed in to a different one, and one of them killed.
  run "real clients on three front ends of a pool" \
    env SB_TEST_PG_URL="$PG_URL" timeout 300 python3 tests/interop/pool_clients.py
fi
"$ROOT/scripts/pg-cluster.sh" stop "$PG_DIR"

# 5. Attacked from outside: every attack class, then the victim's health.
run "hostile suite (attackers 127.0.0.2+, victim 127.0.0.1)" timeout 600 python3 tests/hostile/hostile.py

echo
if ((${#failed[@]})); then
  for w in "${why[@]}"; do echo "--- $w"; done
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all tests passed"
