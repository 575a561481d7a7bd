#!/usr/bin/env bash
# Run part of the test suite against a broker the suite did not start (docs/development.md):
# a second, password-protected Mosquitto started here, outside pytest, and stopped on exit.
#   bash scripts/external_broker_tests.sh [-x -q ...]           # the CI subset (+ options)
#   bash scripts/external_broker_tests.sh tests/mqtt -x         # other tests: paths first
# To use a broker of your own instead, set BROKER_AGENT_TEST_BROKER_URL and run pytest directly.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null 2>&1 || export PATH="$PATH:/usr/sbin"

work=$(mktemp -d)
port=$(.venv/bin/python -c 'from broker_agent.broker.process import free_port; print(free_port())')
password=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(12))')
mosquitto_passwd -b -c "$work/passwd" ci-tester "$password" >/dev/null
# the project's config (queue limits, TCP_NODELAY), with a password-only listener of its own
grep -vE '^(listener|allow_anonymous|persistence_location)' mosquitto.conf > "$work/mosquitto.conf"
cat >> "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous false
password_file $work/passwd
persistence false
CONF
[ "$(id -u)" -ne 0 ] || echo "user root" >> "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

if [ $# -eq 0 ] || [[ "$1" == -* ]]; then
    # the CI subset (plus any options given): tests that only connect and take their topics
    # from broker.root, kept small (the full suite ran just before)
    set -- tests/mqtt tests/fleet/test_publisher.py tests/fleet/test_config_command.py \
        -m "not slow" "$@"
fi
echo "external-broker pass: mqtt://ci-tester:***@127.0.0.1:$port" >&2
BROKER_AGENT_TEST_BROKER_URL="mqtt://ci-tester:$password@127.0.0.1:$port" \
    .venv/bin/python -m pytest -p no:cacheprovider "$@"
