#!/usr/bin/env bash
# Throwaway PostgreSQL, Redis and Apache Kafka instances on free loopback
# ports, with every file under one directory. Used by
# scripts/test.sh and scripts/cluster.sh; usable on its own:
#
#   scripts/services.sh start DIR [postgres] [redis] [kafka]   # default: all three
#   scripts/services.sh stop DIR      # stops them and deletes their data
#   scripts/services.sh status DIR
#
# `start` waits until each service answers, then writes DIR/env, a file of
# `export` lines to source:
#
#   CHAT_TEST_POSTGRES_URL   postgres://postgres@127.0.0.1:PORT/postgres
#   CHAT_TEST_REDIS_URL      redis://127.0.0.1:PORT/
#   CHAT_TEST_REDIS_SERVER   the redis-server binary
#   CHAT_TEST_KAFKA_BROKERS  127.0.0.1:PORT
#   CHAT_TEST_JAVA           the Java runtime the broker runs on
#   CHAT_TEST_KAFKA_JARS     the broker's jars (for tests that run a broker
#                            of their own, to kill and restart it)
#   CHAT_SERVICES_POSTGRES_PORT, CHAT_SERVICES_REDIS_PORT,
#   CHAT_SERVICES_KAFKA_PORT, CHAT_SERVICES_PG_BINDIR
#
# What it needs, and how it gets it when missing:
#   PostgreSQL  Debian's `postgresql` package (apt-get, through sudo when not
#               root); PG_BINDIR may name another directory with initdb,
#               pg_ctl and postgres. As root, the server runs as the
#               `postgres` system user (initdb refuses root).
#   Redis       Debian's `redis-server` package (same way).
#   Kafka       Apache Kafka (version: scripts/kafka/pom.xml), one KRaft node
#               that is its own controller, configured by
#               scripts/kafka/server.properties (the compose file's
#               settings), data under DIR/kafka. Its jars are copied from
#               Maven Central once (43 MB, about 12 s) by `mvn` into
#               ${XDG_CACHE_HOME:-$HOME/.cache}/chat-apps/kafka-VERSION; Java
#               17+ and Maven are Debian's `default-jre-headless` and
#               `maven` (same way) when missing. Starting takes 4-8 s
#               (up to about 25 s on a loaded machine).
#
# Ports are picked at random in 20000-32767 (below Linux's ephemeral range,
# so outgoing connections do not take them) among those that are free; the
# machine's own services on their standard ports are never touched. A
# service that cannot start is an error: its log tail is printed, whatever
# was started is stopped, and the exit code is 1.
#
# This file can also be sourced for its functions (svc_start, svc_stop,
# svc_status, svc_free_port, svc_wait_tcp, ...); sourcing changes no shell
# option.

SVC_READY_SECS=${SVC_READY_SECS:-30}
SVC_TAKEN_PORTS=" "

# Messages never fail: a reader that went away (`| tee` stopped by ctrl-c)
# must not cut a teardown short.
svc_log() { echo "services: $*" >&2 || true; }
svc_die() { echo "services: error: $*" >&2 || true; exit 1; }

# Prints the last lines of a log file, if there is one, to stderr.
svc_log_tail() {
  if [[ -s $1 ]]; then
    echo "---- last lines of $1" >&2
    tail -n 40 "$1" >&2 || true
    echo "----" >&2
  fi
}

svc_is_root() { [[ $(id -u) -eq 0 ]]; }

# svc_apt_install PACKAGE... : installs Debian packages, with sudo when not root.
svc_apt_install() {
  local sudo=()
  command -v apt-get >/dev/null 2>&1 ||
    svc_die "apt-get is not available: install $* yourself"
  if ! svc_is_root; then
    command -v sudo >/dev/null 2>&1 ||
      svc_die "installing $* needs root: run as root, install sudo, or install $* yourself"
    sudo=(sudo)
  fi
  svc_log "installing $* (apt-get)"
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "$@" >&2; then
    svc_log "apt-get install failed; running apt-get update and trying again"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
      ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@" >&2; then
      svc_die "could not install $* with apt-get"
    fi
  fi
}

# ---------------------------------------------------------------- ports

svc_port_is_free() {
  local port=$1
  if [[ -z ${SVC_PORT_CHECK:-} ]]; then
    if command -v python3 >/dev/null 2>&1 && python3 -c '' >/dev/null 2>&1; then
      SVC_PORT_CHECK=python
    elif command -v ss >/dev/null 2>&1; then
      SVC_PORT_CHECK=ss
    else
      SVC_PORT_CHECK=tcp
    fi
  fi
  case $SVC_PORT_CHECK in
    python)
      # Binding (without SO_REUSEADDR) fails if anything, listening or
      # connected, on any local address, holds the port.
      python3 -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
' "$port" 2>/dev/null
      ;;
    ss) [[ -z $(ss -Htan "( sport = :$port )" 2>/dev/null) ]] ;;
    *) ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ;;
  esac
}

# svc_port_usable PORT: free, and not already handed out by this shell.
svc_port_usable() {
  [[ $SVC_TAKEN_PORTS != *" $1 "* ]] && svc_port_is_free "$1"
}

# Reserves PORT for this shell (svc_free_port will not hand it out).
svc_take_port() { SVC_TAKEN_PORTS+="$1 "; }

# Sets SVC_PORT to a free loopback port, different from those already
# handed out by this shell (so call it in this shell, not in $(...)).
svc_free_port() {
  local i port
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
    if svc_port_usable "$port"; then
      svc_take_port "$port"
      SVC_PORT=$port
      return 0
    fi
  done
  svc_die "found no free port in 20000-32767"
}

# svc_pid_listens PID PORT: PID holds a listening TCP socket on PORT (so
# that whatever answers on the port is that process, not another one that
# took the port first). True when /proc cannot tell.
svc_pid_listens() {
  local pid=$1 hex inodes inode fd
  [[ -r /proc/net/tcp ]] || return 0
  hex=$(printf ':%04X' "$2")
  inodes=$(awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  for inode in $inodes; do
    for fd in "/proc/$pid"/fd/*; do
      [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
    done
  done
  return 1
}

# svc_wait_tcp PORT SECONDS [PID]: waits until 127.0.0.1:PORT accepts a
# connection (and, given PID, until that process is the one listening);
# gives up early when PID has exited.
svc_wait_tcp() {
  local port=$1 secs=$2 pid=${3:-} deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if [[ -n $pid ]] && ! svc_alive "$pid"; then
      return 1
    fi
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null &&
      { [[ -z $pid ]] || svc_pid_listens "$pid" "$port"; }; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

# svc_alive PID: the process exists and is not a zombie (one that exited
# but that its parent, often init, has not reaped yet).
svc_alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# svc_pid_matches PID PATTERN: the process runs and its command line
# contains PATTERN (guards against killing a recycled pid).
svc_pid_matches() {
  local pid=$1 cmdline
  [[ $pid =~ ^[0-9]+$ ]] && svc_alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
  [[ $cmdline == *"$2"* ]]
}

# svc_kill_pid PID PATTERN [SECONDS]: SIGTERM, wait, then SIGKILL.
svc_kill_pid() {
  local pid=$1 pattern=$2 secs=${3:-10} i
  svc_pid_matches "$pid" "$pattern" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 20; i++)); do
    svc_alive "$pid" || return 0
    sleep 0.05
  done
  svc_log "$pattern (pid $pid) did not stop in ${secs}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    svc_alive "$pid" || return 0
    sleep 0.05
  done
}

# svc_spawn PIDFILE LOG DIR CMD...: runs CMD in the background, in its own
# session (so a ctrl-c in the terminal does not reach it: its owner stops
# it), in DIR, with output to LOG; writes its pid to PIDFILE.
svc_spawn() {
  local pidfile=$1 log=$2 dir=$3 i
  shift 3
  rm -f "$pidfile"
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  # shellcheck disable=SC2016 # expanded by the inner bash
  (cd "$dir" && exec "${setsid[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@") \
    </dev/null >"$log" 2>&1 &
  for ((i = 0; i < 100; i++)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.05
  done
  svc_die "could not start $1"
}

# ---------------------------------------------------------------- PostgreSQL

svc_pg_find_bindir() {
  local d best=""
  if [[ -n ${PG_BINDIR:-} ]]; then
    [[ -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl && -x $PG_BINDIR/pg_isready ]] ||
      svc_die "PG_BINDIR=$PG_BINDIR lacks initdb, pg_ctl or pg_isready"
    echo "$PG_BINDIR"
    return 0
  fi
  while IFS= read -r d; do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres && -x $d/pg_isready ]] && best=$d
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  [[ -n $best ]] || return 1
  echo "$best"
}

svc_pg_bindir() {
  local d
  if d=$(svc_pg_find_bindir); then
    echo "$d"
    return 0
  fi
  svc_apt_install postgresql
  d=$(svc_pg_find_bindir) ||
    svc_die "PostgreSQL installed, but no /usr/lib/postgresql/*/bin has initdb, pg_ctl, postgres and pg_isready"
  echo "$d"
}

# Runs a command as the user that owns the PostgreSQL server: the
# `postgres` system user when we are root, else ourselves.
svc_pg_as() {
  if svc_is_root; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      # shellcheck disable=SC2016 # expanded by the inner shell
      su -s /bin/sh postgres -c 'exec "$0" "$@"' "$@"
    fi
  else
    "$@"
  fi
}

svc_postgres_start() {
  local dir=$1 bindir pgdir port attempt ok=""
  bindir=$(svc_pg_bindir) || exit 1
  if svc_is_root; then
    id postgres >/dev/null 2>&1 ||
      svc_die "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as"
  fi
  # The server's directory holds its data, log and Unix socket. It must be
  # reachable by the server's user and short enough for a socket path;
  # otherwise it goes to a directory of its own under /tmp.
  pgdir=$dir/postgres
  mkdir -p "$pgdir"
  svc_is_root && chown postgres: "$pgdir"
  if ((${#pgdir} > 80)) || ! svc_pg_as test -w "$pgdir" 2>/dev/null; then
    rm -rf "$pgdir"
    pgdir=$(mktemp -d /tmp/chat-apps-pg.XXXXXX)
    svc_is_root && chown postgres: "$pgdir"
  fi
  echo "$pgdir" >"$dir/postgres.dir"
  echo "$bindir" >"$dir/postgres.bindir"

  if ! (cd "$pgdir" && svc_pg_as "$bindir/initdb" -D "$pgdir/data" -U postgres \
    --auth=trust --encoding=UTF8 --no-locale --no-sync) >"$dir/postgres-initdb.log" 2>&1; then
    svc_log_tail "$dir/postgres-initdb.log"
    svc_die "PostgreSQL: initdb failed"
  fi

  for attempt in 1 2 3; do
    svc_free_port
    port=$SVC_PORT
    echo "$port" >"$dir/postgres.port"
    rm -f "$pgdir/postgres.log"
    if (cd "$pgdir" && svc_pg_as "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" \
      -w -t "$SVC_READY_SECS" -o "-c listen_addresses=127.0.0.1 -p $port -k '$pgdir' \
      -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
      -c max_connections=300" start) >"$dir/postgres-ctl.log" 2>&1; then
      ok=1
      break
    fi
    if grep -qs 'already in use' "$pgdir/postgres.log"; then
      svc_log "PostgreSQL: port $port was taken meanwhile; trying another (attempt $attempt)"
      continue
    fi
    break
  done
  if [[ -n $ok ]]; then
    ok=""
    local deadline=$((SECONDS + SVC_READY_SECS))
    while ((SECONDS < deadline)); do
      if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
        ok=1
        break
      fi
      sleep 0.2
    done
  fi
  if [[ -z $ok ]]; then
    svc_log_tail "$dir/postgres-ctl.log"
    svc_log_tail "$pgdir/postgres.log"
    svc_die "PostgreSQL did not start on 127.0.0.1:$port (waited at most ${SVC_READY_SECS}s; log above)"
  fi
  svc_log "PostgreSQL $(basename "$(dirname "$bindir")") ready on 127.0.0.1:$port (data in $pgdir)"
}

svc_postgres_stop() {
  local dir=$1 pgdir bindir pid
  [[ -f $dir/postgres.dir ]] || return 0
  pgdir=$(<"$dir/postgres.dir")
  bindir=$(<"$dir/postgres.bindir")
  if [[ -f $pgdir/data/postmaster.pid ]]; then
    pid=$(head -n 1 "$pgdir/data/postmaster.pid")
    if ! (cd "$pgdir" && svc_pg_as "$bindir/pg_ctl" -D "$pgdir/data" -m fast -w -t 20 stop) \
      >/dev/null 2>&1; then
      (cd "$pgdir" && svc_pg_as "$bindir/pg_ctl" -D "$pgdir/data" -m immediate -w -t 10 stop) \
        >/dev/null 2>&1 || true
    fi
    svc_kill_pid "$pid" postgres 5
  fi
  # Only ever delete a directory this script made.
  if [[ $pgdir == "$dir/postgres" || $pgdir == /tmp/chat-apps-pg.* ]]; then
    rm -rf "$pgdir"
  fi
  rm -f "$dir/postgres.dir" "$dir/postgres.bindir" "$dir/postgres.port" \
    "$dir/postgres-initdb.log" "$dir/postgres-ctl.log"
}

# ---------------------------------------------------------------- Redis

svc_redis_bin() {
  local bin
  if ! bin=$(command -v redis-server) || ! command -v redis-cli >/dev/null 2>&1; then
    svc_apt_install redis-server redis-tools
    bin=$(command -v redis-server) || svc_die "redis-server installed but not on PATH"
  fi
  echo "$bin"
}

svc_redis_start() {
  local dir=$1 bin rdir port attempt pid="" ok=""
  bin=$(svc_redis_bin) || exit 1
  echo "$bin" >"$dir/redis.bin"
  rdir=$dir/redis
  mkdir -p "$rdir"
  for attempt in 1 2 3; do
    svc_free_port
    port=$SVC_PORT
    echo "$port" >"$dir/redis.port"
    rm -f "$rdir/redis.pid" "$rdir/redis.log"
    if "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --dir "$rdir" --pidfile "$rdir/redis.pid" \
      --logfile "$rdir/redis.log" </dev/null >"$dir/redis-start.log" 2>&1; then
      local deadline=$((SECONDS + SVC_READY_SECS))
      while ((SECONDS < deadline)); do
        [[ -s $rdir/redis.pid ]] && pid=$(<"$rdir/redis.pid")
        if [[ -n $pid && $(timeout 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] &&
          svc_pid_listens "$pid" "$port"; then
          ok=1
          break
        fi
        if [[ -n $pid ]] && ! svc_alive "$pid"; then break; fi
        if [[ -z $pid ]] && grep -qs 'already in use' "$rdir/redis.log"; then break; fi
        sleep 0.1
      done
    fi
    [[ -n $ok ]] && break
    if grep -qs 'already in use' "$rdir/redis.log"; then
      svc_log "Redis: port $port was taken meanwhile; trying another (attempt $attempt)"
      [[ -n $pid ]] && svc_kill_pid "$pid" redis-server 5
      pid=""
      continue
    fi
    break
  done
  if [[ -z $ok ]]; then
    svc_log_tail "$dir/redis-start.log"
    svc_log_tail "$rdir/redis.log"
    svc_die "Redis did not start on 127.0.0.1:$port (waited at most ${SVC_READY_SECS}s; log above)"
  fi
  svc_log "Redis ready on 127.0.0.1:$port"
}

svc_redis_stop() {
  local dir=$1 rdir=$1/redis pid
  [[ -f $dir/redis.port || -d $rdir ]] || return 0
  if [[ -s $rdir/redis.pid ]]; then
    pid=$(<"$rdir/redis.pid")
    svc_kill_pid "$pid" redis-server 10
  fi
  rm -rf "$rdir"
  rm -f "$dir/redis.port" "$dir/redis.bin" "$dir/redis-start.log"
}

# ---------------------------------------------------------------- Kafka

svc_kafka_files() { (cd "$(dirname "${BASH_SOURCE[0]}")/kafka" && pwd); }

# The Apache Kafka version: the one property of scripts/kafka/pom.xml that
# names it (deploy/docker-compose.yml runs the same one).
svc_kafka_version() {
  local v
  v=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' "$(svc_kafka_files)/pom.xml")
  [[ -n $v ]] || svc_die "no <kafka.version> in $(svc_kafka_files)/pom.xml"
  echo "$v"
}

svc_kafka_cache() {
  echo "${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/chat-apps/kafka-$(svc_kafka_version)"
}

# Prints the path of a Java 17+ runtime, installing Debian's when missing.
svc_java_bin() {
  local bin major
  if bin=$(command -v java); then
    major=$("$bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
    if [[ -n $major ]] && ((major >= 17)); then
      echo "$bin"
      return 0
    fi
  fi
  svc_apt_install default-jre-headless
  bin=$(command -v java) || svc_die "Java installed but not on PATH"
  echo "$bin"
}

# Prints the directory of the broker's jars, copying them from Maven
# Central once (Debian's `maven` is installed when missing).
svc_kafka_jars() {
  local cache version tmp
  version=$(svc_kafka_version) || exit 1
  cache=$(svc_kafka_cache)
  if [[ -f $cache/jars/.complete ]]; then
    echo "$cache/jars"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || svc_apt_install maven
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/jars.XXXXXX")
  svc_log "fetching Apache Kafka $version's jars with Maven (once; kept in $cache)"
  if ! mvn -q -B -Dstyle.color=never -f "$(svc_kafka_files)/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" >"$cache/mvn.log" 2>&1 ||
    [[ ! -f $tmp/kafka_2.13-$version.jar ]]; then
    rm -rf "$tmp"
    svc_log_tail "$cache/mvn.log"
    svc_die "Maven could not fetch Apache Kafka $version's jars (log above)"
  fi
  touch "$tmp/.complete"
  rm -rf "$cache/jars"
  mv "$tmp" "$cache/jars"
  echo "$cache/jars"
}

# A KRaft cluster id: 16 random bytes in URL-safe base64 without padding
# (22 characters), not starting with '-' (Kafka's own random ids avoid it:
# a command line would take it for an option).
svc_kafka_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  echo "$id"
}

svc_kafka_start() {
  local dir=$1 java jars files kdir port cport attempt pid ok="" t0 log
  java=$(svc_java_bin) || exit 1
  jars=$(svc_kafka_jars) || exit 1
  files=$(svc_kafka_files)
  echo "$java" >"$dir/kafka.java"
  echo "$jars" >"$dir/kafka.jars"
  kdir=$dir/kafka
  log=$kdir/kafka.log
  for attempt in 1 2 3; do
    rm -rf "$kdir"
    mkdir -p "$kdir"
    svc_free_port
    port=$SVC_PORT
    svc_free_port
    cport=$SVC_PORT
    echo "$port" >"$dir/kafka.port"
    sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@DATA@#$kdir/data#g" \
      "$files/server.properties" >"$kdir/server.properties"
    t0=$SECONDS
    if ! "$java" -cp "$jars/*" kafka.tools.StorageTool format \
      --cluster-id "$(svc_kafka_cluster_id)" --config "$kdir/server.properties" \
      >"$kdir/format.log" 2>&1; then
      svc_log_tail "$kdir/format.log"
      svc_die "Kafka: formatting the broker's storage failed"
    fi
    svc_spawn "$kdir/kafka.pid" "$log" "$kdir" "$java" "@$files/jvm.options" \
      "-Dlog4j2.configurationFile=$files/log4j2.properties" -cp "$jars/*" \
      kafka.Kafka "$kdir/server.properties"
    pid=$(<"$kdir/kafka.pid")
    # Listening is not enough: the broker takes requests once it has
    # registered with its controller, which it logs as "started".
    if svc_wait_tcp "$port" "$SVC_READY_SECS" "$pid"; then
      local deadline=$((SECONDS + SVC_READY_SECS))
      while ((SECONDS < deadline)) && svc_alive "$pid"; do
        if grep -qs 'Kafka Server started' "$log"; then
          ok=1
          break
        fi
        sleep 0.1
      done
    fi
    [[ -n $ok ]] && break
    svc_kill_pid "$pid" kafka.Kafka 5
    if grep -qs 'Address already in use' "$log"; then
      svc_log "Kafka: port $port or $cport was taken meanwhile; trying others (attempt $attempt)"
      continue
    fi
    break
  done
  if [[ -z $ok ]]; then
    svc_log_tail "$log"
    svc_die "Apache Kafka did not start on 127.0.0.1:$port (waited at most ${SVC_READY_SECS}s; log above)"
  fi
  svc_log "Apache Kafka $(svc_kafka_version) ready on 127.0.0.1:$port in $((SECONDS - t0))s (data in $kdir/data)"
}

svc_kafka_stop() {
  local dir=$1 kdir=$1/kafka
  [[ -d $kdir ]] || return 0
  if [[ -s $kdir/kafka.pid ]]; then
    # A clean shutdown of a single-node KRaft broker takes a few seconds.
    svc_kill_pid "$(<"$kdir/kafka.pid")" kafka.Kafka 20
  fi
  rm -rf "$kdir"
  rm -f "$dir/kafka.port" "$dir/kafka.java" "$dir/kafka.jars"
}

# ---------------------------------------------------------------- all

svc_write_env() {
  local dir=$1
  {
    echo "# written by scripts/services.sh start; source it"
    if [[ -f $dir/postgres.port ]]; then
      printf 'export CHAT_TEST_POSTGRES_URL=%q\n' "postgres://postgres@127.0.0.1:$(<"$dir/postgres.port")/postgres"
      printf 'export CHAT_SERVICES_POSTGRES_PORT=%q\n' "$(<"$dir/postgres.port")"
      printf 'export CHAT_SERVICES_PG_BINDIR=%q\n' "$(<"$dir/postgres.bindir")"
    fi
    if [[ -f $dir/redis.port ]]; then
      printf 'export CHAT_TEST_REDIS_URL=%q\n' "redis://127.0.0.1:$(<"$dir/redis.port")/"
      printf 'export CHAT_TEST_REDIS_SERVER=%q\n' "$(<"$dir/redis.bin")"
      printf 'export CHAT_SERVICES_REDIS_PORT=%q\n' "$(<"$dir/redis.port")"
    fi
    if [[ -f $dir/kafka.port ]]; then
      printf 'export CHAT_TEST_KAFKA_BROKERS=%q\n' "127.0.0.1:$(<"$dir/kafka.port")"
      printf 'export CHAT_TEST_JAVA=%q\n' "$(<"$dir/kafka.java")"
      printf 'export CHAT_TEST_KAFKA_JARS=%q\n' "$(<"$dir/kafka.jars")"
      printf 'export CHAT_SERVICES_KAFKA_PORT=%q\n' "$(<"$dir/kafka.port")"
    fi
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

svc_running() {
  local dir=$1
  [[ -f $dir/postgres.dir && -f $(<"$dir/postgres.dir")/data/postmaster.pid ]] && return 0
  [[ -s $dir/redis/redis.pid ]] && svc_pid_matches "$(<"$dir/redis/redis.pid")" redis-server && return 0
  [[ -s $dir/kafka/kafka.pid ]] && svc_pid_matches "$(<"$dir/kafka/kafka.pid")" kafka.Kafka && return 0
  return 1
}

# svc_start DIR [postgres] [redis] [kafka]; exits non-zero (after stopping
# what it started) when a service cannot start.
svc_start() {
  local dir=$1 s t0=$SECONDS
  shift
  (($#)) || set -- postgres redis kafka
  for s in "$@"; do
    case $s in postgres | redis | kafka) ;; *) svc_die "unknown service '$s' (postgres, redis, kafka)" ;; esac
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if svc_running "$dir"; then
    svc_die "services already run from $dir: run '$0 stop $dir' first"
  fi
  # Reach for the binaries (and install what is missing) before starting
  # anything, so that an install failure leaves nothing behind.
  for s in "$@"; do
    case $s in
      postgres) svc_pg_bindir >/dev/null || exit 1 ;;
      redis) svc_redis_bin >/dev/null || exit 1 ;;
      kafka) svc_java_bin >/dev/null && svc_kafka_jars >/dev/null || exit 1 ;;
    esac
  done
  # Whatever happens from here on (a failure, ctrl-c), stop what started.
  # shellcheck disable=SC2064 # expand dir now
  trap "trap '' PIPE; svc_stop '$dir'" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for s in "$@"; do
    "svc_${s}_start" "$dir"
  done
  svc_write_env "$dir"
  trap - EXIT INT TERM
  svc_log "all started in $((SECONDS - t0))s; environment in $dir/env"
}

svc_stop() {
  local dir=$1
  [[ -d $dir ]] || return 0
  svc_kafka_stop "$dir"
  svc_redis_stop "$dir"
  svc_postgres_stop "$dir"
  rm -f "$dir/env" "$dir/env.tmp"
}

svc_status() {
  local dir=$1 pgdir pid
  [[ -d $dir ]] || { echo "nothing in $dir"; return 0; }
  if [[ -f $dir/postgres.dir ]]; then
    pgdir=$(<"$dir/postgres.dir")
    pid=$(head -n 1 "$pgdir/data/postmaster.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && svc_pid_matches "$pid" postgres; then
      echo "postgres  running  pid $pid  127.0.0.1:$(<"$dir/postgres.port")  data $pgdir"
    else
      echo "postgres  stopped"
    fi
  fi
  if [[ -f $dir/redis.port ]]; then
    pid=$(cat "$dir/redis/redis.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && svc_pid_matches "$pid" redis-server; then
      echo "redis     running  pid $pid  127.0.0.1:$(<"$dir/redis.port")"
    else
      echo "redis     stopped"
    fi
  fi
  if [[ -f $dir/kafka.port ]]; then
    pid=$(cat "$dir/kafka/kafka.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && svc_pid_matches "$pid" kafka.Kafka; then
      echo "kafka     running  pid $pid  127.0.0.1:$(<"$dir/kafka.port")  (Apache Kafka)"
    else
      echo "kafka     stopped"
    fi
  fi
}

svc_main() {
  set -euo pipefail
  local cmd=${1:-} dir=${2:-}
  if [[ -z $cmd || -z $dir ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
  fi
  shift 2
  case $cmd in
    start) svc_start "$dir" "$@" ;;
    stop) svc_stop "$dir" ;;
    status) svc_status "$dir" ;;
    *) echo "services: unknown command '$cmd' (start, stop, status)" >&2; exit 2 ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  svc_main "$@"
fi
