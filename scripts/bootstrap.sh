#!/usr/bin/env bash
# Set up everything broker-agent needs on a fresh Debian/Ubuntu machine, idempotently:
# Mosquitto and its clients (apt, when missing), a C compiler for the header tests, Chromium for
# the console's browser tests, and a virtualenv in .venv with the package and its dev tools.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# the console's browser tests (tests/browser) drive Debian's Chromium through Playwright's
# Python driver; Playwright's own browser download does not work on these machines
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH
command -v mosquitto >/dev/null 2>&1 || export PATH="$PATH:/usr/sbin"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "bootstrap: ready (.venv/bin/broker-agent, mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'))" >&2
