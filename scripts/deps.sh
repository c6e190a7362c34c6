#!/usr/bin/env bash
# Installs the system packages Shoal needs to build and run on Debian/Ubuntu:
#   librocksdb-dev — the metadata service's log and state (linked, not built: .cargo/config.toml)
#   libclang-dev  — RocksDB's bindings are generated with bindgen
#   fuse3         — fusermount3 and /etc/fuse.conf for FUSE mounts
#   pkg-config, gcc — build scripts; the suite compiles C in a mount
#   git           — the test suite commits into a Shoal mount
#   python3, python3-venv — the Kubernetes manifests are validated with kubernetes-validate
#   fonts-dejavu-core — shoal-bench run --plot labels its charts with DejaVu Sans
# protoc is not needed: shoal-proto takes it from the protoc-bin-vendored crate.
# Run as root it installs what is missing with apt; otherwise it names what to install.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in librocksdb-dev libclang-dev fuse3 pkg-config gcc git python3 python3-venv fonts-dejavu-core; do
  have_pkg "$p" || need+=("$p")
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "shoal: missing system packages: ${need[*]}" >&2
  echo "shoal: install them with:  sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "shoal: missing system packages: ${need[*]} (no apt-get here; install them with your package manager)" >&2
  exit 1
fi
echo "shoal: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || true
apt-get install -y -qq "${need[@]}" >/dev/null
