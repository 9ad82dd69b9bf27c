#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, kept entirely inside one directory.
# Usage: scripts/pg-cluster.sh start DIR   initdb into DIR/data, start the server on a free
#                                          loopback port, print its URL on stdout:
#                                          postgres://postgres@127.0.0.1:PORT/postgres
#        scripts/pg-cluster.sh stop DIR    stop the server DIR's postmaster.pid names
#                                          (pg_ctl stop -m fast; then signals if it stays)
#        PG_PORT=N scripts/pg-cluster.sh start DIR   start on port N (a restart of a cluster
#                                          stopped before, on the port its clients know)
# The server binaries come from the Debian `postgresql` package (/usr/lib/postgresql/*/bin,
# the newest), else from PATH. Run as root, the cluster belongs to the `postgres` user
# (initdb refuses root) and DIR is handed to it. Trust authentication, loopback only: no
# password, no other address, the unix socket inside DIR. Nothing outside DIR is written.
# TLS is offered too, with a certificate for 127.0.0.1 from a throwaway authority in
# DIR/tls/ca.crt (what a test trusts to reach it with sslmode=verify-full); plaintext
# stays allowed, and the URL printed asks for none.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
die() { echo "pg-cluster: $*" >&2; exit 1; }
[ $# -eq 2 ] || usage
cmd=$1
case $cmd in
  start) mkdir -p "$2" ;;
  stop) [ -d "$2" ] || exit 0 ;;
  *) usage ;;
esac
DIR=$(cd "$2" && pwd)
DATA=$DIR/data

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  d=$(command -v initdb) || die "no PostgreSQL server binaries (install the postgresql package)"
  dirname "$(readlink -f "$d")"
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The pid in DATA/postmaster.pid, if that process is a postgres serving DATA.
server_pid() {
  local pid
  [ -f "$DATA/postmaster.pid" ] || return 1
  pid=$(head -n 1 "$DATA/postmaster.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DATA" || return 1
  echo "$pid"
}

start() {
  local bin port url
  bin=$(bindir)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user (install the postgresql package)"
    chown postgres: "$DIR"
    chmod 700 "$DIR"
    as_owner test -w "$DIR" || die "the postgres user cannot reach $DIR (a parent is closed to it)"
  fi
  if server_pid >/dev/null; then die "a server already runs in $DIR"; fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale \
      >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    printf '%s\n' \
      "# Written by scripts/pg-cluster.sh: trust, and only on loopback." \
      "local all all trust" \
      "host  all all 127.0.0.1/32 trust" >"$DATA/pg_hba.conf"
    as_owner mkdir -p "$DIR/socket"
  fi
  if [ ! -f "$DIR/tls/server.key" ]; then
    command -v openssl >/dev/null || die "no openssl (install the openssl package)"
    as_owner mkdir -p "$DIR/tls"
    as_owner openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pg-cluster test CA" \
      -keyout "$DIR/tls/ca.key" -out "$DIR/tls/ca.crt" >/dev/null 2>&1 || die "cannot make a test CA"
    as_owner openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$DIR/tls/server.key" -out "$DIR/tls/server.csr" >/dev/null 2>&1 || die "cannot make a key"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$DIR/tls/san.ext"
    as_owner openssl x509 -req -in "$DIR/tls/server.csr" -CA "$DIR/tls/ca.crt" -CAkey "$DIR/tls/ca.key" \
      -CAcreateserial -days 2 -extfile "$DIR/tls/san.ext" -out "$DIR/tls/server.crt" >/dev/null 2>&1 \
      || die "cannot sign the server certificate"
    chmod 600 "$DIR/tls/server.key"
  fi
  # The port is free when picked and may be taken before the server binds it: try again.
  for _ in 1 2 3; do
    port=${PG_PORT:-$(free_port)}
    if as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$DIR/socket -c ssl=on -c ssl_cert_file=$DIR/tls/server.crt -c ssl_key_file=$DIR/tls/server.key" \
      >/dev/null; then
      url="postgres://postgres@127.0.0.1:$port/postgres"
      echo "$url"
      return 0
    fi
  done
  tail -n 20 "$DIR/server.log" >&2 || true
  die "the server did not start"
}

stop() {
  local bin pid
  pid=$(server_pid) || return 0
  bin=$(bindir)
  as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  for sig in QUIT KILL; do
    kill -0 "$pid" 2>/dev/null || return 0
    kill -s "$sig" "$pid" 2>/dev/null || true
    sleep 2
  done
  ! kill -0 "$pid" 2>/dev/null || die "postgres $pid is still running"
}

"$cmd"
