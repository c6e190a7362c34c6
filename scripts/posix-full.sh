#!/usr/bin/env bash
# The full POSIX run, as root: pjdfstest on Shoal and on a local control (scripts/pjdfstest.sh),
# then the suite's POSIX and file-data checks with long randomized runs (5,000 operations of
# the twin-file test, 20,000 of fsx; set SHOAL_FS_OPS / SHOAL_FSX_OPS to change them, and
# SHOAL_FS_SEED / SHOAL_FSX_SEED to replay a run). `./test.sh` runs the short versions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/pjdfstest.sh
export SHOAL_FS_OPS=${SHOAL_FS_OPS:-5000} SHOAL_FSX_OPS=${SHOAL_FSX_OPS:-20000}
./test.sh posix_ random_operations fsx_ sparse_file statfs
