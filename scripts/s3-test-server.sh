#!/usr/bin/env bash
# Readies an S3-compatible server for the archive tests: moto's server (PyPI `moto[server]`,
# installed into target/s3-venv if missing) on 127.0.0.1:${MLAUDIT_TEST_S3_PORT:-5077},
# started in the background if nothing answers there, then creates each bucket named as an
# argument. moto honours `If-None-Match: *`, so create-only writes are really conditional.
# Idempotent; the tests run it themselves.
#
#   scripts/s3-test-server.sh [bucket...]
set -euo pipefail
cd "$(dirname "$0")/.."
port=${MLAUDIT_TEST_S3_PORT:-5077}
venv=$PWD/target/s3-venv
up() { "$venv/bin/python" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
PY
}
mkdir -p target
exec 9>target/s3-test-server.lock
flock 9
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import moto.server, boto3' 2>/dev/null; then
  echo "s3-test-server: installing moto[server] into $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
  for attempt in 1 2 3; do
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5' && break
    [ "$attempt" -eq 3 ] && { echo "s3-test-server: cannot install moto[server]" >&2; exit 2; }
    sleep 5
  done
fi
if ! up; then
  echo "s3-test-server: starting moto on 127.0.0.1:$port" >&2
  setsid nohup "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" \
    >target/s3-test-server.log 2>&1 </dev/null 9>&- &
  for _ in $(seq 120); do
    up && break
    sleep 0.25
  done
  up || { echo "s3-test-server: moto did not start (target/s3-test-server.log)" >&2; exit 2; }
fi
"$venv/bin/python" - "$port" "$@" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for bucket in sys.argv[2:]:
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
PY
