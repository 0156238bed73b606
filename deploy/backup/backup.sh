#!/bin/sh
# backup.sh [--dir DIR] [--keep N] [CONNINFO]
#
# A logical backup of the gateway's PostgreSQL database: one `pg_dump --format=custom` archive,
# a consistent snapshot taken while the gateway runs (pg_dump reads in one repeatable-read
# transaction and blocks no writer), written to DIR/gateway-<UTC time>.dump with a .sha256
# beside it, checked readable by pg_restore before it is given its name. With --keep N, only the
# newest N archives of DIR are kept. CONNINFO is a libpq connection string or URL (without it,
# the PG* environment variables); pass the password through PGPASSWORD or ~/.pgpass, never on
# the command line. Needs only the PostgreSQL client tools, not the gateway.
#
# Restore with restore.sh (docs/operations.md, "Backups and restore").
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

dir=.
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "backup.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
case $keep in '' | *[!0-9]*) echo "backup.sh: --keep takes a number" >&2; exit 2 ;; esac
if [ $# -gt 1 ]; then echo "backup.sh: one CONNINFO at most" >&2; exit 2; fi
if [ $# -eq 1 ]; then set -- "--dbname=$1"; fi

mkdir -p "$dir"
name=gateway-$(date -u +%Y%m%dT%H%M%SZ).dump
if [ -e "$dir/$name" ]; then echo "backup.sh: $dir/$name exists (one backup a second)" >&2; exit 1; fi
partial="$dir/.$name.partial"
trap 'rm -f "$partial"' EXIT INT TERM

pg_dump --format=custom --compress=6 --no-password --file="$partial" "$@"
pg_restore --list "$partial" >/dev/null # a truncated or unreadable archive fails here
mv "$partial" "$dir/$name"
(cd "$dir" && sha256sum "$name" >"$name.sha256")

if [ "$keep" -gt 0 ]; then
  count=$(find "$dir" -maxdepth 1 -name 'gateway-*.dump' | wc -l)
  find "$dir" -maxdepth 1 -name 'gateway-*.dump' | sort | while read -r old; do
    [ "$count" -le "$keep" ] && break
    rm -f "$old" "$old.sha256"
    count=$((count - 1))
  done
fi

echo "$dir/$name"
