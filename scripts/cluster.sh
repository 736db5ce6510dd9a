#!/usr/bin/env bash
# A two-server chat-apps cluster on this machine, for trying it out by hand:
# PostgreSQL (the store), Redis (the session registry, and the bus with
# --bus redis), an Apache Kafka broker (the bus with --bus kafka)
# and two chat-server processes, A and B, sharing them.
#
#   scripts/cluster.sh up [--bus kafka|redis] [--no-build]
#   scripts/cluster.sh status
#   scripts/cluster.sh down          # stops everything and deletes its data
#
# Servers: A on gRPC 127.0.0.1:50050 / HTTP 127.0.0.1:3000, B on gRPC
# 127.0.0.1:50055 / HTTP 127.0.0.1:3001; a port that is taken is replaced
# by a free one (`up` and `status` print the ones in use). State (pids,
# ports, logs, data) lives in ${CHAT_CLUSTER_DIR:-/tmp/chat-apps-cluster}.
# The services come from scripts/services.sh (see there for what it
# installs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/services.sh
. "$root/scripts/services.sh"

dir=${CHAT_CLUSTER_DIR:-/tmp/chat-apps-cluster}
NODES=(a b)
declare -A DEFAULT_GRPC=([a]=50050 [b]=50055) DEFAULT_HTTP=([a]=3000 [b]=3001)

say() { echo "cluster: $*" >&2 || true; }
die() { echo "cluster: error: $*" >&2 || true; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

# A port for a server: the wanted one if it is free, else a free one.
pick_port() {
  if svc_port_usable "$1"; then
    svc_take_port "$1"
    SVC_PORT=$1
  else
    svc_free_port
    say "port $1 is taken; using $SVC_PORT instead"
  fi
}

node_pid() { cat "$dir/node-$1.pid" 2>/dev/null || true; }

node_running() {
  local pid
  pid=$(node_pid "$1")
  [[ -n $pid ]] && svc_pid_matches "$pid" chat-server
}

anything_running() {
  local n
  for n in "${NODES[@]}"; do node_running "$n" && return 0; done
  [[ -d $dir/services ]] && svc_running "$dir/services"
}

stop_all() {
  local n pid
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    if [[ -n $pid ]]; then
      svc_kill_pid "$pid" chat-server 15
    fi
    rm -rf "$dir/node-$n" "$dir/node-$n.pid" "$dir/node-$n.log"
  done
  if [[ -d $dir/services ]]; then
    bash "$root/scripts/services.sh" stop "$dir/services"
    rmdir "$dir/services" 2>/dev/null || true
  fi
  rm -f "$dir/cluster.env"
  rmdir "$dir" 2>/dev/null || true
}

cmd_up() {
  local bus=kafka build=1
  while (($#)); do
    case $1 in
      --bus)
        (($# >= 2)) || die "--bus needs a value: kafka or redis"
        bus=$2
        shift
        ;;
      --bus=*) bus=${1#--bus=} ;;
      --no-build) build=0 ;;
      *) die "unknown option '$1' (see scripts/cluster.sh --help)" ;;
    esac
    shift
  done
  [[ $bus == kafka || $bus == redis ]] || die "--bus must be kafka or redis, not '$bus'"

  if anything_running; then
    cmd_status
    die "the cluster in $dir is already up: 'scripts/cluster.sh down' first"
  fi
  stop_all # leftovers of a cluster that died

  local target=${CARGO_TARGET_DIR:-$root/target}
  [[ $target == /* ]] || target=$root/$target
  local server=$target/release/chat-server client=$target/release/chat-client
  if ((build)); then
    say "building chat-server and chat-client (release)"
    cargo build --release --locked --bin chat-server --bin chat-client
  fi
  [[ -x $server ]] || die "$server is missing: build it with cargo build --release --bin chat-server"

  mkdir -p "$dir/services"
  chmod 755 "$dir" "$dir/services" 2>/dev/null || true
  local services=(postgres redis)
  [[ $bus == kafka ]] && services+=(kafka)
  local t0=$SECONDS
  trap 'trap "" PIPE; stop_all' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  bash "$root/scripts/services.sh" start "$dir/services" "${services[@]}"
  # shellcheck disable=SC1091 # written by services.sh start
  . "$dir/services/env"

  "$CHAT_SERVICES_PG_BINDIR/createdb" -h 127.0.0.1 -p "$CHAT_SERVICES_POSTGRES_PORT" \
    -U postgres chat || die "could not create the PostgreSQL database 'chat'"
  local pg_url="postgres://postgres@127.0.0.1:$CHAT_SERVICES_POSTGRES_PORT/chat"

  local n pid
  declare -A grpc http
  for n in "${NODES[@]}"; do
    pick_port "${DEFAULT_GRPC[$n]}"
    grpc[$n]=$SVC_PORT
    pick_port "${DEFAULT_HTTP[$n]}"
    http[$n]=$SVC_PORT
  done

  for n in "${NODES[@]}"; do
    local args=(
      --node-id "node-$n"
      --grpc-addr "127.0.0.1:${grpc[$n]}"
      --http-addr "127.0.0.1:${http[$n]}"
      --data-dir "$dir/node-$n/data"
      --store postgres --postgres-url "$pg_url"
      --registry redis --redis-url "$CHAT_TEST_REDIS_URL"
      --bus "$bus"
    )
    [[ $bus == kafka ]] && args+=(--kafka-brokers "$CHAT_TEST_KAFKA_BROKERS")
    mkdir -p "$dir/node-$n/data"
    svc_spawn "$dir/node-$n.pid" "$dir/node-$n.log" "$dir/node-$n" "$server" "${args[@]}"
  done
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    if ! svc_wait_tcp "${http[$n]}" 60 "$pid" || ! svc_wait_tcp "${grpc[$n]}" 10 "$pid" ||
      ! svc_alive "$pid"; then
      svc_log_tail "$dir/node-$n.log"
      die "chat-server $n did not start (log: $dir/node-$n.log)"
    fi
  done
  {
    printf 'BUS=%q\n' "$bus"
    printf 'POSTGRES_URL=%q\nREDIS_URL=%q\n' "$pg_url" "$CHAT_TEST_REDIS_URL"
    [[ $bus == kafka ]] && printf 'KAFKA_BROKERS=%q\n' "$CHAT_TEST_KAFKA_BROKERS"
    for n in "${NODES[@]}"; do
      printf 'GRPC_%s=%q\nHTTP_%s=%q\n' "${n^^}" "${grpc[$n]}" "${n^^}" "${http[$n]}"
    done
  } >"$dir/cluster.env"
  trap - EXIT INT TERM
  say "up in $((SECONDS - t0))s"

  local ha=${http[a]} hb=${http[b]} ga=${grpc[a]} gb=${grpc[b]}
  local rel_client=$client
  [[ $client == "$root"/* ]] && rel_client=${client#"$root"/}
  cat <<EOF

chat-apps cluster is up (bus: $bus). State and logs: $dir
  server A  gRPC 127.0.0.1:$ga  HTTP 127.0.0.1:$ha  log $dir/node-a.log
  server B  gRPC 127.0.0.1:$gb  HTTP 127.0.0.1:$hb  log $dir/node-b.log
  PostgreSQL $pg_url
  Redis      $CHAT_TEST_REDIS_URL
EOF
  [[ $bus == kafka ]] && echo "  Kafka      $CHAT_TEST_KAFKA_BROKERS (Apache Kafka)"
  cat <<EOF

Register two users, one through each server (they share one database):

  curl -X POST 127.0.0.1:$ha/v1/chat-apps/users -d '{"username":"user1","name":"one","phone":"1"}'
  curl -X POST 127.0.0.1:$hb/v1/chat-apps/users -d '{"username":"user2","name":"two","phone":"2"}'

and give each secret to the client (it reads it from stdin and saves it):

  echo SECRET1 | $rel_client --server http://127.0.0.1:$ga login user1
  echo SECRET2 | $rel_client --server http://127.0.0.1:$gb login user2

(or let the client register: $rel_client --server http://127.0.0.1:$ga register user1)

Then chat across the two servers, in two terminals:

  $rel_client --server http://127.0.0.1:$ga --user user1
  $rel_client --server http://127.0.0.1:$gb --user user2

scripts/cluster.sh status shows what runs; scripts/cluster.sh down stops it all.
EOF
}

cmd_status() {
  if [[ ! -d $dir ]]; then
    echo "no cluster in $dir"
    return 0
  fi
  local n pid
  if [[ -f $dir/cluster.env ]]; then
    echo "cluster in $dir: $(grep '^BUS=' "$dir/cluster.env" | sed 's/BUS=/bus /')"
  fi
  for n in "${NODES[@]}"; do
    [[ -f $dir/node-$n.pid ]] || continue
    pid=$(node_pid "$n")
    local ports=""
    if [[ -f $dir/cluster.env ]]; then
      ports="gRPC 127.0.0.1:$(sed -n "s/^GRPC_${n^^}=//p" "$dir/cluster.env")"
      ports+="  HTTP 127.0.0.1:$(sed -n "s/^HTTP_${n^^}=//p" "$dir/cluster.env")"
    fi
    if node_running "$n"; then
      echo "server $n  running  pid $pid  $ports"
    else
      echo "server $n  stopped  (log: $dir/node-$n.log)"
    fi
  done
  [[ -d $dir/services ]] && svc_status "$dir/services"
  return 0
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down)
    stop_all
    say "down"
    ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
