#!/usr/bin/env bash
# Install the project and run the demo on the embedded defaults: no keys, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,dev
.venv/bin/planner demo "$@"
