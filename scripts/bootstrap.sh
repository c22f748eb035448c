#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian packages, a venv in .venv, and the
# pinned Python packages. Safe to run again; does little when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium + ChromeDriver for the draw-a-digit browser test.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "bootstrap: chromium/chromedriver missing (install Debian packages chromium chromium-driver)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.digitlab-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # The CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
