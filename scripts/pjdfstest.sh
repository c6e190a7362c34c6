#!/usr/bin/env bash
# Runs pjdfstest (the Rust port, from crates.io) against Shoal, and against a local directory as
# a control, and prints both summaries. As root (the suite switches users and creates devices).
#
#   scripts/pjdfstest.sh [MOUNTPOINT] [-- TEST_PATTERNS...]
#
# Without MOUNTPOINT it starts a cluster of its own in a temporary directory and stops it after.
# Installs libacl1-dev (apt), pjdfstest (into target/tools) and the `tests` user when missing.
# Exits non-zero when any test fails on Shoal.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "pjdfstest.sh: run as root (the suite switches users and makes device nodes)" >&2
  exit 1
fi

mnt=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  mnt=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
patterns=("$@")

if ! dpkg-query -W -f='${Status}' libacl1-dev 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libacl1-dev acl >&2
fi
tool=$root/target/tools/bin/pjdfstest
if [ ! -x "$tool" ]; then
  cargo install pjdfstest --version 0.2.2 --locked --root "$root/target/tools"
fi
id tests >/dev/null 2>&1 || echo 'tests:x:::pjdfstest dummy user:/:/usr/sbin/nologin' | newusers
nobody_group=$(id -gn nobody)

work=$(mktemp -d /tmp/shoal-pjdfstest-XXXXXX)
cleanup() {
  if [ -n "${own_cluster:-}" ]; then
    "$root/target/debug/shoal" down --data "$work/data" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/pjdfstest.toml" <<EOF
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
# Longer than the coarsest timestamp step of the local control (ext4: a jiffy).
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [
   ["nobody", "$nobody_group"],
   ["tests", "tests"],
]
EOF

if [ -z "$mnt" ]; then
  cargo build --workspace --bins --quiet
  mnt=$work/mnt
  own_cluster=1
  "$root/target/debug/shoal" up --data "$work/data" --mount "$mnt" --detach >&2
fi

# pjdfstest 0.2.2 overflows building its longest path when the directory it is given has a
# length of 4073 - 127k characters; pick a run directory whose length avoids that.
rundir() {
  local d=$1/pjdfstest-run
  if [ $(((4073 - ${#d}) % 127)) -eq 0 ]; then d=$d-x; fi
  mkdir -p "$d"
  chmod 777 "$d"
  echo "$d"
}

# A second filesystem for the EXDEV cases: local disk for the mount, tmpfs for the control.
second=$(mktemp -d /dev/shm/shoal-pjdfstest-XXXXXX 2>/dev/null || mktemp -d)
trap 'cleanup; rm -rf "$second"' EXIT
mkdir -p "$work/second"

run() {
  local label=$1 dir=$2 other=$3
  echo "== pjdfstest on $label ($dir)" >&2
  (cd "$dir" && "$tool" -c "$work/pjdfstest.toml" -p "$dir" -s "$other" ${patterns[@]+"${patterns[@]}"}) \
    > "$work/$label.log" 2>&1 || true
  grep -E "FAILED" "$work/$label.log" >&2 || true
  grep -E "^Summary" "$work/$label.log" | tail -1 | sed "s/^/$label: /"
}

chmod 755 "$work"
mkdir -p "$work/local"
run local "$(rundir "$work/local")" "$second"
run shoal "$(rundir "$mnt")" "$work/second"
! grep -qE "FAILED" "$work/shoal.log"
