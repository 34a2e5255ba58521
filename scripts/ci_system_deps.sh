#!/usr/bin/env bash
# Install the Debian packages some tests need, when missing:
#   prometheus -> promtool  (tests/test_alerts.py, tests/test_dashboards.py)
#   chromium   -> headless browser (tests/test_dagster_ui.py)
# Idempotent and quiet. Never fails the build: without apt, root or network it prints a
# warning and the tests that need a missing tool skip with their reason.
set -u

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
{ command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    echo "ci_system_deps: promtool and chromium already installed"
    exit 0
fi

warn() { echo "ci_system_deps: WARNING: $*; tests needing ${need[*]} will be skipped" >&2; exit 0; }

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
command -v promtool >/dev/null 2>&1 || echo "ci_system_deps: WARNING: promtool still missing" >&2
[ -x /usr/bin/chromium ] || echo "ci_system_deps: WARNING: chromium still missing" >&2
echo "ci_system_deps: done"
exit 0
