#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ against the Kubernetes API schemas
# (kubernetes-validate from PyPI, in a virtualenv under target/tools; strict: unknown fields
# are errors). Part of ./test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/tools/kubernetes-validate"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --kubernetes-version 1.30.0 --strict deploy/*.yaml
