#!/usr/bin/env bash
# Runs every Shoal test: unit tests of each crate, then the end-to-end suite (fstests), which
# starts real daemons and FUSE mounts. Installs what the machine lacks first (as root).
# Extra arguments go to the test harness, e.g.  ./test.sh rename
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh
# The end-to-end tests run the daemons' binaries, so build them first.
cargo build --workspace --bins --quiet
cargo test --workspace --quiet -- "$@"
