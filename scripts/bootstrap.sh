#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian packages, a venv in .venv, and the
# pinned Python packages. Safe to run again; does little when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Chromium + ChromeDriver for the draw-a-digit browser test, hey for the load test, fonts, and
# Fashion-MNIST
# (installed under /usr/share/datasets/fashion-mnist/, where digitlab's resolver looks).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v hey >/dev/null 2>&1 || need+=(hey)  # HTTP load generator of scripts/load_test.py
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
# the TrueType fonts scripts/fit_reject.py draws its training letters with (and its test)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed.ttf ] || need+=(fonts-dejavu-extra)
[ -f /usr/share/fonts/truetype/liberation/LiberationSansNarrow-Regular.ttf ] || need+=(fonts-liberation)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${need[*]} (install them as root)" >&2
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
  .venv/bin/pip install -q -c constraints.txt -e ".[all,test]"
  echo "$want" > "$stamp"
fi
