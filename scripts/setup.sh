#!/usr/bin/env bash
# Create .venv and install the project with the given extras (default: train,dev).
# torch is pinned through constraints/ci.txt to the CPU wheel these machines carry; on a GPU box
# install your CUDA torch first and run: pip install -e ".[train]"
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-train,dev}
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/ci.txt -e ".[${extras}]"
