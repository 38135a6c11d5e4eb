#!/usr/bin/env bash
# The test command (CI runs exactly this): set up (first time only), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}
# Test files run in parallel, one process per core up to four (pytest-xdist; a file stays in one
# process, so the fixtures a file shares -- a Ray cluster, a filled cache -- are made once): on 2
# cores the suite takes ~12 minutes instead of ~17, its tests spending much of their time starting
# one-threaded processes. Arguments are pytest's (`-n 0` runs in this process alone).
cores=$(nproc 2>/dev/null || echo 1)
workers=$(( cores < 4 ? cores : 4 ))
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest -q "${parallel[@]}" "$@"
