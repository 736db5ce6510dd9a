#!/usr/bin/env bash
# Runs every check and every test of chat-apps, setting up what they need.
#
#   scripts/test.sh            # lint + the whole test suite
#
# Needs only a Rust toolchain (rustup) and a C compiler (SQLite is built
# from source by its crate). Every test talks to real servers that the
# tests start themselves on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup (https://rustup.rs)"
need cc "install a C compiler (Debian: apt-get install build-essential)"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
