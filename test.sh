#!/usr/bin/env bash
# Runs every Shoal test: unit tests of each crate, then the end-to-end suite (fstests), which
# starts real daemons and FUSE mounts. Installs what the machine lacks first (as root).
# Extra arguments go to the test harness, e.g.  ./test.sh rename
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh
# fsx, the File System eXerciser from crates.io, runs against a mount in the suite.
tools="${CARGO_TARGET_DIR:-target}/tools"
[ -x "$tools/bin/fsx" ] || cargo install fsx --version 0.3.2 --locked --quiet --root "$tools"
# The end-to-end tests run the daemons' binaries, so build them first.
cargo build --workspace --bins --quiet
cargo test --workspace --quiet -- "$@"
# The Kubernetes manifests, against the Kubernetes schemas.
bash scripts/validate-deploy.sh
