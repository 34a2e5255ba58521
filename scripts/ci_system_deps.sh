#!/usr/bin/env bash
# Install the Debian packages some tests need, when missing:
#   prometheus -> promtool  (tests/test_alerts.py, tests/test_dashboards.py)
#   chromium   -> headless browser (tests/test_dagster_ui.py)
# Idempotent and quiet. Under CI=true a tool it cannot install fails the run here (the tests
# needing it would fail anyway: CI does not allow skips); elsewhere it warns and those tests
# skip with their reason.
set -u

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
{ command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    echo "ci_system_deps: promtool and chromium already installed"
    exit 0
fi

warn() {
    if [ "${CI:-}" = "true" ]; then
        echo "ci_system_deps: ERROR: $*; CI=true needs ${need[*]}" >&2
        exit 1
    fi
    echo "ci_system_deps: WARNING: $*; tests needing ${need[*]} will be skipped" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || warn "apt-get not available (not Debian/Ubuntu)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else warn "not root and no passwordless sudo"; fi
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "ci_system_deps: installing ${need[*]}"
if ! timeout 300 $SUDO apt-get update -qq >"$log" 2>&1; then
    tail -5 "$log" >&2
    warn "apt-get update failed (apt unreachable?)"
fi
# --no-install-recommends: promtool and a headless chromium need none of the recommends.
if ! timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >"$log" 2>&1; then
    tail -5 "$log" >&2
    warn "apt-get install ${need[*]} failed"
fi
# The Debian prometheus package starts a server via systemd where there is one: CI only
# needs promtool, and a container has no systemd, so nothing to stop here.
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
{ command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    need=("${missing[@]}")
    warn "still missing after apt-get install: ${missing[*]}"
fi
echo "ci_system_deps: done"
exit 0
