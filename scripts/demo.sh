#!/usr/bin/env bash
# Main job: set up (first time only), then few-shot LiteMedSAM on a generated phantom.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fewsam demo --out "${1:-fewsam_demo}"
