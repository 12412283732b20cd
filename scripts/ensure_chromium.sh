#!/usr/bin/env bash
# Make sure a Chromium the browser test can drive is installed.
#
# * Already there (chromium / chromium-browser on PATH, or $CHROMIUM): nothing to do.
# * Missing, running as root with apt-get: install Debian's `chromium` package.
# * Otherwise: say why and exit 0; tests/webrtc/test_browser.py then skips with the
#   reason (and fails when CI=true).
#
# Called by `make test` before pytest. Idempotent and quick when Chromium is present.
set -u

for candidate in "${CHROMIUM:-}" chromium chromium-browser; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" != "0" ]; then
    echo "ensure_chromium: chromium is missing and we are not root; the browser test will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium is missing and apt-get is not available; the browser test will skip" >&2
    exit 0
fi

echo "ensure_chromium: installing Debian's chromium (about a minute)..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    if ! apt-get install -y -q --no-install-recommends chromium >/dev/null; then
        echo "ensure_chromium: apt-get install chromium failed; the browser test will skip" >&2
        exit 0
    fi
fi
command -v chromium >/dev/null 2>&1 && echo "ensure_chromium: $(chromium --version 2>/dev/null)" >&2
exit 0
