#!/usr/bin/env bash
# Install cmr-synth on a fresh machine with Python 3.11 and pip (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# torchcfm's own dependency (torchdyn) drags in torchvision and a CUDA torch: install it alone.
python -m pip install -q --no-deps torchcfm==1.0.7
python -m pip install -q --no-deps -e common
# Headless Chromium (Debian's package) renders the report card in its test; without root or apt the test skips.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null \
    || echo "note: chromium could not be installed; the report card's browser test will be skipped"
fi
