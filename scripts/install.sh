#!/usr/bin/env bash
# Install cmr-synth on a fresh machine with Python 3.11 and pip (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# torchcfm's own dependency (torchdyn) drags in torchvision and a CUDA torch: install it alone.
python -m pip install -q --no-deps torchcfm==1.0.7
python -m pip install -q --no-deps -e common
