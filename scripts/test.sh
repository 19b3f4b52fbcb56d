#!/usr/bin/env bash
# Install the project and run the whole test suite, store tests on SQLite and a throwaway PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,dev
pgdir=$(mktemp -d)
trap 'bash scripts/pg-throwaway.sh stop "$pgdir"' EXIT
if pg_env=$(bash scripts/pg-throwaway.sh start "$pgdir"); then eval "$pg_env"; else echo "PostgreSQL unavailable: its tests skip" >&2; fi
.venv/bin/python -m pytest "$@"
