#!/usr/bin/env bash
# Checks the running API against its own OpenAPI document with schemathesis (from PyPI):
# a real `mlaudit serve` with authentication on a free loopback port, every documented
# operation fuzzed with schema-valid and schema-violating requests (all checks), every
# response checked against the document. Settings: scripts/schemathesis.toml.
#
# Two runs: every operation but the token changes (admin token; POST /v1/events with a writer
# token), then PUT/DELETE /v1/tokens/{name} alone with a second admin token, so that a fuzzed
# revocation or demotion can never turn the rest of the run into silent 401s. After each run
# its tokens must still work; if not, the run's results would be hollow and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for attempt in 1 2 3; do
  python3 -m pip install --quiet --disable-pip-version-check schemathesis && break
  [ "$attempt" -eq 3 ] && { echo "contract-test: cannot install schemathesis" >&2; exit 1; }
  sleep 5
done
cargo build --release -p mlaudit
bin=$root/target/release/mlaudit
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
"$bin" --data "$data/log" init --origin contract.test >/dev/null
token() { "$bin" --data "$data/log" token create --role "$1" --name "$2" 2>/dev/null | tail -1; }
admin=$(token admin contract-admin)
writer=$(token writer contract-writer)
token_admin=$(token admin contract-token-admin)
# The CloudEvents receiver takes ?token= (as KServe's logger needs), so that its query
# parameter is documented and fuzzed like any other.
printf '[integrations.cloudevents]\nquery_token = true\n' >"$data/mlaudit.toml"
"$bin" --data "$data/log" serve --listen "127.0.0.1:$port" --config "$data/mlaudit.toml" 2>"$data/serve.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
for i in $(seq 100); do
  curl -sf "$base/healthz" >/dev/null && break
  [ "$i" -eq 100 ] && { echo "contract-test: the server did not come up" >&2; cat "$data/serve.log" >&2; exit 1; }
  sleep 0.1
done

still_valid() { # token, what it must still reach
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$base$2")
  [ "$code" = 200 ] || { echo "contract-test: a token of the run no longer works (GET $2: $code); its results are not trustworthy" >&2; exit 1; }
}

# A fixed seed keeps CI deterministic; set SCHEMATHESIS_SEED to explore other inputs.
# schemathesis writes its caches (.hypothesis, .schemathesis) into the working directory.
st() (cd "$data" && python3 -m schemathesis.cli --config-file "$root/scripts/schemathesis.toml" run "$base/openapi.json" \
  --checks all --max-examples 30 --seed "${SCHEMATHESIS_SEED:-20261127}" "$@")

MLAUDIT_ADMIN_TOKEN=$admin MLAUDIT_WRITER_TOKEN=$writer st --exclude-operation-id setTokenRole --exclude-operation-id revokeToken
still_valid "$admin" /v1/tokens
still_valid "$writer" /v1/checkpoint
MLAUDIT_ADMIN_TOKEN=$token_admin MLAUDIT_WRITER_TOKEN=$writer st --include-operation-id setTokenRole --include-operation-id revokeToken
still_valid "$token_admin" /v1/tokens
