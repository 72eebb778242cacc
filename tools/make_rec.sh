#!/usr/bin/env bash
# Builds RecordIO files for a dataset: tools/make_rec.sh DATASET [--from PATH] [--out DIR] [--force] ...
# Works from any directory and from a fresh clone (creates the project venv on first use).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"

if [ ! -x "$PY" ]; then
    echo "make_rec.sh: no project venv at $ROOT/.venv; creating it with 'make -C $ROOT venv'" >&2
    if ! command -v make >/dev/null; then
        echo "make_rec.sh: error: 'make' is not installed; in $ROOT run" \
             "'python3 -m venv .venv && .venv/bin/pip install -r requirements.txt'" >&2
        exit 1
    fi
    make -C "$ROOT" venv >&2
fi

# -m keeps the caller's working directory, so relative --from/--out paths mean what the user typed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tools.make_rec "$@"
