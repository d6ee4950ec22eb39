#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its development extras into it,
# on Django 5.2 (LTS). Where a Python 3.12 or newer can be found, also .venv-django6: the same
# on the newest Django 6.x, which needs Python 3.12 (scripts/test runs a pass on it).
# Idempotent: a second run only re-installs when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# install VENV PYTHON [REQUIREMENT...]: the project and its development tools into VENV.
install() {
    local venv=$1 python=$2
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    local stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "bootstrap: installing the project and its development tools into $venv"
        local log="$venv/pip-install.log"
        if ! { "$venv/bin/python" -m pip install --upgrade pip &&
               "$venv/bin/python" -m pip install -e ".[dev]" "$@"; } >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "bootstrap: pip install failed (full log: $log)" >&2
            exit 1
        fi
        rm -f "$venv"/.installed-*
        touch "$stamp"
    fi
}

# The first Python 3.12 or newer on PATH or under pyenv; nothing when there is none.
python_for_django6() {
    local candidate
    for candidate in python3.12 python3.13 "$HOME"/.pyenv/versions/3.12*/bin/python \
        "$HOME"/.pyenv/versions/3.13*/bin/python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

install .venv "${PYTHON:-python3}"
if python6=$(python_for_django6) && [ -n "$python6" ]; then
    install .venv-django6 "$python6" "Django>=6.1,<6.2"
fi
