#!/usr/bin/env bash
# Runs every check and every test of chat-apps, setting up what they need.
#
#   scripts/test.sh                      # lint + the whole test suite
#   scripts/test.sh -- ARGS...           # lint + `cargo test --locked --no-fail-fast ARGS...`
#   scripts/test.sh --no-lint [-- ARGS...]   # the tests only
#
# Needs a Rust toolchain (rustup) and a C compiler (SQLite and librdkafka
# are built from source by their crates). The suite talks to real servers:
# before cargo runs, scripts/services.sh starts a throwaway PostgreSQL,
# Redis and Apache Kafka broker (KRaft, one node, the compose file's
# settings) on free loopback ports, with their data in a temporary
# directory, and exports
#
#   CHAT_TEST_POSTGRES_URL  CHAT_TEST_REDIS_URL  CHAT_TEST_REDIS_SERVER
#   CHAT_TEST_KAFKA_BROKERS CHAT_TEST_JAVA       CHAT_TEST_KAFKA_JARS
#
# PostgreSQL, Redis, Java 17+ and Maven come from Debian's packages,
# installed with apt-get (through sudo when not root) when missing. The
# broker's jars (43 MB) are copied from Maven Central by Maven once (about
# 12 s), then cached in ~/.cache/chat-apps/kafka-VERSION; the broker starts
# in 4-8 s (up to about 25 s on a loaded machine). The HTTP API is checked against its OpenAPI document with
# schemathesis: CHAT_TEST_SCHEMATHESIS names its executable if set, else it
# is installed with pip from PyPI into a virtualenv in the same temporary
# directory (needs python3 with venv; Debian's python3-venv is installed
# with apt-get when missing). Everything is stopped and deleted on exit,
# also on failure or ctrl-c. The exit code is that of the first failing
# check, or of cargo test; the last line printed is `N passed, M failed`,
# the tests of every test binary added up.
set -euo pipefail
cd "$(dirname "$0")/.."

# The schemathesis release the OpenAPI test is known to pass with.
SCHEMATHESIS_VERSION=4.32.5

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }

lint=1
test_args=(--workspace)
while (($#)); do
  case $1 in
    --no-lint) lint=0 ;;
    --)
      shift
      (($#)) && test_args=("$@")
      break
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup (https://rustup.rs)"
need cc "install a C compiler (Debian: apt-get install build-essential)"
need make "install make (Debian: apt-get install build-essential); librdkafka is built with it"

svc_dir=$(mktemp -d "${TMPDIR:-/tmp}/chat-apps-test.XXXXXX")
# World-traversable, so that PostgreSQL (run as the postgres user when we
# are root) can keep its data in it.
chmod 755 "$svc_dir"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Teardown must finish even when stdout is gone (`| tee` stopped by
  # ctrl-c): ignore SIGPIPE and failed writes from here on.
  trap '' PIPE
  set +e
  echo "== stopping the test services" 2>/dev/null
  bash scripts/services.sh stop "$svc_dir" || rc=1
  rm -rf "$svc_dir"
  # The last line of every run: what the tests did.
  echo "${summary:-0 passed, 0 failed (no test ran)}" 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== starting PostgreSQL, Redis and Apache Kafka on loopback"
bash scripts/services.sh start "$svc_dir" postgres redis kafka
# shellcheck disable=SC1091 # written by services.sh start
. "$svc_dir/env"
for var in CHAT_TEST_POSTGRES_URL CHAT_TEST_REDIS_URL CHAT_TEST_REDIS_SERVER \
  CHAT_TEST_KAFKA_BROKERS CHAT_TEST_JAVA CHAT_TEST_KAFKA_JARS; do
  echo "   $var=${!var}"
done

if [[ -z ${CHAT_TEST_SCHEMATHESIS:-} ]]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION (pip, into a virtualenv)"
  need python3 "install Python 3 (Debian: apt-get install python3 python3-venv)"
  venv=$svc_dir/schemathesis
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    # For svc_apt_install.
    # shellcheck source=scripts/services.sh
    . scripts/services.sh
    svc_apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
  export CHAT_TEST_SCHEMATHESIS=$venv/bin/schemathesis
fi
echo "   CHAT_TEST_SCHEMATHESIS=$CHAT_TEST_SCHEMATHESIS"

if ((lint)); then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check

  echo "== cargo clippy (warnings are errors)"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "== cargo test"
# The output goes to the terminal and to a log, whose `test result:` lines
# (one per test binary) add up to the summary printed last.
set +e
cargo test --locked --no-fail-fast "${test_args[@]}" 2>&1 | tee "$svc_dir/cargo-test.log"
test_rc=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' \
  "$svc_dir/cargo-test.log")
if ((test_rc != 0 && failed == 0)); then
  # A test binary that did not build or crashed reports no result line.
  echo "error: cargo test failed (exit $test_rc) outside any test; see above" >&2
  failed=1
fi
summary="$passed passed, $failed failed"
exit "$test_rc"
