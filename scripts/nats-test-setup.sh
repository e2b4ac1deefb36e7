#!/usr/bin/env bash
# Readies the machine's NATS server (with JetStream) on 127.0.0.1:4222 for the test suite:
# starts it if nothing answers there. Idempotent; the queue tests run it themselves before
# their first connection.
set -euo pipefail
up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! up; then
  echo "nats-test-setup: starting nats-server with JetStream" >&2
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 100); do
    up && break
    sleep 0.1
  done
  up || { echo "nats-test-setup: nats-server did not start (see /var/log/nats-server.log)" >&2; exit 1; }
fi
