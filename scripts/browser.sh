#!/usr/bin/env bash
# Make sure a Chromium is there for the browser tests (tests/test_browser.py); safe to run any
# number of times.
#
#   bash scripts/browser.sh
#
# Playwright drives the system's Chromium (CHROMIUM, default /usr/bin/chromium); it never
# downloads a browser of its own (`playwright install` is never run). When it is missing,
# installs Debian's `chromium` package with apt-get (needs root).
#
# Prints one line saying what it did; exits non-zero with a reason when it cannot.

set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") is there"
    exit 0
fi
if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "browser.sh: error: no Chromium at $CHROMIUM (CHROMIUM)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser.sh: error: no $CHROMIUM, and apt-get as root is needed to install it" >&2
    exit 1
fi
log=/tmp/browser-install.log
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
    >"$log" 2>&1; then
    # A machine whose package lists are stale or empty: refresh them once and try again.
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends chromium; } >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "browser.sh: error: apt-get could not install chromium (log: $log)" >&2
        exit 1
    fi
fi
echo "browser.sh: installed $("$CHROMIUM" --version)"
