#!/usr/bin/env bash
# Runs the integration tests (clients/python/integration_tests) against the real tools —
# an `mlflow server` sending signed webhooks, the openlineage-python client, the cloudevents
# SDK, a KFP pipeline on KFP's local runner, a ClearML offline session, a W&B audit log — and
# a real `mlaudit serve` / `mlaudit import`.
#
#   scripts/integration-tests.sh [pytest args...]      e.g. -k cloudevents, -x
#
# The binary is $MLAUDIT_BIN (default target/debug/mlaudit; this script does not build it).
# The tools go into a venv at target/integrations-venv (created once, then reused), from
# clients/python/integration_tests/requirements.txt, with the SDK (./clients/python).
# Exits non-zero when a test fails or the environment cannot be set up.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/integrations-venv
reqs=$root/clients/python/integration_tests/requirements.txt
bin=${MLAUDIT_BIN:-$root/target/debug/mlaudit}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
if [ ! -x "$bin" ]; then
  echo "integration-tests: no mlaudit binary at $bin (build it, or set MLAUDIT_BIN)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "integration-tests: creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv" || { echo "integration-tests: cannot create the venv" >&2; exit 2; }
fi
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
# The SDK is installed from a copy: setuptools would leave build/ and *.egg-info in the tree.
sdk=$report/sdk
mkdir "$sdk" && cp -R "$root/clients/python/pyproject.toml" "$root/clients/python/README.md" \
  "$root/clients/python/mlaudit" "$sdk/"
for attempt in 1 2 3; do
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" "$sdk" && break
  [ "$attempt" -eq 3 ] && { echo "integration-tests: cannot install $reqs" >&2; exit 2; }
  sleep 5
done
start=$(date +%s)
MLAUDIT_BIN=$bin MLAUDIT_INTEGRATIONS_REQUIRED=1 \
  "$venv/bin/python" -m pytest "$root/clients/python/integration_tests" -ra \
  -p no:cacheprovider --junitxml="$report/junit.xml" "$@"
status=$?
elapsed=$(( $(date +%s) - start ))

"$venv/bin/python" - "$report/junit.xml" "$status" "$elapsed" "$bin" <<'PY'
import sys
import xml.etree.ElementTree as ET
path, status, elapsed, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError):
    print(f"integration-tests: FAILED (pytest exited {status}, no report) in {elapsed} s")
    sys.exit(0)
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) for s in suites)
errors = sum(int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
passed = total - failed - errors - skipped
verdict = "PASSED" if status == 0 else "FAILED"
print(f"integration-tests: {verdict}: {passed} passed, {failed} failed, {errors} errors, "
      f"{skipped} skipped of {total} in {elapsed} s (mlaudit: {binary})")
bad = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
       if c.find("failure") is not None or c.find("error") is not None]
for name in bad:
    print(f"  failed: {name}")
PY
exit "$status"
