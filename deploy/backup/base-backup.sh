#!/bin/sh
# base-backup.sh DIR [CONNINFO]
#
# A base backup of the whole PostgreSQL cluster for point-in-time recovery: pg_basebackup into
# DIR/base-<UTC time> (plain format, with the WAL needed to make it consistent, and a backup
# manifest), checked by pg_verifybackup. Together with the WAL archive (archive_command of
# postgresql-archiving.conf) it restores the cluster to any moment after the backup ended.
# Take one daily or weekly; WAL archived before the oldest base backup you keep can be
# deleted. CONNINFO needs a role with the REPLICATION attribute (or a superuser) and a
# pg_hba.conf line allowing its replication connections; in deploy/compose.yaml, run it inside
# the postgres container over the local socket:
#   docker compose exec -u postgres postgres sh /opt/backup/base-backup.sh /var/lib/postgresql/base-backups
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

case ${1:-} in -h | --help) usage; exit 0 ;; esac
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage >&2; exit 2; fi
dir=$1
shift
if [ $# -eq 1 ]; then set -- "--dbname=$1"; fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
target="$dir/base-$stamp"
mkdir -p "$dir"
pg_basebackup --pgdata="$target" --format=plain --wal-method=stream --checkpoint=fast \
  --label="gateway-$stamp" --no-password "$@"
pg_verifybackup --quiet "$target"
echo "$target"
