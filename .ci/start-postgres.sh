#!/usr/bin/env bash
# Start a PostgreSQL cluster for the tests and the ingest benchmark, on 127.0.0.1 only.
#
# Idempotent; run as root on Debian. Installs PostgreSQL when missing, starts the `main` cluster
# of PostgreSQL 15 (else of the newest installed major), creates the role `egresswatch` (LOGIN,
# CREATEDB: the tests create one database per test) and the database `egresswatch_test`, waits
# until a password login over TCP works, then prints ONE line on stdout:
#
#   EGRESSWATCH_TEST_PG_URL=postgresql+asyncpg://egresswatch:PASSWORD@127.0.0.1:PORT/egresswatch_test
#
# Everything else goes to stderr, so either of these works:
#   eval "export $(bash .ci/start-postgres.sh)"
#   export "$(bash .ci/start-postgres.sh)"
#
# The password is for a throwaway test cluster listening on loopback; override it with
# EGRESSWATCH_TEST_PG_PASSWORD (letters, digits, '-', '_' only: it goes into a URL).
set -euo pipefail
exec 3>&1 1>&2 # fd 3 is the caller's stdout: only the export line goes there

role=egresswatch
database=egresswatch_test
password="${EGRESSWATCH_TEST_PG_PASSWORD:-egresswatch-test}"
if [[ ! "$password" =~ ^[A-Za-z0-9_-]+$ ]]; then
  echo "EGRESSWATCH_TEST_PG_PASSWORD may hold only letters, digits, '-' and '_'" >&2
  exit 2
fi

if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
  echo "== installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

version="${PG_VERSION:-}"
if [[ -z "$version" ]]; then
  if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    version=15
  else
    version="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
  fi
fi

# A fresh container may lack the socket directory (normally made by systemd-tmpfiles).
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {found = 1} END {exit !found}'; then
  echo "== creating cluster $version/main"
  pg_createcluster "$version" main >/dev/null
fi
port="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')"
status="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}')"
if [[ "$status" != online* ]]; then
  echo "== starting cluster $version/main on port $port"
  # Loopback only: the tests never need more, and a CI machine should not expose a database.
  # The server outlives this script, so it must not inherit fd 3 or the caller's stdout and
  # stderr: `$(...)` in the caller waits for every writer of its pipe to close, and a server
  # holding that pipe makes CI hang forever (it did, once).
  pg_ctlcluster "$version" main start -- -o "-c listen_addresses=127.0.0.1" \
    </dev/null >/dev/null 2>&1 3>&- \
    || pg_ctlcluster "$version" main start </dev/null >/dev/null 2>&1 3>&-
fi

ready=""
for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p "$port"; then
    ready=1
    break
  fi
  sleep 0.5
done
if [[ -z "$ready" ]]; then
  echo "PostgreSQL $version/main did not accept connections on 127.0.0.1:$port within 30 s" >&2
  tail -n 20 "/var/log/postgresql/postgresql-$version-main.log" >&2 || true
  exit 1
fi

as_postgres() { runuser -u postgres -- "$@"; }
as_postgres psql -p "$port" -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role;
  END IF;
END
\$\$;
ALTER ROLE $role WITH LOGIN CREATEDB PASSWORD '$password';
SQL
if [[ -z "$(as_postgres psql -p "$port" -X -qAt -d postgres \
  -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" ]]; then
  as_postgres createdb -p "$port" -O "$role" "$database"
fi

# The URL the tests use must work as written: password login over TCP on loopback.
for _ in $(seq 1 20); do
  if PGPASSWORD="$password" psql -X -qAt -h 127.0.0.1 -p "$port" -U "$role" -d "$database" \
    -c 'SELECT 1' >/dev/null 2>&1; then
    echo "EGRESSWATCH_TEST_PG_URL=postgresql+asyncpg://$role:$password@127.0.0.1:$port/$database" >&3
    exit 0
  fi
  sleep 0.5
done
echo "cannot log in as $role to $database on 127.0.0.1:$port with a password (pg_hba.conf?)" >&2
exit 1
