#!/usr/bin/env bash
# Readies the machine's PostgreSQL for the test suite: starts the cluster if it is not
# running, creates the `test` database if missing, and the two roles the tests connect as
# (the servers' role, which may only SELECT and INSERT, and a NOLOGIN owner of the tables).
# Idempotent; the PostgreSQL tests run it themselves before their first connection.
set -euo pipefail
host=127.0.0.1
port=5432
if ! pg_isready -q -h "$host" -p "$port"; then
  echo "postgres-test-setup: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 120); do
    pg_isready -q -h "$host" -p "$port" && break
    sleep 0.5
  done
fi
psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U postgres -d postgres <<'SQL'
SELECT 'CREATE DATABASE test' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'test')\gexec
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mlaudit_test_app') THEN
    CREATE ROLE mlaudit_test_app LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mlaudit_test_owner') THEN
    CREATE ROLE mlaudit_test_owner NOLOGIN;
  END IF;
END $$;
GRANT CREATE, CONNECT ON DATABASE test TO mlaudit_test_owner;
GRANT CONNECT ON DATABASE test TO mlaudit_test_app;
SQL
