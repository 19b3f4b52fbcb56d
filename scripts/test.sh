#!/usr/bin/env bash
# Install the project and run the whole test suite, store tests on SQLite and a throwaway PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,dev
# The dashboard test drives Debian's Chromium; install it where we can (root with apt), else it skips.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "chromium could not be installed: the browser test skips" >&2
fi
pgdir=$(mktemp -d)
trap 'bash scripts/pg-throwaway.sh stop "$pgdir"' EXIT
if pg_env=$(bash scripts/pg-throwaway.sh start "$pgdir"); then eval "$pg_env"; else echo "PostgreSQL unavailable: its tests skip" >&2; fi
# Lint first (pyflakes, import order, bugbear; pyproject.toml [tool.ruff]): seconds, and a failure names the line.
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
