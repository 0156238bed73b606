#!/bin/sh
# restore.sh DUMP CONNINFO
#
# Restores an archive of backup.sh into the database CONNINFO names (a libpq connection string
# or URL), which must exist and be empty (`createdb` it first): refuses a database that holds
# any table, and an archive whose .sha256 (when beside it) does not match. The restore is one
# transaction: if any statement fails, nothing is left behind. Ownership and grants are
# restored as dumped, so the roles they name must exist in the target cluster. Then ANALYZE,
# so the planner has statistics before the gateway's first query.
#
# Afterwards run `gateway migrate` (it applies what the archive lacks, if it is older than the
# gateway) and start the gateway (docs/operations.md, "Backups and restore").
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

case ${1:-} in -h | --help) usage; exit 0 ;; esac
if [ $# -ne 2 ]; then usage >&2; exit 2; fi
dump=$1
conninfo=$2

if [ ! -f "$dump" ]; then echo "restore.sh: no archive $dump" >&2; exit 1; fi
if [ -f "$dump.sha256" ]; then
  (cd "$(dirname "$dump")" && sha256sum --check --quiet "$(basename "$dump").sha256") || {
    echo "restore.sh: $dump does not match its .sha256: not restoring it" >&2
    exit 1
  }
fi

tables=$(psql --no-psqlrc --no-password --tuples-only --no-align --dbname="$conninfo" --command="
  SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg_toast%'")
if [ "$tables" != 0 ]; then
  echo "restore.sh: the target database holds $tables tables: restore into an empty one" >&2
  exit 1
fi

pg_restore --exit-on-error --single-transaction --no-password --dbname="$conninfo" "$dump"
psql --no-psqlrc --no-password --quiet --dbname="$conninfo" --command="ANALYZE"

restored=$(psql --no-psqlrc --no-password --tuples-only --no-align --dbname="$conninfo" --command="
  SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
echo "restored $dump: $restored tables"
