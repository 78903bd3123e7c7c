#!/usr/bin/env bash
# Install Debian's chromium for the docs browser test (tests/docs/, driven by Playwright,
# which needs no driver binary and downloads no browser).
# Idempotent: a few ms when both are installed; about 70 s on a fresh machine (apt-get
# update and ~120 MB of packages, ~500 MB on disk). As root it runs apt-get; otherwise it
# uses password-less sudo if there is one, and else explains and exits 1.
set -euo pipefail

# dpkg-query prints one status line per package; all must be "install ok installed".
have_chromium() {
    [[ -x /usr/bin/chromium ]] || return 1
    local st
    st=$(dpkg-query -W -f='${Status}\n' chromium 2>/dev/null) || return 1
    [[ "$st" == "install ok installed" ]]
}

if have_chromium; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null)" >&2
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "chromium is not installed, and installing it needs root." >&2
    echo "Run as root (or with sudo): apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed: $(/usr/bin/chromium --version 2>/dev/null)" >&2
