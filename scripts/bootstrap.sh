#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its development extras into it.
# Idempotent: a second run only re-installs when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing the project and its development tools into .venv"
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -e ".[dev]"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
