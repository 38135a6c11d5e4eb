#!/usr/bin/env bash
# The test command (CI runs exactly this): set up (first time only), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}
exec .venv/bin/python -m pytest -q "$@"
