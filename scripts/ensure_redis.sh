#!/usr/bin/env bash
# Make sure a redis-server binary the cluster tests can start is installed.
#
# * Already there (redis-server on PATH, or $REDIS_SERVER): nothing to do.
# * Missing, running as root with apt-get: install Debian's `redis-server` package,
#   without letting it start (or leave running) the system service on port 6379: the
#   tests start their own servers, on free ports, and stop them.
# * Otherwise: say why and exit 0; tests/webrtc/test_cluster*.py then skip with the
#   reason (and fail when CI=true).
#
# Called by `make test` before pytest. Idempotent and quick when Redis is present.
set -u

for candidate in "${REDIS_SERVER:-}" redis-server; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" != "0" ]; then
    echo "ensure_redis: redis-server is missing and we are not root; the cluster tests will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_redis: redis-server is missing and apt-get is not available; the cluster tests will skip" >&2
    exit 0
fi

# Keep the package's service from starting: invoke-rc.d asks policy-rc.d (101: refused).
# An existing policy file is left alone (it is the administrator's).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
fi
cleanup() {
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

echo "ensure_redis: installing Debian's redis-server (a few seconds)..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    if ! apt-get install -y -q --no-install-recommends redis-server >/dev/null; then
        echo "ensure_redis: apt-get install redis-server failed; the cluster tests will skip" >&2
        exit 0
    fi
fi

# Belt and braces: whatever started anyway (systemd without policy-rc.d, say) is stopped
# and disabled, so nothing is left listening on 6379.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then
    service redis-server stop >/dev/null 2>&1 || true
fi
if [ -f /run/redis/redis-server.pid ]; then
    kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
fi

command -v redis-server >/dev/null 2>&1 && echo "ensure_redis: $(redis-server --version 2>/dev/null)" >&2
exit 0
