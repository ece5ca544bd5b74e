#!/bin/sh
# The workspace database: Debian's PostgreSQL 15 in the foreground, as the postgres user.
# On an empty data volume it first creates the cluster, the role and the database from
# POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD (the password never reaches a command line).
# Docker's SIGTERM becomes PostgreSQL's fast shutdown (SIGINT): the default "smart" one would wait
# for the API's connections to close and be killed at the end of the grace period.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=workspace}"
: "${POSTGRES_DB:=workspace}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "workspace-db: POSTGRES_PASSWORD must be set" >&2
    exit 2
fi
case "$POSTGRES_PASSWORD" in
*"
"*) echo "workspace-db: POSTGRES_PASSWORD must be one line" >&2; exit 2 ;;
esac
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "workspace-db: initialising $PGDATA"
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.auto.conf"
    quoted_password=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    printf "CREATE ROLE \"%s\" LOGIN PASSWORD '%s';\nCREATE DATABASE \"%s\" OWNER \"%s\";\n" \
        "$POSTGRES_USER" "$quoted_password" "$POSTGRES_DB" "$POSTGRES_USER" |
        as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
fi
mkdir -p /run/postgresql
chown postgres:postgres /run/postgresql
# Not through as_postgres: a backgrounded function is a subshell, and $! would be that subshell.
setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$PGDATA" &
server=$!
trap 'kill -INT "$server"' TERM INT
# A wait interrupted by the trap returns above 128: then wait again, for the shutdown itself.
status=0
wait "$server" || status=$?
if [ "$status" -gt 128 ]; then
    status=0
    wait "$server" || status=$?
fi
exit "$status"
