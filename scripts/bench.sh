#!/usr/bin/env bash
# Runs the benchmark matrix of BENCHMARKS.md with release binaries, each
# scenario RUNS times (default 3), and writes one JSON per run into OUT
# (default bench-results/). Then prints the medians (scripts/bench_summary.py).
#
#   scripts/bench.sh [scenario ...]     # default: all of them
#
# Scenarios: direct ramp idle group history history-pg redis kafka.
# history-pg, redis and kafka need services, named by the environment:
#   CHAT_BENCH_POSTGRES_URL  e.g. postgres://postgres@127.0.0.1:5432/chat_bench
#                            (an empty database; the bench adds users to it)
#   CHAT_BENCH_REDIS_URL     e.g. redis://127.0.0.1:6379/
#   CHAT_BENCH_KAFKA_BROKERS e.g. 127.0.0.1:9092
#   CHAT_BENCH_KAFKA_PID     optional: the broker's pid, whose CPU is reported
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
cargo build --release --locked -p chat-bench -p chat-server
BENCH=target/release/chat-bench
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(direct ramp idle group history history-pg redis kafka)

need() { [ -n "${!1:-}" ] || { echo "scenario $2 needs $1" >&2; exit 2; }; }
cpu_of() { [ -n "${1:-}" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

cluster_args() {  # $1: bus
  echo --spawn 2 --server-arg=--store=postgres "--server-arg=--postgres-url=$CHAT_BENCH_POSTGRES_URL" \
    --server-arg=--registry=redis "--server-arg=--redis-url=$CHAT_BENCH_REDIS_URL" \
    "--server-arg=--redis-prefix=bench$RANDOM:" "--server-arg=--bus=$1"
}

for scenario in "${SCENARIOS[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    json="$OUT/$scenario-$run.json"
    echo "== $scenario, run $run" >&2
    case $scenario in
      direct) $BENCH --spawn 1 --json "$json" direct --pairs 200 --rate 2000 --duration 30 --warmup 5 ;;
      ramp) $BENCH --spawn 1 --json "$json" ramp --pairs 200 --start-rate 2000 --step-rate 2000 --step-secs 5 --max-rate 40000 ;;
      idle) $BENCH --spawn 1 --json "$json" idle --sessions 10000 ;;
      group) $BENCH --spawn 1 --json "$json" group --members 1000 --rate 10 --duration 30 --warmup 5 ;;
      history) $BENCH --spawn 1 --json "$json" history --messages 100000 --page 50 --requests 2000 ;;
      history-pg)
        need CHAT_BENCH_POSTGRES_URL history-pg
        $BENCH --spawn 1 --server-arg=--store=postgres "--server-arg=--postgres-url=$CHAT_BENCH_POSTGRES_URL" \
          --json "$json" history --messages 100000 --page 50 --requests 2000 ;;
      redis)
        need CHAT_BENCH_POSTGRES_URL redis; need CHAT_BENCH_REDIS_URL redis
        # shellcheck disable=SC2046
        $BENCH $(cluster_args redis) --json "$json" direct --pairs 200 --rate 2000 --duration 30 --warmup 5 ;;
      kafka)
        need CHAT_BENCH_POSTGRES_URL kafka; need CHAT_BENCH_REDIS_URL kafka; need CHAT_BENCH_KAFKA_BROKERS kafka
        before=$(cpu_of "${CHAT_BENCH_KAFKA_PID:-}")
        # shellcheck disable=SC2046
        $BENCH $(cluster_args kafka) "--server-arg=--kafka-brokers=$CHAT_BENCH_KAFKA_BROKERS" \
          "--server-arg=--kafka-fetch-wait-ms=${CHAT_BENCH_KAFKA_FETCH_WAIT_MS:-100}" \
          --json "$json" direct --pairs 200 --rate 2000 --duration 30 --warmup 5
        after=$(cpu_of "${CHAT_BENCH_KAFKA_PID:-}")
        echo "{\"broker_cpu_ticks\": $((after - before))}" > "$OUT/$scenario-$run.broker.json" ;;
      *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
  done
done
python3 scripts/bench_summary.py "$OUT"
